"""What the distillation job prints: its own progress, a few lines per stage, and Ray's warnings.

Ray Train, Ray Data and the libraries under them log at INFO in every process of a job
(resource requests, worker group starts, "Moving model to device", one "execution finished"
line per dataset epoch, libvips thread pools): a ten-step run printed ~170 lines, most of them
not the job's. So

- the driver logs at WARNING but for the ``ultrastyle`` loggers (the job's own lines);
- Ray's driver messages are WARNING and up (:func:`ray_init_options`);
- Ray Train keeps to warnings (``RunConfig(logging_config=...)`` in :mod:`jobs.distill.train`);
- every worker process of the job reads Ray Data's logging configuration from
  :data:`RAY_DATA_LOGGING` (console at ERROR: no line per dataset epoch) and runs
  :func:`quiet_worker` first (Ray's ``worker_process_setup_hook``), which keeps other
  libraries' INFO lines out; the Train workers do the same when their loop starts;
- the ``(pid=...)`` prefixes Ray puts before workers' lines carry no colour codes when the
  output is not a terminal (``RAY_COLOR_PREFIX=0``), as under ``ray job logs`` or in a file.

Everything Ray logs still goes to its session log files.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import ray

__all__ = ["RAY_DATA_LOGGING", "configure_driver", "quiet_worker", "ray_init_options"]

# Ray Data's own logging configuration with its console handler at ERROR (it reads the
# file named by RAY_DATA_LOGGING_CONFIG in every process it runs in). The job's processes
# run the same installation as the driver (one container image on a cluster), so the
# driver's path to it is valid in each of them.
RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")


def configure_driver(*, stream: Any = None) -> None:
    """Log the job's lines at INFO with a time stamp, every other logger at WARNING; no colour
    codes in Ray's worker prefixes unless both stdout and stderr are terminals."""
    stream = stream or sys.stderr
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=stream)
    logging.getLogger("ultrastyle").setLevel(logging.INFO)
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def quiet_worker() -> None:
    """Ray's ``worker_process_setup_hook`` for this job: runs first in each of its worker
    processes. Keeps the libraries' INFO lines and Ray's deprecation notices about its own
    internals off the console (Ray Train configures its workers' logging again when they
    start; :func:`jobs.distill.train.train_loop_per_worker` quietens them the same way), and
    names this process's cluster in ``RAY_ADDRESS`` (unless it names one already; a driver's
    ``RAY_ADDRESS=local`` reaches the workers too), so that Ray Train's helpers that look their
    cluster up (the placement-group cleaner) do not fail on a machine running several."""
    if ray.is_initialized() and os.environ.get("RAY_ADDRESS", "") in ("", "auto", "local"):
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ultrastyle").setLevel(logging.INFO)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")


def ray_init_options() -> dict[str, Any]:
    """Keyword arguments for the job's ``ray.init()``: Ray's own driver messages at WARNING;
    in every worker process of the job, Ray Data's console at ERROR and :func:`quiet_worker`."""
    runtime_env: dict[str, Any] = {"worker_process_setup_hook": quiet_worker}
    if RAY_DATA_LOGGING.is_file():
        runtime_env["env_vars"] = {"RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING)}
    return {"logging_level": logging.WARNING, "runtime_env": runtime_env}
