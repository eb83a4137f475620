"""Layering: models/ and the pipeline's math and I/O never import Ray, and nothing below jobs/
parses a command line.

Ray is allowed only in jobs/ and in the pipeline's Ray orchestration modules
(``pipeline/batch/driver.py``, ``actors.py`` and ``executor.py``). Every other module is checked twice:
imported in a fresh interpreter (``ray`` must not be in ``sys.modules`` afterwards, which also
catches indirect imports), and scanned statically (which also catches imports inside functions).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY_ALLOWED = ("pipeline/batch/driver.py", "pipeline/batch/actors.py", "pipeline/batch/executor.py")


def _ray_free_modules() -> list[Path]:
    files = sorted((ROOT / "models").rglob("*.py")) + sorted((ROOT / "pipeline").rglob("*.py"))
    return [f for f in files if not any(fnmatch(f.relative_to(ROOT).as_posix(), p) for p in RAY_ALLOWED)]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_ray(name: str | None) -> bool:
    return name is not None and (name == "ray" or name.startswith("ray."))


def _imported_name(node: ast.AST) -> list[str | None]:
    """Absolute module names an ``import``, ``from ... import`` or ``import_module("...")`` names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module] if node.level == 0 else []
    if (
        isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("import_module", "__import__")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return [node.args[0].value]
    return []


def _imports(source: str, wanted: Callable[[str | None], bool]) -> list[int]:
    """Line numbers of every import in ``source`` of a module name ``wanted`` accepts."""
    return sorted(node.lineno for node in ast.walk(ast.parse(source)) if any(map(wanted, _imported_name(node))))


def _ray_imports(source: str) -> list[int]:
    """Line numbers of every import of ``ray`` or a ``ray.*`` module in ``source``."""
    return _imports(source, _is_ray)


def test_scanner_sees_every_form_of_import() -> None:
    source = "import os, ray.data\nfrom ray import train\ndef f():\n    importlib.import_module('ray')\nimport rayon\n"
    assert _ray_imports(source) == [1, 2, 4]


def test_no_static_ray_import() -> None:
    files = _ray_free_modules()
    assert {"models/weights.py", "pipeline/engine/wct.py", "pipeline/engine/cascade.py"} <= {
        f.relative_to(ROOT).as_posix() for f in files
    }
    offenders = {
        f.relative_to(ROOT).as_posix(): lines for f in files if (lines := _ray_imports(f.read_text(encoding="utf-8")))
    }
    assert not offenders, f"Ray imported outside {RAY_ALLOWED} and jobs/ (file: lines): {offenders}"


def test_no_argparse_below_jobs() -> None:
    """Settings reach models/ and pipeline/ as options objects (pipeline.options), never as an
    argparse.Namespace: only jobs/ parses command lines."""
    files = sorted((ROOT / "models").rglob("*.py")) + sorted((ROOT / "pipeline").rglob("*.py"))
    assert _imports("import argparse\nfrom argparse import Namespace\n", lambda n: n == "argparse") == [1, 2]
    offenders = {
        f.relative_to(ROOT).as_posix(): lines
        for f in files
        if (lines := _imports(f.read_text(encoding="utf-8"), lambda name: (name or "").split(".")[0] == "argparse"))
    }
    assert not offenders, f"argparse imported under models/ or pipeline/ (file: lines): {offenders}"


_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    if any(m == "ray" or m.startswith("ray.") for m in sys.modules):
        print(json.dumps(name))
        break
else:
    print(json.dumps(None))
"""


def test_importing_does_not_load_ray() -> None:
    names = [_module_name(f) for f in _ray_free_modules()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *names], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    first = json.loads(done.stdout.strip().splitlines()[-1])
    assert first is None, f"importing {first} loaded ray (checked in order: {names})"


# Each pipeline layer imports only the layers below it: imaging < engine < batch.
_LAYERS = {"imaging": set(), "engine": {"imaging"}, "batch": {"imaging", "engine"}}


def test_pipeline_layers_import_downwards() -> None:
    offenders = {}
    for layer, allowed in _LAYERS.items():
        for f in sorted((ROOT / "pipeline" / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                for name in _imported_name(node):
                    parts = (name or "").split(".")
                    above = len(parts) > 1 and parts[1] in _LAYERS and parts[1] not in allowed | {layer}
                    if parts[0] == "pipeline" and above:
                        offenders.setdefault(f.relative_to(ROOT).as_posix(), []).append(name)
    assert not offenders, f"a pipeline layer imports one above it (imaging < engine < batch): {offenders}"
