"""Shared fixtures: the real images and official weights in ../shared, skipped when absent."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS_DIR = SHARED / "weights" / "cd16x"
CONTENT_DIR = SHARED / "images" / "content"
STYLE_DIR = SHARED / "images" / "style"

torch.set_num_threads(2)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the shared test data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return _need(WEIGHTS_DIR)


@pytest.fixture(scope="session")
def content_dir() -> Path:
    return _need(CONTENT_DIR)


@pytest.fixture(scope="session")
def style_dir() -> Path:
    return _need(STYLE_DIR)


@pytest.fixture(scope="session")
def model_set(weights_dir):
    from pipeline.models import load_model_set

    return load_model_set(str(weights_dir))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one thread, restoring the session's setting afterwards.

    Many small convolutions and SVDs stall in 2-thread parallel regions when the two cores
    are shared with other work (measured: a cascade on an 80x100 crop took 7 s on 2 threads,
    1.7 s on one; torch.svd of a 128x128 matrix 0.5 s vs 3 ms).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster of 2 CPUs for one test module (``address="local"``: never
    another session's or test's head)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def s3_options():
    """moto's S3-compatible HTTP server on loopback; yields the fsspec storage options for it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
    server.stop()


@pytest.fixture(scope="module")
def s3_fs(s3_options):
    """An s3fs filesystem on the moto server, bypassing fsspec's instance cache."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **s3_options)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the weights cache of every test out of the user's home."""
    monkeypatch.setenv("ULTRASTYLE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
