"""The project-side helpers of ``scripts/gpu_check.sh``, run with the interpreter that runs the project.

    python scripts/gpu_check_probe.py probe                 # JSON on stdout
    python scripts/gpu_check_probe.py inputs FOLDER WxH...  # photo_WxH.jpg per size, style.png
    python scripts/gpu_check_probe.py manifest OUTPUT       # JSON on stdout

``probe`` reports what the interpreter has (Python, torch and CUDA, the GPU, the modules the
steps import, each one's version or why it does not import) and never fails on a missing module;
``inputs`` makes the check's inputs from a real photo; ``manifest`` summarizes the batch job's
manifest. ``scripts/gpu_check_report.py`` turns what the steps left into the report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["MODULES", "main", "make_inputs", "manifest_summary", "probe"]

# The modules the steps import.
MODULES = ("torch", "torchvision", "numpy", "PIL", "pyvips", "ray", "pyarrow", "fsspec", "skimage", "safetensors",
           "psutil", "pytest")


def probe() -> dict[str, Any]:
    """What this interpreter has: Python, torch and CUDA, the GPU, and each of :data:`MODULES`."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cuda_available": False,
        "gpu": None,
        "modules": {},
    }
    for name in MODULES:
        try:
            module = importlib.import_module(name)
            info["modules"][name] = str(getattr(module, "__version__", "installed"))
        except Exception as e:  # any import failure is a finding, not a crash
            info["modules"][name] = f"missing: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if info["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = {
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                "count": torch.cuda.device_count(),
                "cudnn": torch.backends.cudnn.version(),
            }
    except Exception as e:
        info["torch_error"] = f"{type(e).__name__}: {e}"
    if shutil.which("nvidia-smi"):
        run = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False)
        info["nvidia_smi"] = run.stdout.strip() or run.stderr.strip()
    return info


def make_inputs(folder: Path, sizes: list[str]) -> None:
    """Write ``photo_WxH.jpg`` for each size (a real photo with grain, :func:`jobs.bench.photo_file`)
    and ``style.png`` (:func:`jobs.samples.paint_style`, 512 px) into ``folder``."""
    from jobs.bench import photo_file
    from jobs.samples import paint_style

    folder.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        width, height = (int(v) for v in size.split("x"))
        photo_file(str(folder / f"photo_{size}.jpg"), width, height)
    paint_style().save(folder / "style.png")


def manifest_summary(output_uri: str) -> dict[str, Any]:
    """The batch manifest under ``output_uri``: pair counts, errors, and the span the pairs ran in.

    Returns:
        ``pairs``, ``ok``, ``failed``, ``errors`` (first three), ``megapixels`` (of the ok
        pairs), ``pair_seconds`` (each ok pair's wall seconds), and ``first_start``/``last_end``
        (epoch seconds: the earliest pair start, ``finished_at - seconds``, and the latest end).
    """
    from pipeline.batch.manifest import read_manifest

    rows = read_manifest(output_uri).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    ends = [r["finished_at"].timestamp() for r in ok if r["finished_at"] is not None]
    starts = [r["finished_at"].timestamp() - r["seconds"] for r in ok if r["finished_at"] is not None]
    return {
        "pairs": len(rows),
        "ok": len(ok),
        "failed": sum(r["status"] == "failed" for r in rows),
        "errors": [r["error"] for r in rows if r["error"]][:3],
        "megapixels": round(sum(r["width"] * r["height"] for r in ok) / 1e6, 2),
        "pair_seconds": [round(r["seconds"], 3) for r in ok],
        "first_start": min(starts) if starts else None,
        "last_end": max(ends) if ends else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check_probe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe", help="the interpreter, torch, CUDA and imports as JSON")
    inputs = sub.add_parser("inputs", help="photo_WxH.jpg per size and style.png in FOLDER")
    inputs.add_argument("folder", type=Path)
    inputs.add_argument("sizes", nargs="+", metavar="WxH")
    manifest = sub.add_parser("manifest", help="the batch manifest under OUTPUT as JSON")
    manifest.add_argument("output")
    args = parser.parse_args(argv)
    if args.command == "probe":
        print(json.dumps(probe()))
    elif args.command == "inputs":
        make_inputs(args.folder, args.sizes)
    else:
        print(json.dumps(manifest_summary(args.output)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
