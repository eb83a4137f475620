"""What each Ray Train worker reserves, sized so that Ray Data always keeps a CPU.

The training crops come from Ray Data, whose read and map tasks ask for one CPU each. If the
Train workers reserve every CPU of the cluster, those tasks never start and the run waits
forever (Ray only warns that "the job may hang forever"). So the job sizes
``--cpus-per-worker`` from the cluster it finds, or refuses at start, in one line, a setting
that cannot run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["DATA_CPUS", "MIN_WORKER_CPUS", "worker_resources"]

DATA_CPUS = 1.0  # what one Ray Data task asks for: the cluster must keep this much free
MIN_WORKER_CPUS = 0.1  # below this a worker's share is too small to be worth starting


def worker_resources(
    *, workers: int, cpus_per_worker: float | None, gpu: bool, cluster: Mapping[str, float]
) -> dict[str, float]:
    """Ray resources for each of ``workers`` Train workers on a cluster of ``cluster`` resources.

    Args:
        workers: Ray Train workers (DDP ranks), at least 1.
        cpus_per_worker: CPUs each worker reserves; ``None`` sizes it as
            ``(cluster CPUs - 1) / workers``, rounded down to 0.01, leaving one CPU to Ray Data.
        gpu: whether each worker takes one GPU.
        cluster: the cluster's total resources, as :func:`ray.cluster_resources` gives them.

    Returns:
        ``{"CPU": c}``, plus ``"GPU": 1`` with ``gpu``, for ``ScalingConfig(resources_per_worker=...)``.

    Raises:
        ValueError: one line saying which flag to change: the workers' CPUs would leave Ray Data
            less than :data:`DATA_CPUS`, the default share would be under
            :data:`MIN_WORKER_CPUS`, or ``gpu`` asks for more GPUs than the cluster has.
    """
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if gpu and gpus < workers:
        raise ValueError(
            f"--workers {workers} with --gpu needs {workers} GPUs and the cluster has {gpus:g}: lower --workers"
        )
    spare = cpus - DATA_CPUS
    if cpus_per_worker is None:
        share = math.floor(100 * spare / workers) / 100
        if share < MIN_WORKER_CPUS:
            raise ValueError(
                f"the cluster has {cpus:g} CPUs: {workers} workers of at least {MIN_WORKER_CPUS:g} CPU plus "
                f"{DATA_CPUS:g} for Ray Data do not fit; lower --workers or add CPUs"
            )
        cpus_per_worker = share
    elif workers * cpus_per_worker > spare:
        most = math.floor(100 * spare / workers) / 100
        hint = f"set --cpus-per-worker to at most {most:g} or leave it out" if most >= MIN_WORKER_CPUS else "add CPUs"
        raise ValueError(
            f"--workers {workers} x --cpus-per-worker {cpus_per_worker:g} leave Ray Data less than "
            f"{DATA_CPUS:g} of the cluster's {cpus:g} CPUs and the run would hang: {hint}, or lower --workers"
        )
    return {"CPU": cpus_per_worker, **({"GPU": 1.0} if gpu else {})}
