"""pipeline/imaging/deepzoom.py: the viewer page beside a DeepZoom output loads and draws its tiles.

Checked in a real browser: Debian's headless Chromium opens the page from the output folder
(file://, as someone who downloaded the result would), and the test reads back the DOM (how
many tiles loaded) and a screenshot (that they show the image where the page puts it).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from pipeline.imaging.canvas import MemoryCanvas
from pipeline.imaging.deepzoom import viewer_page
from pipeline.imaging.output import write_canvas

CHROMIUM = "/usr/bin/chromium"
WINDOW = (640, 480)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install chromium)")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 1200 x 900 photo: five tile columns at full resolution, a pyramid of 12 levels."""
    small = Image.fromarray(data.coffee())  # 600 x 400
    return np.asarray(small.resize((1200, 900), Image.Resampling.BICUBIC))


@pytest.fixture
def dzi(tmp_path: Path, photo: np.ndarray) -> Path:
    canvas = MemoryCanvas(np.ascontiguousarray(photo.transpose(2, 0, 1)).astype(np.float32) / 255)
    write_canvas(str(tmp_path / "site" / "coffee.dzi"), canvas, *photo.shape[:2], quality=90)
    return tmp_path / "site" / "coffee.html"


def test_page_loads_and_draws_the_tiles(tmp_path: Path, dzi: Path, photo: np.ndarray) -> None:
    dom = _chromium(tmp_path, "--dump-dom", dzi.as_uri()).stdout
    level = int(re.search(r'data-level="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-tiles-loaded="(\d+)"', dom).group(1))
    images = re.findall(r'src="coffee_files/(\d+)/(\d+)_(\d+)\.jpg"', dom)
    # Fitted to the window, the whole image shows: every tile of one level below full
    # resolution (level 11 is 1200 x 900; the window is smaller), all loaded.
    assert level in (9, 10, 11)
    side = 2 ** (11 - level)
    cols, rows = -(-1200 // side // 254), -(-900 // side // 254)
    assert sorted((int(x), int(y)) for lv, x, y in images if int(lv) == level) == [
        (x, y) for x in range(cols) for y in range(rows)
    ]
    assert loaded >= cols * rows

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", dzi.as_uri())
    screen = np.asarray(Image.open(shot).convert("RGB"), np.float64)
    assert screen.shape[:2] == (WINDOW[1], WINDOW[0])
    # The page fits the image: 640 x 480 px, exactly the window here.
    expected = np.asarray(Image.fromarray(photo).resize(WINDOW, Image.Resampling.BOX), np.float64)
    assert np.abs(screen - expected).mean() < 12
    # Against the image upside down (tiles in the wrong places) the difference is far larger.
    assert np.abs(screen - expected[::-1]).mean() > 30


def test_geometry_is_script_safe() -> None:
    page = viewer_page("a</script><b", 10, 20, tile=254, overlap=1, suffix="jpg")
    assert page.count("</script>") == 1
    assert "a\\u003c/script>\\u003cb_files/" in page
