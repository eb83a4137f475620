"""Wheels for a GPU machine that reaches no package registry: what its image lacks, for its Python.

    python scripts/gpu_wheels.py [--dest .whl] [--python-version 3.12] [--max-mib 50]

A GPU machine's stock image for this project holds torch, numpy,
pyarrow, fsspec, Pillow, scikit-image, safetensors, psutil, pytest and hypothesis, but not Ray,
pyvips (with its libvips binary wheel and cffi) or jsonschema (Ray's). This downloads those, as
manylinux x86-64 wheels for ``--python-version``, into ``--dest`` (``.whl/``, which git ignores,
so it must be copied to the GPU machine with the tree);
``scripts/gpu_check.sh --wheels .whl`` installs them there without an index. Versions are the
pins of pyproject.toml, else the versions installed here (the ones the tests ran with).

Ray's wheel is 78 MB, more than the 64 MiB a device call carries with the tree, so it is
slimmed: the Java worker's jar, RLlib, Serve, the LLM library and the dashboard's web client
are removed (the batch job uses none of them), and their lines dropped from the wheel's
RECORD, which leaves about 41 MB. The folder's total is checked against ``--max-mib``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import tomllib

__all__ = ["MISSING_ON_DEVICE", "RAY_UNUSED", "main", "pinned_versions", "slim_wheel"]

ROOT = Path(__file__).resolve().parents[1]
# Distributions the batch job and the tests import that the device image lacks (with the
# dependencies of these that it lacks too).
MISSING_ON_DEVICE = ("ray", "pyvips", "pyvips-binary", "cffi", "pycparser", "jsonschema",
                     "jsonschema-specifications", "referencing", "rpds-py")
# Folders of Ray's wheel that nothing here imports or starts.
RAY_UNUSED = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/")
_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def pinned_versions(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``name -> version`` of every ``name==version`` requirement in ``pyproject``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        if "==" in requirement:
            name, pin = requirement.split("==", 1)
            pins[name.split("[")[0].strip().lower()] = pin.strip()
    return pins


def slim_wheel(path: Path, unused: tuple[str, ...]) -> int:
    """Rewrite the wheel at ``path`` without the members under ``unused`` and their RECORD lines.

    Returns:
        How many members were removed.

    Raises:
        ValueError: the wheel has no ``*.dist-info/RECORD``.
    """
    with zipfile.ZipFile(path) as src:
        removed = sum(name.startswith(unused) for name in src.namelist())
    if not removed:
        return 0
    slim = path.with_suffix(".slim")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        records = [n for n in src.namelist() if n.endswith(".dist-info/RECORD")]
        if not records:
            raise ValueError(f"{path}: not a wheel (no .dist-info/RECORD)")
        for info in src.infolist():
            if info.filename.startswith(unused):
                continue
            if info.filename == records[0]:
                lines = src.read(info).decode().splitlines(keepends=True)
                dst.writestr(info, "".join(line for line in lines if not line.startswith(unused)))
            else:
                dst.writestr(info, src.read(info))
    slim.replace(path)
    return removed


def _download(name: str, pin: str, dest: Path, python_version: str) -> None:
    platforms = [arg for p in _PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--implementation",
           "cp", "--python-version", python_version, *platforms, "-d", str(dest), f"{name}=={pin}"]
    if subprocess.run(cmd, check=False, capture_output=True).returncode != 0:
        # A pure-Python project published as a source archive only (pyvips): build its wheel here.
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), f"{name}=={pin}"],
                       check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl", help="folder for the wheels (default .whl)")
    parser.add_argument("--python-version", default="3.12", help="the device's Python, X.Y (default 3.12)")
    parser.add_argument("--max-mib", type=float, default=50.0,
                        help="refuse a folder larger than this (default 50: a device call carries 64 MiB with "
                        "the tree, about 11 MB)")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    pins = pinned_versions()
    for name in MISSING_ON_DEVICE:
        try:
            pin = pins.get(name) or version(name)
        except PackageNotFoundError:
            print(f"gpu_wheels: error: {name} is neither pinned in pyproject.toml nor installed here", file=sys.stderr)
            return 1
        stem = name.replace("-", "_")
        if not any(p.name.lower().startswith(f"{stem}-{pin}-") for p in args.dest.glob("*.whl")):
            _download(name, pin, args.dest, args.python_version)
    for wheel in args.dest.glob("ray-*.whl"):
        removed = slim_wheel(wheel, RAY_UNUSED)
        if removed:
            print(f"gpu_wheels: {wheel.name}: removed {removed} unused members")
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels) / 2**20
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.1f} MiB  {wheel.name}")
    print(f"{total:7.1f} MiB  in {args.dest}")
    if total > args.max_mib:
        print(f"gpu_wheels: error: {total:.1f} MiB is over --max-mib {args.max_mib}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
