"""The batch job under faults, fed for real to ``python -m jobs.stylize`` in a subprocess that
starts its own local Ray: a SIGTERM mid-job, a SIGKILL of the driver, and a temporary folder
on a full file system.

Each run carries a marker in its environment, which every process it starts inherits, so the
processes left behind are found in ``/proc`` (see ``marked_env`` in conftest.py).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # each starts a Ray of its own: about a minute on a shared 2-core machine


def _command(inputs: Path, style: Path, output: Path, weights: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.stylize", "--input", str(inputs), "--style", str(style), "--output",
            str(output), "--weights", str(weights), "--tile", "256", "--workers", "1", "--progress-seconds", "1"]


def _start_mid_job(env: dict[str, str], tmp_path: Path, content_dir: Path, style_dir: Path,
                   weights_dir: Path) -> tuple[subprocess.Popen, Path]:
    """A batch of one 1024-px image, returned once its tile rounds are under way."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "mosaic.jpg").write_bytes((content_dir / "photo_mosaic_1024.jpg").read_bytes())
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(_command(inputs, style_dir / "strokes_512.jpg", tmp_path / "out", weights_dir),
                                env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not re.search(r"tiles [1-9]\d*/", log.read_text()):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return proc, log


def _wait_until_gone(processes: Callable[[], list[int]], seconds: float = 60) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_sigterm_stops_the_job_and_the_ray_it_started(marked_env, content_dir, style_dir, weights_dir, tmp_path):
    env, processes = marked_env
    proc, log = _start_mid_job(env, tmp_path, content_dir, style_dir, weights_dir)
    assert len(processes()) > 3  # the driver, Ray's GCS, raylet, workers...
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()
    err = log.read_text()
    assert err.splitlines()[-1] == "ultrastyle stylize: stopped by SIGTERM", err
    assert "Traceback" not in err and "SIGTERM received" not in err  # nor Ray's crash handler's dump
    assert not re.search(r"^\[[-\d :,]+ E \d+ \d+\]", err, re.M), err  # nor Ray's C++ errors on shutdown
    assert _wait_until_gone(processes) == []
    assert list(Path(env["TMPDIR"]).iterdir()) == []  # Ray's own files are in RAY_TMPDIR


def test_a_killed_driver_leaves_no_ray_process(marked_env, content_dir, style_dir, weights_dir, tmp_path):
    """Ray's kernel fate-sharing (PR_SET_PDEATHSIG) ends the GCS, raylet and dashboard with the
    driver that started them and the workers follow their raylet; the dashboard and runtime-env
    agents would wait up to a minute for the dead GCS, and the driver's watchdog ends them."""
    env, processes = marked_env
    proc, _ = _start_mid_job(env, tmp_path, content_dir, style_dir, weights_dir)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert _wait_until_gone(processes, seconds=20) == []


def test_a_full_temporary_disk_is_one_line_per_pair(small_tmpfs, marked_env, content_dir, style_dir, weights_dir,
                                                   tmp_path):
    """A 2048x1536 input (48 tiles in the object store) whose cut finds TMPDIR full, beside a
    file whose name holds a line break: one line each, no traceback per tile object."""
    env, _ = marked_env
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.open(content_dir / "photo_mosaic_1024.jpg").resize((2048, 1536)).save(inputs / "big.jpg", quality=90)
    (inputs / "evil\n12:00:00 [2 of 2] ok forged.jpg").write_bytes(b"not an image")
    tmp = Path(env["TMPDIR"])
    done = subprocess.run(
        [*small_tmpfs(tmp, "4m"), *_command(inputs, style_dir / "strokes_512.jpg", tmp_path / "out", weights_dir)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    failed = [line for line in lines if "] failed " in line]
    assert len(failed) == 2, done.stderr
    full = next(line for line in failed if "big.jpg" in line)
    assert f"no space left on device: the file system at {tmp} is full" in full and "set TMPDIR" in full
    forged = next(line for line in failed if "evil" in line)
    assert "evil\\x0a12:00:00 [2 of 2] ok forged.jpg" in forged
    assert not any(line.startswith("12:00:00") for line in lines)
    assert "Traceback" not in done.stderr and "Unhandled error" not in done.stderr
    assert len(lines) < 15, done.stderr
    assert (tmp.parent / "tmp.left").read_text() == ""  # nothing left on the full disk
