"""Stop signals (jobs/signals.py): a single image stopped by SIGTERM, SIGINT, SIGHUP or
``timeout`` removes its temporary folder and ends with one line and 128 + the signal's number.

The end-to-end tests send real signals to a real ``python -m jobs.stylize`` and look at its
``TMPDIR`` afterwards; the signal goes once the job's temporary folder holds canvases.
"""

from __future__ import annotations

import os
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


def _stylize_command(content: Path, style: Path, out: Path, weights: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.stylize", str(content), "--style", str(style), "--output", str(out),
            "--weights", str(weights), "--mode", "exact", "--tile", "256", "--progress-seconds", "1"]


def _env(tmp: Path) -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get(
        "PYTHONPATH")]))}


def _wait_for_canvases(tmp: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until the job's temporary folder holds a level's canvas (the input is on disk and the
    cascade has started)."""
    deadline = time.monotonic() + seconds
    while not list(tmp.glob("ultrastyle-*/level*")):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the job made no canvas in time"
        time.sleep(0.1)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_stopped_single_image_removes_its_temporary_folder(weights_dir, content_dir, style_dir, tmp_path, sig,
                                                             status):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        _stylize_command(content_dir / "photo_mosaic_1024.jpg", style_dir / "strokes_512.jpg", tmp_path / "o.png",
                         weights_dir),
        env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _wait_for_canvases(tmp, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert err.splitlines()[-1] == f"ultrastyle stylize: stopped by {signal.Signals(sig).name}", err
    assert "Traceback" not in err
    assert not list(tmp.iterdir()), "the temporary folder was left"
    assert not (tmp_path / "o.png").exists()


def test_timeout_stops_a_single_image_without_leaving_its_temporary_folder(weights_dir, content_dir, style_dir,
                                                                           tmp_path):
    timeout = shutil.which("timeout")
    if timeout is None:
        pytest.skip("coreutils' timeout is not installed")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    command = _stylize_command(content_dir / "photo_mosaic_1024.jpg", style_dir / "strokes_512.jpg",
                               tmp_path / "o.png", weights_dir)
    # Long enough to load the models and start the cascade on a loaded machine, short of its end.
    started = time.monotonic()
    done = subprocess.run([timeout, "--preserve-status", "25", *command], env=_env(tmp), capture_output=True,
                          text=True, timeout=300)
    if done.returncode == 0:
        pytest.skip(f"the image was done in {time.monotonic() - started:.0f} s, before timeout sent SIGTERM")
    assert done.returncode == 143, done.stderr
    assert done.stderr.splitlines()[-1] == "ultrastyle stylize: stopped by SIGTERM"
    assert "Traceback" not in done.stderr
    assert not list(tmp.iterdir())
