"""The batch driver's watchdog (pipeline/batch/reaper.py): what a killed driver started is ended.

A real "driver" process starts the watchdog, a child, and through it a grandchild in a session
of its own (as a raylet starts Ray's agents); none shares the driver's fate by itself. The
driver is killed with SIGKILL, or exits without ending them, and the grandchild must go within
seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

_DRIVER = """
import subprocess, sys, time
from pipeline.batch.reaper import start
start()
# A child (a raylet) that starts a grandchild (an agent) in a session of its own; neither ends
# with the driver by itself.
middle = subprocess.Popen([sys.executable, "-c",
    "import subprocess, time; p = subprocess.Popen(['sleep', '300'], start_new_session=True); "
    "print(p.pid, flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True)
print(middle.pid, middle.stdout.readline().strip(), flush=True)
time.sleep(DRIVER_SECONDS)
"""


def _gone(pid: int, seconds: float) -> bool:
    """Whether ``pid`` has ended (or is a zombie) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


@pytest.mark.parametrize("ending", ["SIGKILL", "exit"])
def test_the_descendants_of_a_driver_end_with_it(ending):
    root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    script = _DRIVER.replace("DRIVER_SECONDS", "300" if ending == "SIGKILL" else "2")
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env, cwd=root)
    middle, grandchild = map(int, driver.stdout.readline().split())
    try:
        time.sleep(1.5)  # the watchdog notes descendants every half second
        assert psutil.Process(grandchild).is_running()
        if ending == "SIGKILL":
            driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
        assert _gone(grandchild, 10), "the driver's grandchild outlived it"
        assert _gone(middle, 1), "the driver's child outlived it"
    finally:
        for pid in (middle, grandchild):
            if not _gone(pid, 0):
                os.kill(pid, signal.SIGKILL)
