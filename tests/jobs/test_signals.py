"""Stop signals (jobs/signals.py): a single image stopped by SIGTERM, SIGINT, SIGHUP or
``timeout`` leaves nothing in ``TMPDIR`` and ends with one line and 128 + the signal's number;
one killed by SIGKILL leaves no canvas either.

The end-to-end tests send real signals to a real ``python -m jobs.stylize`` and look at its
``TMPDIR`` afterwards; the signal goes once tile rounds are under way (canvases on disk).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.signals import STOP_SIGNALS, Stopped, stop_on_signals


def test_a_stop_signal_raises_stopped_and_the_handlers_come_back():
    before = {each: signal.getsignal(each) for each in STOP_SIGNALS}
    with pytest.raises(Stopped) as raised, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert raised.value.name == "SIGTERM" and raised.value.status == 143
    assert isinstance(raised.value, KeyboardInterrupt)  # `except Exception` lets it through
    assert {each: signal.getsignal(each) for each in STOP_SIGNALS} == before


def test_a_keyboard_interrupt_of_a_library_is_reported_as_the_signal_received():
    """Ray's ray.get raises a KeyboardInterrupt of its own for a signal that arrived while it waited."""
    with pytest.raises(Stopped) as raised, stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)
        except Stopped:
            raise KeyboardInterrupt from None
    assert raised.value.signum == signal.SIGHUP and raised.value.status == 129


def _stylize(content_dir: Path, style_dir: Path, weights_dir: Path, tmp_path: Path) -> tuple[list[str], dict]:
    """The command and environment of ``python -m jobs.stylize`` on a 1024-px image in 16 tiles,
    with ``TMPDIR`` the test's ``tmp`` folder."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "TMPDIR": str(tmp),
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "jobs.stylize", str(content_dir / "photo_mosaic_1024.jpg"), "--style",
               str(style_dir / "strokes_512.jpg"), "--output", str(tmp_path / "o.png"), "--weights", str(weights_dir),
               "--mode", "exact", "--tile", "256", "--progress-seconds", "0.5"]
    return command, env


def _start(content_dir: Path, style_dir: Path, weights_dir: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """:func:`_stylize` started, returned once its tile rounds are under way (canvases on disk)."""
    command, env = _stylize(content_dir, style_dir, weights_dir, tmp_path)
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 180
    while not re.search(r"tiles [1-9]\d*/", log.read_text()):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "no tile was done in time"
        time.sleep(0.1)
    return proc, log


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_stopped_single_image_leaves_nothing_in_tmpdir(weights_dir, content_dir, style_dir, tmp_path, sig, status):
    proc, log = _start(content_dir, style_dir, weights_dir, tmp_path)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == status, log.read_text()
    err = log.read_text()
    assert err.splitlines()[-1] == f"ultrastyle stylize: stopped by {signal.Signals(sig).name}", err
    assert "Traceback" not in err
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "o.png").exists()


def test_a_killed_single_image_leaves_no_canvas(weights_dir, content_dir, style_dir, tmp_path):
    """SIGKILL runs no clean-up at all: the canvases are unlinked files, gone with the process."""
    proc, _ = _start(content_dir, style_dir, weights_dir, tmp_path)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert list((tmp_path / "tmp").iterdir()) == []


def test_timeout_stops_a_single_image_without_leaving_anything(weights_dir, content_dir, style_dir, tmp_path):
    timeout = shutil.which("timeout")
    if timeout is None:
        pytest.skip("coreutils' timeout is not installed")
    command, env = _stylize(content_dir, style_dir, weights_dir, tmp_path)
    # Long enough to load the models and start the cascade on a loaded machine, short of its end.
    started = time.monotonic()
    done = subprocess.run([timeout, "--preserve-status", "25", *command], env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode == 0:
        pytest.skip(f"the image was done in {time.monotonic() - started:.0f} s, before timeout sent SIGTERM")
    assert done.returncode == 143, done.stderr
    assert done.stderr.splitlines()[-1] == "ultrastyle stylize: stopped by SIGTERM"
    assert "Traceback" not in done.stderr
    assert list((tmp_path / "tmp").iterdir()) == []
