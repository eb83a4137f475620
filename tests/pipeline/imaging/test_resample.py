"""Integer-factor resampling and the band split against torch's own pooling and bicubic, and
the band split tile by tile against the band split of the whole picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.imaging.canvas import MemoryCanvas
from pipeline.imaging.chunks import ChunkCanvas
from pipeline.imaging.resample import (
    BandSplit,
    band_split_tile,
    box_bands,
    box_downscale,
    cubic_matrix,
    label_downscale,
)
from pipeline.imaging.tiles import Rect, canvas_size, plan_tiles


def _picture(height: int, width: int, seed: int) -> np.ndarray:
    """A ``(3, H, W)`` picture with structure at every scale, a little outside [0, 1] in places."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    smooth = 0.5 + 0.4 * np.sin(7 * x + 3 * y)[None] * rng.uniform(0.5, 1, (3, 1, 1))
    return (smooth + rng.normal(0, 0.1, (3, height, width))).astype(np.float32)


@pytest.mark.parametrize(("height", "width", "factor", "rows"), [(97, 130, 4, 64), (97, 130, 7, 8), (64, 48, 16, 1)])
def test_box_bands_are_torch_average_pooling(height, width, factor, rows):
    values = _picture(height, width, 0)
    canvas = MemoryCanvas(np.pad(values, ((0, 0), (0, 15), (0, 15))))  # a padded canvas, read only inside
    got = np.concatenate(list(box_bands(canvas, height, width, factor, rows=rows)), axis=1)
    want = F.avg_pool2d(torch.from_numpy(values)[None], factor)[0].numpy()
    assert got.shape == (3, height // factor, width // factor)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_downscaled_canvases_are_reflect_padded_and_labels_keep_the_top_left_of_each_block(tmp_path):
    values = _picture(150, 101, 1)
    canvas = MemoryCanvas(values)
    small = box_downscale(canvas, 150, 101, 3, workdir=str(tmp_path))
    assert (small.height, small.width) == canvas_size(50, 33) == (64, 48)
    image = small.read(Rect(0, 0, 50, 33))
    np.testing.assert_allclose(small.read(Rect(0, 0, 64, 48)), np.pad(image, ((0, 0), (0, 14), (0, 15)),
                                                                     mode="reflect"))
    labels = np.arange(150 * 101, dtype=np.float32).reshape(1, 150, 101) % 5
    shrunk = label_downscale(MemoryCanvas(labels), 150, 101, 3, workdir=None)
    np.testing.assert_array_equal(shrunk.read(Rect(0, 0, 50, 33)), labels[:, ::3, ::3][:, :50, :33])
    small.close()


@pytest.mark.parametrize(("size", "factor"), [(11, 4), (40, 3), (5, 12)])
def test_cubic_matrix_is_torch_bicubic_with_clamped_taps(size, factor):
    source = torch.from_numpy(np.random.default_rng(2).normal(size=(1, 1, size, 1)).astype(np.float32))
    want = F.interpolate(source, scale_factor=(factor, 1), mode="bicubic", align_corners=False,
                         recompute_scale_factor=False)[0, 0, :, 0].numpy()
    for start, stop in [(0, size * factor), (factor + 1, 2 * factor + 5), (size * factor - 3, size * factor)]:
        first, weights = cubic_matrix(start, stop, factor, size)
        got = weights @ source[0, 0, first : first + weights.shape[1], 0].numpy()
        np.testing.assert_allclose(got, want[start:stop], rtol=1e-5, atol=1e-5)  # torch's weights are float32
    # beyond the last source pixel's block (the rows a shrunk image drops), taps stay clamped
    first, weights = cubic_matrix(size * factor, size * factor + factor - 1, factor, size)
    assert first + weights.shape[1] <= size and np.allclose(weights.sum(axis=1), 1)


def _band_split_whole(full: np.ndarray, coarse: np.ndarray, factor: int, height: int, width: int) -> np.ndarray:
    """``F + up(C - down(F))`` on whole arrays with torch's pooling and bicubic (clamped taps are
    edge replication, as far as the padded canvas reaches)."""
    f, c = torch.from_numpy(full).clamp(0, 1)[None], torch.from_numpy(coarse).clamp(0, 1)[None]
    ch, cw = height // factor, width // factor
    residual = c[..., :ch, :cw] - F.avg_pool2d(f[..., : ch * factor, : cw * factor], factor)
    pad_y, pad_x = -(-f.shape[-2] // factor) - ch + 2, -(-f.shape[-1] // factor) - cw + 2
    low = F.interpolate(F.pad(residual, (0, pad_x, 0, pad_y), mode="replicate"), scale_factor=factor,
                        mode="bicubic", align_corners=False, recompute_scale_factor=False)
    return (f + low[..., : f.shape[-2], : f.shape[-1]])[0].numpy()


@pytest.mark.parametrize(("height", "width", "factor", "tile"), [(150, 101, 3, 32), (200, 260, 12, 48)])
def test_band_split_by_tiles_is_the_band_split_of_the_whole_picture(height, width, factor, tile):
    padded = canvas_size(height, width)
    full = _picture(*padded, 3)
    coarse = _picture(*canvas_size(height // factor, width // factor), 4)
    split = BandSplit(height, width, factor)
    want = _band_split_whole(full, coarse, factor, height, width)
    tiles = plan_tiles(height, width, tile=tile)
    assert len(tiles) > 4
    for t in tiles:
        small, region = split.regions(t.core)
        # a canvas holding exactly the regions the tile says it reads: reading more would fail
        got = band_split_tile(ChunkCanvas(3, *padded, [(region, full[(slice(None), *region.slices())])]),
                              ChunkCanvas(3, *coarse.shape[1:], [(small, coarse[(slice(None), *small.slices())])]),
                              t.core, split)
        np.testing.assert_allclose(got, want[(slice(None), *t.core.slices())], atol=1e-5)
