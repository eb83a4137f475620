"""jobs/distill/resources.py: Train workers never take the CPU Ray Data needs."""

from __future__ import annotations

import pytest

from jobs.distill.resources import worker_resources


def test_default_leaves_one_cpu_to_ray_data():
    assert worker_resources(workers=2, cpus_per_worker=None, gpu=False, cluster={"CPU": 2.0}) == {"CPU": 0.5}
    assert worker_resources(workers=3, cpus_per_worker=None, gpu=False, cluster={"CPU": 2.0}) == {"CPU": 0.33}
    on_gpus = worker_resources(workers=4, cpus_per_worker=None, gpu=True, cluster={"CPU": 33.0, "GPU": 4.0})
    assert on_gpus == {"CPU": 8.0, "GPU": 1.0}


def test_explicit_setting_that_fits_is_kept():
    assert worker_resources(workers=2, cpus_per_worker=0.5, gpu=False, cluster={"CPU": 2.0}) == {"CPU": 0.5}
    assert worker_resources(workers=4, cpus_per_worker=2, gpu=True, cluster={"CPU": 16.0, "GPU": 4.0})["CPU"] == 2


@pytest.mark.parametrize(
    ("workers", "cpus", "gpu", "cluster", "message"),
    [
        (2, 1.0, False, {"CPU": 2.0}, "--cpus-per-worker to at most 0.5"),
        (4, 0.5, False, {"CPU": 2.0}, "--cpus-per-worker to at most 0.25"),
        (2, None, False, {"CPU": 1.0}, "lower --workers"),
        (20, 0.1, False, {"CPU": 2.0}, "add CPUs, or lower --workers"),
        (4, None, True, {"CPU": 32.0, "GPU": 2.0}, "needs 4 GPUs and the cluster has 2"),
    ],
)
def test_settings_that_would_hang_are_refused_in_one_line(workers, cpus, gpu, cluster, message):
    with pytest.raises(ValueError) as err:
        worker_resources(workers=workers, cpus_per_worker=cpus, gpu=gpu, cluster=cluster)
    assert message in str(err.value) and "\n" not in str(err.value)
