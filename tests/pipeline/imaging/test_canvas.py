import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.imaging.canvas import DiskCanvas, MemoryCanvas, reflect_pad_canvas
from pipeline.imaging.tiles import Rect, canvas_size


def _canvases(tmp_path, c, h, w):
    return [MemoryCanvas(np.zeros((c, h, w), np.float32)), DiskCanvas(str(tmp_path / "c.f32"), c, h, w)]


@pytest.mark.parametrize("channels", [1, 3, 128])
def test_disk_and_memory_canvases_round_trip_rectangles(tmp_path, channels):
    rng = np.random.default_rng(0)
    full = rng.normal(size=(channels, 64, 96)).astype(np.float32)
    for canvas in _canvases(tmp_path, channels, 64, 96):
        for y in range(0, 64, 32):
            for x in range(0, 96, 48):
                rect = Rect(y, x, y + 32, x + 48)
                canvas.write(rect, full[(slice(None), *rect.slices())])
        rect = Rect(5, 17, 61, 90)
        np.testing.assert_array_equal(canvas.read(rect), full[(slice(None), *rect.slices())])
        if isinstance(canvas, DiskCanvas):
            canvas.close()


def test_a_disk_canvas_leaves_no_file_in_its_folder(tmp_path):
    canvas = DiskCanvas(str(tmp_path / "x.f32"), 3, 16, 16)
    canvas.write(Rect(0, 0, 16, 16), np.ones((3, 16, 16), np.float32))
    assert list(tmp_path.iterdir()) == []  # unlinked as soon as made
    np.testing.assert_array_equal(canvas.read(Rect(4, 4, 8, 8)), np.ones((3, 4, 4), np.float32))
    canvas.close()


_FILL_AND_DIE = """
import os, signal, sys
import numpy as np
from pipeline.imaging.canvas import open_canvas
from pipeline.imaging.tiles import Rect
canvas = open_canvas(3, 1024, 1024, workdir=sys.argv[1], name="input")  # 12 MiB of float32
canvas.write(Rect(0, 0, 1024, 1024), np.ones((3, 1024, 1024), np.float32))
if sys.argv[2] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
canvas.close()
print("written")
"""


def test_a_killed_process_gives_its_canvases_disk_back(small_tmpfs, tmp_path):
    """On a 16 MiB tmpfs: a process that fills 12 MiB and is killed, then one that needs the same
    12 MiB again; with canvases as named files the second would find the disk full."""
    folder = tmp_path / "small"
    root = str(Path(__file__).resolve().parents[3])
    twice = f'{sys.executable} -c "$0" {folder} die; {sys.executable} -c "$0" {folder} live'
    done = subprocess.run([*small_tmpfs(folder, "16m"), "sh", "-c", twice, _FILL_AND_DIE], capture_output=True,
                          text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "written"
    assert (tmp_path / "small.left").read_text() == ""


@settings(max_examples=25, deadline=None)
@given(st.integers(17, 80), st.integers(17, 80))
def test_reflect_pad_canvas_matches_numpy_reflect(height, width):
    rng = np.random.default_rng(height * 100 + width)
    image = rng.random((height, width, 2), np.float32)
    ch, cw = canvas_size(height, width)
    canvas = MemoryCanvas(np.zeros((2, ch, cw), np.float32))
    canvas.write(Rect(0, 0, height, width), image.transpose(2, 0, 1))
    reflect_pad_canvas(canvas, height, width)
    padded = np.pad(image, ((0, ch - height), (0, cw - width), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(canvas.array, padded.transpose(2, 0, 1))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_canvases_store_samples_and_read_float(tmp_path, dtype):
    """An 8-bit image costs 3 bytes a pixel on disk and reads as the float the engine wants."""
    top = float(np.iinfo(dtype).max)
    samples = np.random.default_rng(1).integers(0, int(top) + 1, (3, 40, 56)).astype(dtype)
    disk = DiskCanvas(str(tmp_path / "c.raw"), 3, 40, 56, dtype)
    assert os.fstat(disk._fd).st_size == samples.size * np.dtype(dtype).itemsize  # its unlinked file
    for canvas in (disk, MemoryCanvas(np.zeros((3, 40, 56), dtype))):
        canvas.write(Rect(0, 0, 40, 56), samples)
        rect = Rect(3, 5, 37, 50)
        got = canvas.read(rect)
        assert got.dtype == np.float32
        # Exactly what dividing by the full scale gives (the whole-image path's to_tensor).
        np.testing.assert_array_equal(got, samples[(slice(None), *rect.slices())].astype(np.float32) / np.float32(top))
        # Floats written back (as reflect padding does) round to the same samples.
        canvas.write(rect, got)
        np.testing.assert_array_equal(canvas.read(rect), got)
    disk.close()


def test_unknown_canvas_dtype_is_refused(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        DiskCanvas(str(tmp_path / "c.raw"), 3, 4, 4, np.int32)
