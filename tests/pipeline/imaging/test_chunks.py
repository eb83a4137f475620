"""A canvas of tile cores reads like the whole canvas, and a tile round on its neighbours is exact."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.engine.tiled import level_geometry, tile_round_a, tile_round_b
from pipeline.engine.wct import whitening_coloring
from pipeline.imaging.canvas import MemoryCanvas
from pipeline.imaging.chunks import ChunkCanvas, intersection, overlapping
from pipeline.imaging.tiles import Rect, plan_tiles


def _cores(canvas: MemoryCanvas, tile: int):
    tiles = plan_tiles(canvas.height, canvas.width, tile=tile)
    return tiles, [(t.core, canvas.read(t.core)) for t in tiles]


def test_reads_across_chunks_equal_the_whole_canvas():
    rng = np.random.default_rng(0)
    whole = MemoryCanvas(rng.random((3, 80, 112), dtype=np.float32))
    _, chunks = _cores(whole, 32)
    canvas = ChunkCanvas(3, 80, 112, chunks)
    for rect in [Rect(0, 0, 80, 112), Rect(10, 20, 70, 100), Rect(31, 31, 33, 33), Rect(64, 96, 80, 112)]:
        np.testing.assert_array_equal(canvas.read(rect), whole.read(rect))


def test_uncovered_pixels_overlaps_and_bad_shapes_are_errors():
    canvas = ChunkCanvas(2, 32, 32, [(Rect(0, 0, 16, 16), np.zeros((2, 16, 16), np.float32))])
    with pytest.raises(ValueError, match="only partly covered"):
        canvas.read(Rect(0, 0, 16, 17))
    with pytest.raises(ValueError, match="overlaps"):
        canvas.write(Rect(8, 8, 24, 24), np.zeros((2, 16, 16), np.float32))
    with pytest.raises(ValueError, match="shape"):
        canvas.write(Rect(16, 16, 32, 32), np.zeros((3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="leaves"):
        canvas.write(Rect(16, 16, 48, 48), np.zeros((2, 32, 32), np.float32))


def test_read_only_chunks_are_read_not_written():
    values = np.ones((1, 16, 16), np.float32)
    values.setflags(write=False)
    canvas = ChunkCanvas(1, 16, 16, [(Rect(0, 0, 16, 16), values)])
    out = canvas.read(Rect(0, 0, 8, 8))
    out[:] = 5
    assert values.max() == 1


def test_intersection_and_overlapping():
    a = Rect(0, 0, 16, 16)
    assert intersection(a, Rect(8, 8, 32, 32)) == Rect(8, 8, 16, 16)
    assert intersection(a, Rect(16, 0, 32, 16)) is None  # touching edges share no pixel
    rects = [Rect(0, 0, 16, 16), Rect(0, 16, 16, 32), Rect(16, 0, 32, 16), Rect(16, 16, 32, 32)]
    assert overlapping(rects, Rect(0, 0, 17, 16)) == [0, 2]


@pytest.mark.parametrize("level", [5, 2])
def test_tile_rounds_on_neighbour_chunks_equal_rounds_on_the_whole_canvas(model_set, level):
    """What an actor computes from the cores it is handed equals the in-process tiled engine."""
    rng = np.random.default_rng(level)
    whole = MemoryCanvas(rng.random((3, 96, 128), dtype=np.float32))
    tiles, chunks = _cores(whole, 32)
    encoder, decoder = model_set.encoders[level], model_set.decoders[level]
    geo = level_geometry(level, encoder.out_channels)
    bounds = Rect(0, 0, whole.height, whole.width)
    tile = tiles[5]
    near = overlapping([c for c, _ in chunks], tile.core.grow(geo.halo, bounds))
    assert len(near) < len(tiles) or level == 5
    part = ChunkCanvas(3, whole.height, whole.width, [chunks[i] for i in near])

    stats, features = tile_round_a(part, tile, encoder, geo)
    want_stats, want_features = tile_round_a(whole, tile, encoder, geo)
    np.testing.assert_array_equal(features, want_features)
    np.testing.assert_array_equal(stats.scatter, want_stats.scatter)

    transform = whitening_coloring(stats, stats, alpha=0.5)
    got = tile_round_b(part, None, tile, encoder, decoder, geo, transform)
    want = tile_round_b(whole, None, tile, encoder, decoder, geo, transform)
    np.testing.assert_array_equal(got, want)
