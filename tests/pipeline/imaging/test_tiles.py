import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.imaging.tiles import TILE_ALIGN, Rect, canvas_size, plan_tiles


@given(st.integers(32, 3000), st.integers(32, 3000), st.integers(1, 64).map(lambda n: n * TILE_ALIGN))
def test_cores_partition_the_canvas_on_the_16_grid(height, width, tile):
    ch, cw = canvas_size(height, width)
    tiles = plan_tiles(height, width, tile=tile)
    assert sum(t.core.area for t in tiles) == ch * cw
    for t in tiles:
        assert all(v % TILE_ALIGN == 0 for v in (t.core.y0, t.core.x0, t.core.y1, t.core.x1))
        assert 0 < t.core.height <= tile and 0 < t.core.width <= tile
        assert t.core.y1 <= ch and t.core.x1 <= cw
    # No overlap: row-major cores tile without gaps.
    starts = {(t.core.y0, t.core.x0) for t in tiles}
    assert len(starts) == len(tiles)


def test_canvas_rounds_up_to_16():
    assert canvas_size(420, 500) == (432, 512)
    assert canvas_size(512, 512) == (512, 512)


def test_grow_clips_to_bounds_and_scaled_needs_alignment():
    bounds = Rect(0, 0, 480, 640)
    assert Rect(0, 128, 128, 256).grow(160, bounds) == Rect(0, 0, 288, 416)
    assert Rect(32, 32, 64, 64).scaled(16) == Rect(2, 2, 4, 4)
    with pytest.raises(ValueError, match="not aligned"):
        Rect(8, 0, 16, 16).scaled(16)


@pytest.mark.parametrize("tile", [0, 100, -16])
def test_tile_must_be_a_positive_multiple_of_16(tile):
    with pytest.raises(ValueError, match="multiple of 16"):
        plan_tiles(512, 512, tile=tile)
