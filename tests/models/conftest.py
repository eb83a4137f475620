"""A real HTTP server on 127.0.0.1 for the weights tests: downloads, HTTP folders and pointers.

It serves a folder of this test's own (``served``), which starts as a copy of the embedded
weights (``{k}SE.safetensors``, pinned by their embedded digests); tests add files to it, for
example a folder laid out like the authors' repository or a published bundle.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


class Server:
    """A static HTTP server over ``root`` in a thread, counting the GET requests it answers."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.base_uri = f"http://127.0.0.1:{self.httpd.server_port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def served(tmp_path: Path, weights_dir: Path) -> Path:
    """The folder the server serves: a copy of the embedded files."""
    root = tmp_path / "served"
    root.mkdir()
    for path in weights_dir.glob("*.safetensors"):
        (root / path.name).write_bytes(path.read_bytes())
    return root


@pytest.fixture
def server(served: Path) -> Iterator[Server]:
    srv = Server(served)
    yield srv
    srv.stop()
