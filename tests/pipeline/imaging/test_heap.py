"""pipeline/imaging/heap.py: trims only past the slack, and a real trim gives fragmented heap back."""

from __future__ import annotations

import ctypes
import sys

import pytest

from pipeline.imaging.heap import HeapTrimmer, release_free_heap, resident_bytes


def test_trims_once_resident_memory_grows_past_the_slack() -> None:
    resident = [1000]
    trimmed = []

    def trim(pad: int) -> int:
        trimmed.append(pad)
        resident[0] = 1100  # what trimming left: live data above the old low mark
        return 1

    trimmer = HeapTrimmer(slack=500, trim=trim, resident=lambda: resident[0])
    assert trimmer() is True  # the first call starts from live data
    for value, want in [(1000, False), (1400, False), (1500, False), (1501, True), (1500, False), (1601, True)]:
        resident[0] = value
        assert trimmer() is want, value
    assert trimmed == [0, 0, 0] and trimmer.trims == 3
    resident[0] = 900  # the low mark follows resident memory down
    assert trimmer() is False
    resident[0] = 1401
    assert trimmer() is True


def test_without_malloc_trim_it_does_nothing() -> None:
    trimmer = HeapTrimmer(slack=0, trim=None, resident=lambda: 1 / 0)
    assert trimmer() is False and trimmer.trims == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim and /proc are glibc/Linux only")
def test_process_trimmer_returns_fragmented_heap() -> None:
    """Blocks freed between live ones stay resident until a trim gives their pages back."""
    assert release_free_heap._trim is not None, "glibc's malloc_trim should be found on Linux"
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size = 64 << 10  # under glibc's smallest mmap threshold (128 KiB), so the blocks come from the heap
    blocks = [libc.malloc(size) for _ in range(4000)]
    for block in blocks:
        libc.memset(block, 1, size)
    for block in blocks[:-1]:  # the last block stays live above the holes and pins the heap's top
        libc.free(block)
    before = resident_bytes()
    trimmer = HeapTrimmer(slack=0, trim=release_free_heap._trim)
    assert trimmer()
    freed = before - resident_bytes()
    libc.free(blocks[-1])
    assert freed > 3000 * size, f"trim gave back {freed / 2**20:.0f} MiB of ~250 MiB of holes"


def test_the_tile_loops_offer_a_trim_before_every_tile(model_set, content_dir, monkeypatch) -> None:
    """Both rounds of every level call the process trimmer once per tile, in-process (and so in
    each Ray actor, which runs the same round functions)."""
    import numpy as np

    from pipeline.engine import tiled
    from pipeline.engine.cascade import style_statistics
    from pipeline.engine.runner import to_tensor
    from pipeline.imaging.imageio import read_image
    from pipeline.imaging.tiles import plan_tiles

    calls = []
    monkeypatch.setattr(tiled, "release_free_heap", lambda: calls.append(1))
    rgb = read_image(str(content_dir / "rocket_420.jpg")).rgb[:160, :192]
    style = style_statistics(to_tensor(np.ascontiguousarray(rgb[::-1])), model_set)
    tiled.stylize_exact(tiled.canvas_from_array(rgb, workdir=None), style, model_set, tile=64)
    assert len(calls) == len(plan_tiles(160, 192, tile=64)) * len(model_set.levels) * 2


def test_decoding_and_encoding_offer_a_trim_per_strip(content_dir, tmp_path, monkeypatch) -> None:
    from pipeline.imaging import imageio, output
    from pipeline.imaging.imageio import STRIP_ROWS, read_canvas

    calls = {"read": 0, "write": 0}
    monkeypatch.setattr(imageio, "release_free_heap", lambda: calls.__setitem__("read", calls["read"] + 1))
    monkeypatch.setattr(output, "release_free_heap", lambda: calls.__setitem__("write", calls["write"] + 1))
    image = read_canvas(str(content_dir / "rocket_420.jpg"), workdir=str(tmp_path))
    try:
        output.write_canvas(str(tmp_path / "out.png"), image.canvas, image.height, image.width)
    finally:
        image.close()
    assert calls == {"read": -(-image.height // STRIP_ROWS), "write": -(-image.height // output.BAND_ROWS)}
