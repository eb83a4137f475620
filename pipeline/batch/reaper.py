"""A watchdog that ends what a batch driver started once the driver is gone, however it went.

A driver that starts its own local Ray owns the GCS, raylet, dashboard and monitors, and Ray
ends them with it through the kernel (``PR_SET_PDEATHSIG``), even after a SIGKILL. It does not
own what the raylet starts: the workers notice their raylet is gone within seconds, but the
dashboard and runtime-env agents first try to tell the GCS, which is gone too, and wait for it
up to a minute (Ray 2.58's ``publish_error`` timeout) before they exit. This watchdog runs in a
session of its own, notes the driver's descendants every :data:`POLL_SECONDS`, and when the
driver ends (the pipe it holds closes, whatever ended it) sends SIGTERM, then SIGKILL after
:data:`GRACE_SECONDS`, to those still running. After a clean shutdown there is none left.

Started by :func:`start` (the batch driver, when it starts a local Ray); runs as
``python -m pipeline.batch.reaper DRIVER_PID`` with the read end of a pipe from the driver on
stdin.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys

import psutil

__all__ = ["GRACE_SECONDS", "POLL_SECONDS", "start", "watch"]

# How often the driver's descendants are noted (a process younger than this may be missed; the
# ones that matter, Ray's agents, start with the raylet).
POLL_SECONDS = 0.5
# Time given to SIGTERM before SIGKILL.
GRACE_SECONDS = 2.0


def start() -> None:
    """Start the watchdog of this process: once this process ends, it ends its descendants.

    The pipe's write end stays open in this process alone (``os.pipe`` makes it
    non-inheritable, so no process started later holds it) until this process ends.
    """
    read_end, _write_end = os.pipe()  # the write end is left open, unused, until this process ends
    subprocess.Popen(
        [sys.executable, "-m", "pipeline.batch.reaper", str(os.getpid())],
        stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # a terminal's Ctrl-C or hang-up does not end it before the driver's helpers
    )
    os.close(read_end)


def watch(driver_pid: int, pipe_fd: int) -> None:
    """Note ``driver_pid``'s descendants until ``pipe_fd`` reaches its end, then end those still running.

    Args:
        driver_pid: the process watched.
        pipe_fd: a pipe whose only writer is the driver (nothing is written; it closes when
            the driver ends).
    """
    me = os.getpid()
    known: dict[int, float] = {}  # pid -> start time, so a reused pid is never taken for one noted
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    while True:
        try:
            known.update((p.pid, p.create_time()) for p in driver.children(recursive=True) if p.pid != me)
        except psutil.Error:  # the driver is gone, or a child went while being looked at
            if not driver.is_running():
                break
        ready, _, _ = select.select([pipe_fd], [], [], POLL_SECONDS)
        if ready and not os.read(pipe_fd, 1):
            break
    _end(known)


def _end(known: dict[int, float]) -> None:
    """SIGTERM, then SIGKILL after :data:`GRACE_SECONDS`, to the noted processes still running."""
    alive = []
    for pid, started in known.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started:
                process.terminate()
                alive.append(process)
        except psutil.Error:
            continue
    _, stubborn = psutil.wait_procs(alive, timeout=GRACE_SECONDS)
    for process in stubborn:
        try:
            process.kill()
        except psutil.Error:
            continue


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.stdin.fileno())
