"""Shared fixtures: the embedded weights, real photos from scikit-image, local Ray, moto's S3.

The test images are written once per session from data installed with the packages (no
download, nothing beside the checkout): scikit-image's public-domain photos, cropped or
combined to the sizes the tests need, and styles painted by :func:`jobs.samples.paint_style`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from jobs.samples import paint_style, skimage_photo
from models.weights import EMBEDDED_DIR

torch.set_num_threads(2)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``cuda`` when torch sees no GPU; ``pytest -m cuda`` selects them all
    (``scripts/gpu_check.sh`` runs them that way on a GPU machine)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def _square(name: str, side: int) -> Image.Image:
    """The centred square crop of a scikit-image photo, scaled to ``side``."""
    img = Image.open(skimage_photo(name)).convert("RGB")
    short = min(img.size)
    left, top = (img.width - short) // 2, (img.height - short) // 2
    return img.crop((left, top, left + short, top + short)).resize((side, side), Image.Resampling.LANCZOS)


def _rocket_420() -> Image.Image:
    """420 x 420 (a side that is not a multiple of 16) of the rocket on its launch pad, unscaled."""
    img = Image.open(skimage_photo("rocket.jpg")).convert("RGB")  # 427 x 640
    return img.crop((3, 150, 423, 570))


def _mosaic_1024() -> Image.Image:
    """1024 x 1024 of four photos (astronaut, coffee, cat, rocket): the large content image."""
    out = Image.new("RGB", (1024, 1024))
    for i, name in enumerate(("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")):
        out.paste(_square(name, 512), (512 * (i % 2), 512 * (i // 2)))
    return out


# File name -> maker; the names say what the image shows and its size (width x height).
CONTENT_IMAGES = {
    "astronaut_512.jpg": lambda: Image.open(skimage_photo("astronaut.png")).convert("RGB"),
    "rocket_420.jpg": _rocket_420,
    "photo_mosaic_1024.jpg": _mosaic_1024,
}
STYLE_IMAGES = {
    "strokes_512.jpg": lambda: paint_style(512),
    "strokes_570.jpg": lambda: paint_style(570, seed=11),
    "strokes_591x800.jpg": lambda: paint_style(591, height=800, seed=23),
}


def _write(folder: Path, images: dict) -> Path:
    folder.mkdir(parents=True)
    for name, make in images.items():
        make().save(folder / name, quality=95)
    return folder


@pytest.fixture(scope="session")
def test_images(tmp_path_factory) -> Path:
    """Folder with ``content/`` and ``style/`` (the data root the distillation tests read)."""
    root = tmp_path_factory.mktemp("images")
    _write(root / "content", CONTENT_IMAGES)
    _write(root / "style", STYLE_IMAGES)
    return root


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """The embedded CD 16x files, ``{k}SE.safetensors``/``{k}SD.safetensors`` (read them, never write)."""
    return EMBEDDED_DIR


@pytest.fixture(scope="session")
def content_dir(test_images: Path) -> Path:
    return test_images / "content"


@pytest.fixture(scope="session")
def style_dir(test_images: Path) -> Path:
    return test_images / "style"


@pytest.fixture(scope="session")
def model_set(weights_dir):
    from pipeline.engine.models import load_model_set

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


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A weights cache of this test's own, so no other test's downloads are found in it."""
    from models.checkpoint import cache_dir

    monkeypatch.setenv("ULTRASTYLE_CACHE", str(tmp_path / "cache"))
    return cache_dir()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the weights cache of every test out of the user's home."""
    monkeypatch.setenv("ULTRASTYLE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


class _OnTileProgress(logging.Handler):
    """Runs ``action`` once, when the batch progress line says ``after`` or more tile rounds are
    done and more than 20 are left; ``done`` holds what it returned."""

    def __init__(self, action: Callable[[], Any], after: int) -> None:
        super().__init__()
        self.action, self.after = action, after
        self.done: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"tiles (\d+)/(\d+)", record.getMessage())
        if self.done is None and found and self.after <= int(found[1]) < int(found[2]) - 20:
            self.done = self.action()


@pytest.fixture
def on_tile_progress() -> Iterator[Callable[..., _OnTileProgress]]:
    """``on_tile_progress(action, after=N)``: run ``action`` mid-job (kill an actor, remove a
    node) from the batch job's progress log; the handler is removed after the test."""
    logger = logging.getLogger("ultrastyle.batch")
    handlers = []

    def install(action: Callable[[], Any], *, after: int) -> _OnTileProgress:
        handlers.append(_OnTileProgress(action, after))
        logger.addHandler(handlers[-1])
        return handlers[-1]

    yield install
    for handler in handlers:
        logger.removeHandler(handler)
