"""``scripts/gpu_wheels.py``: the slimming of a wheel and the versions it fetches (no download here)."""

from __future__ import annotations

import zipfile
from importlib.metadata import version

from scripts.gpu_wheels import MISSING_ON_DEVICE, RAY_UNUSED, pinned_versions, slim_wheel


def test_slim_wheel_drops_the_unused_members_and_their_record_lines(tmp_path):
    wheel = tmp_path / "ray-1.0-cp312-cp312-manylinux2014_x86_64.whl"
    members = {"ray/__init__.py": b"x = 1\n", "ray/jars/ray_dist.jar": b"\0" * 1000, "ray/rllib/algo.py": b"y\n",
               "ray/dashboard/client/build/main.js": b"js", "ray/dashboard/head.py": b"kept\n"}
    record = "".join(f"{name},sha256=abc,{len(data)}\n" for name, data in members.items())
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("ray-1.0.dist-info/RECORD", record + "ray-1.0.dist-info/RECORD,,\n")
    assert slim_wheel(wheel, RAY_UNUSED) == 3
    with zipfile.ZipFile(wheel) as zf:
        assert sorted(zf.namelist()) == ["ray-1.0.dist-info/RECORD", "ray/__init__.py", "ray/dashboard/head.py"]
        assert zf.read("ray/__init__.py") == b"x = 1\n"
        assert zf.read("ray-1.0.dist-info/RECORD").decode().splitlines() == [
            "ray/__init__.py,sha256=abc,6", "ray/dashboard/head.py,sha256=abc,5", "ray-1.0.dist-info/RECORD,,"]
    assert slim_wheel(wheel, RAY_UNUSED) == 0  # already slim: left as it is


def test_the_pinned_wheels_are_the_versions_installed_here():
    pins = pinned_versions()
    pinned = [name for name in MISSING_ON_DEVICE if name in pins]
    assert {"ray", "pyvips", "pyvips-binary"} <= set(pinned)
    assert {name: pins[name] for name in pinned} == {name: version(name) for name in pinned}
