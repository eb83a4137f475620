"""Shared fixtures: the embedded weights, real photos from scikit-image, local Ray, moto's S3.

The test images are written once per session from data installed with the packages (no
download, nothing beside the checkout): scikit-image's public-domain photos, cropped or
combined to the sizes the tests need, and styles painted by :func:`jobs.samples.paint_style`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
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


class TcpProxy:
    """A TCP proxy on loopback that can drop every connection: a storage outage between a client and a server.

    Forwards ``127.0.0.1:<port>`` to ``upstream``, a thread pair per connection.

    Args:
        upstream: ``(host, port)`` of the server.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._down = threading.Event()
        self._closed = threading.Event()
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        """``http://127.0.0.1:<port>``, the endpoint clients use."""
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def down(self) -> None:
        """Reset every connection, and each new one, until :meth:`up`."""
        self._down.set()
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            self._reset(sock)

    def up(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self._closed.set()
        self.down()
        self._listener.close()

    def _reset(self, sock: socket.socket) -> None:
        """Close ``sock`` with a TCP reset (linger 0), as a dropped connection looks to the client."""
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.close()
        self.dropped += 1

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down.is_set():
                self._reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                self._open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open -= {source, target}
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.fixture
def s3_proxy(s3_options) -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` in front of the moto server: point a client at ``s3_proxy.address`` and call
    ``down()``/``up()`` to cut the store off from it and bring it back."""
    host, port = s3_options["client_kwargs"]["endpoint_url"].rsplit("/", 1)[-1].split(":")
    proxy = TcpProxy((host, int(port)))
    yield proxy
    proxy.close()


# Mounts a tmpfs of size $1 on folder $2 in the command's own mount namespace, runs the rest of
# the command line there, and lists what it left on the tmpfs into "$2.left" (beside the mount).
_SMALL_TMPFS = (
    'size=$1 dir=$2; shift 2; mount -t tmpfs -o "size=$size" tmpfs "$dir" || exit 97; '
    '"$@"; rc=$?; ls -A "$dir" > "$dir.left"; exit $rc'
)


@pytest.fixture(scope="session")
def small_tmpfs(tmp_path_factory) -> Callable[[Path, str], list[str]]:
    """``small_tmpfs(folder, size)``: a command prefix that runs a command with a fresh tmpfs of
    ``size`` (``"4m"``) mounted on ``folder``, in a private mount namespace (nothing outside
    sees it, and it goes with the command), then writes what the command left on it to
    ``folder.left``: a real full disk, ENOSPC and all.

    Skips when this machine cannot make mount namespaces (``unshare`` missing, or neither root
    nor unprivileged user namespaces).
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed: no private tmpfs for a full disk")
    flags = "-m" if os.geteuid() == 0 else "-rm"

    def prefix(folder: Path, size: str) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        return [unshare, flags, "sh", "-c", _SMALL_TMPFS, "sh", size, str(folder)]

    probe = tmp_path_factory.mktemp("tmpfs-probe") / "mnt"
    done = subprocess.run([*prefix(probe, "1m"), "true"], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {done.stderr.strip()[-200:]}")
    return prefix


@pytest.fixture
def marked_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], Callable[[], list[int]]]]:
    """An environment for a job run in a subprocess, and a function listing the processes that
    carry it: every process the job starts (a local Ray's GCS, raylet, dashboard, agents and
    workers) inherits the marker variable, so what is left of the job after it ends is found
    in ``/proc/*/environ``. ``TMPDIR`` is a folder of the test's; Ray's own files go to a short
    folder of their own (its socket paths must stay short).

    Skips without ``/proc``.
    """
    if not Path("/proc/self/environ").exists():
        pytest.skip("no /proc: cannot list the processes a job left")
    marker = f"ULTRASTYLE_TEST_RUN={tmp_path.name}-{os.getpid()}"
    ray_tmp = Path("/tmp") / f"rt{os.getpid()}{abs(hash(tmp_path)) % 10**6}"
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    root = str(Path(__file__).resolve().parents[1])
    env.update(
        {
            marker.split("=")[0]: marker.split("=")[1],
            "TMPDIR": str(tmp_path / "tmp"),
            "RAY_TMPDIR": str(ray_tmp),
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
    )

    def processes() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and entry.name != str(os.getpid()):
                try:
                    if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
                except OSError:  # gone, or not ours to read
                    continue
        return found

    yield env, processes
    shutil.rmtree(ray_tmp, ignore_errors=True)
