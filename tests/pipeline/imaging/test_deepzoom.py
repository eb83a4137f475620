"""pipeline/imaging/deepzoom.py: the OpenSeadragon page beside a DeepZoom output draws its tiles.

Checked in a real browser: Debian's headless Chromium, driven over the DevTools protocol
(``--remote-debugging-pipe``: JSON messages on file descriptors 3 and 4, no extra package),
opens the page from the output folder (``file://``, as someone who downloaded the result
would) and from an S3 bucket served over HTTP (moto's server, as a bucket website would),
waits until the viewer says every tile of the view is loaded, and compares a screenshot
with the image; then it drives the keyboard, a touch drag and the full-page button.

The protocol, rather than ``chromium --screenshot``: that flag resizes the window just
before it captures, and a canvas-drawing viewer has no frame left to redraw in.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data

from pipeline.imaging.canvas import MemoryCanvas
from pipeline.imaging.deepzoom import viewer_page
from pipeline.imaging.output import write_canvas

CHROMIUM = "/usr/bin/chromium"
WINDOW = (640, 480)
TIMEOUT = 30.0


class _Browser:
    """Headless Chromium with one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, profile: Path) -> None:
        command_r, self._command_w = os.pipe()
        self._reply_r, reply_w = os.pipe()
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={profile}",
        ]
        # posix_spawn rather than subprocess's preexec_fn, which is unsafe beside threads (moto's
        # server): the protocol pipe's ends go where --remote-debugging-pipe expects them, 3 and 4.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (command_r, reply_w)]  # clear of 0-4
        self._pid = os.posix_spawn(CHROMIUM, [CHROMIUM, *flags], os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, ends[0], 3),
            (os.POSIX_SPAWN_DUP2, ends[1], 4),
        ])
        for fd in (command_r, reply_w, *ends):
            os.close(fd)
        self._buffer = b""
        self._last_id = 0
        self.requested: list[str] = []  # every URL the page asked for (Network.requestWillBeSent)
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        width, height = WINDOW
        self.call("Emulation.setDeviceMetricsOverride", page=True, width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        self.call("Network.enable", page=True)

    def call(self, method: str, *, page: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command (to the page with ``page``) and return its result, skipping events."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params}
        if page:
            message["sessionId"] = self._session
        os.write(self._command_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("method") == "Network.requestWillBeSent":
                    self.requested.append(reply["params"]["request"]["url"])
                if reply.get("id") == self._last_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._reply_r], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {method} within {TIMEOUT} s")
            chunk = os.read(self._reply_r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited during {method}")
            self._buffer += chunk

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        reply = self.call("Runtime.evaluate", page=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str) -> None:
        """Poll until ``expression`` is true in the page."""
        deadline = time.monotonic() + TIMEOUT
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} still false after {TIMEOUT} s")
            time.sleep(0.05)

    def wait_still(self, expression: str, *, interval: float = 0.25) -> None:
        """Poll until ``expression`` keeps its value for ``interval`` seconds (an animation ended)."""
        deadline = time.monotonic() + TIMEOUT
        value = self.evaluate(expression)
        while True:
            time.sleep(interval)
            value, previous = self.evaluate(expression), value
            if value == previous:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} still changing after {TIMEOUT} s")

    def open(self, url: str) -> None:
        """Load ``url`` and wait until the viewer has every tile of its first view."""
        self.call("Page.navigate", page=True, url=url)
        self.wait_for('document.getElementById("view")?.dataset.fullyLoaded === "true"')

    def screenshot(self) -> np.ndarray:
        """The page as RGB ``(H, W, 3)`` float64 in [0, 255]."""
        png = base64.b64decode(self.call("Page.captureScreenshot", page=True, format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float64)

    def key(self, key: str, code: str, key_code: int) -> None:
        """Press and release one key, as a keyboard would."""
        common = {"key": key, "code": code, "windowsVirtualKeyCode": key_code}
        self.call("Input.dispatchKeyEvent", page=True, type="keyDown", text=key, **common)
        self.call("Input.dispatchKeyEvent", page=True, type="keyUp", **common)

    def touch_drag(self, start: tuple[int, int], end: tuple[int, int], steps: int = 10) -> None:
        """One finger from ``start`` to ``end`` (page pixels)."""
        points = [
            {"x": start[0] + (end[0] - start[0]) * i / steps, "y": start[1] + (end[1] - start[1]) * i / steps}
            for i in range(steps + 1)
        ]
        self.call("Input.dispatchTouchEvent", page=True, type="touchStart", touchPoints=points[:1])
        for point in points[1:]:
            self.call("Input.dispatchTouchEvent", page=True, type="touchMove", touchPoints=[point])
        self.call("Input.dispatchTouchEvent", page=True, type="touchEnd", touchPoints=[])

    def click(self, selector: str) -> None:
        """A mouse click in the middle of the element ``selector`` names."""
        x, y = self.evaluate(
            f"(r => [r.left + r.width / 2, r.top + r.height / 2])(document.querySelector({selector!r})"
            ".getBoundingClientRect())"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", page=True, type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        """Close the protocol pipe, on which Chromium exits; kill it if it has not within the timeout."""
        os.close(self._command_w)
        deadline = time.monotonic() + TIMEOUT
        while not os.waitpid(self._pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
                break
            time.sleep(0.05)
        os.close(self._reply_r)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[_Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install chromium)")
    chromium = _Browser(tmp_path / "profile")
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 1200 x 900 photo: five tile columns at full resolution, a pyramid of 12 levels."""
    small = Image.fromarray(data.coffee())  # 600 x 400
    return np.asarray(small.resize((1200, 900), Image.Resampling.BICUBIC))


def _write(uri: str, photo: np.ndarray, storage_options: dict | None = None) -> None:
    canvas = MemoryCanvas(np.ascontiguousarray(photo.transpose(2, 0, 1)).astype(np.float32) / 255)
    write_canvas(uri, canvas, *photo.shape[:2], quality=90, storage_options=storage_options)


@pytest.fixture(params=["folder", "bucket"])
def page_url(request: pytest.FixtureRequest, tmp_path: Path, photo: np.ndarray) -> str:
    """The viewer page of ``coffee.dzi``, opened from a folder or served from an S3 bucket."""
    if request.param == "folder":
        _write(str(tmp_path / "site" / "coffee.dzi"), photo)
        return (tmp_path / "site" / "coffee.html").as_uri()
    s3_options, s3_fs = request.getfixturevalue("s3_options"), request.getfixturevalue("s3_fs")
    # moto keeps its buckets for the whole session, across test modules: a name of this test's own.
    if not s3_fs.exists("viewer-pages"):
        s3_fs.mkdir("viewer-pages", acl="public-read")  # readable by a browser, as a bucket of published outputs is
    _write("s3://viewer-pages/results/coffee.dzi", photo, s3_options)
    # moto serves objects path-style with the Content-Type they were put with (text/html here).
    return f"{s3_options['client_kwargs']['endpoint_url']}/viewer-pages/results/coffee.html"


def _outside_controls(browser: _Browser) -> np.ndarray:
    """Mask of the window's pixels not under the navigator or the buttons."""
    keep = np.ones(WINDOW[::-1], bool)
    boxes = browser.evaluate(
        "[...document.querySelectorAll('.navigator, [title]')].filter(e => e.id !== 'view')"
        ".map(e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })"
    )
    assert len(boxes) >= 5  # the navigator and four buttons
    for left, top, right, bottom in boxes:
        keep[max(0, int(top)) : int(np.ceil(bottom)), max(0, int(left)) : int(np.ceil(right))] = False
    return keep


def test_page_draws_the_tiles(browser: _Browser, page_url: str, photo: np.ndarray) -> None:
    browser.open(page_url)
    # Nothing is fetched but the page and its tiles: the library and its images are in the page.
    tiles = page_url.rsplit("/", 1)[0] + "/coffee_files/"
    fetched = [url for url in browser.requested if url != page_url and not url.startswith("data:image/png;base64,")]
    assert fetched and all(url.startswith(tiles) and url.endswith(".jpg") for url in fetched), fetched
    assert browser.evaluate("viewer.viewport.getContainerSize().x") == WINDOW[0]
    assert int(browser.evaluate('document.getElementById("view").dataset.tilesLoaded')) > 0
    screen = browser.screenshot()
    assert screen.shape[:2] == (WINDOW[1], WINDOW[0])
    # The page fits the image: 1200 x 900 is 640 x 480 px, exactly the window here.
    expected = np.asarray(Image.fromarray(photo).resize(WINDOW, Image.Resampling.BOX), np.float64)
    keep = _outside_controls(browser)
    assert keep.mean() > 0.8
    assert np.abs(screen - expected)[keep].mean() < 12
    # Against the image upside down (tiles in the wrong places) the difference is far larger.
    assert np.abs(screen - expected[::-1])[keep].mean() > 30


def test_keyboard_touch_and_full_page(browser: _Browser, page_url: str) -> None:
    browser.open(page_url)
    zoom, center = "viewer.viewport.getZoom(true)", "viewer.viewport.getCenter(true).x"
    home = browser.evaluate(zoom)
    # Keys work at once: the page gives the viewer the focus when it opens.
    browser.key("=", "Equal", 187)
    browser.wait_for(f"{zoom} > {home} * 1.05")
    browser.wait_still(zoom)
    # A finger dragged to the left moves the view to the right of the picture.
    before = browser.evaluate(center)
    browser.touch_drag((400, 240), (200, 240))
    browser.wait_for(f"{center} > {before} + 0.1")
    # The full-page button (full screen where the browser allows it).
    assert not browser.evaluate("viewer.isFullPage()")
    browser.click('[title="Toggle full page"]')
    browser.wait_for("viewer.isFullPage()")


def test_page_is_self_contained_and_script_safe() -> None:
    page = viewer_page("a</script><b", 10, 20, tile=254, overlap=1, suffix="jpg")
    # Two <script> elements (the library, the page's own) and nothing fetched from elsewhere.
    assert page.count("</script>") == 2
    assert '"Url": "a\\u003c/script>\\u003cb_files/"' in page
    assert " src=" not in page
    assert "Redistribution and use in source and binary forms" in page  # OpenSeadragon's licence
