"""Exact tiling against the whole-image yardstick, on real photos with the official weights."""

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.canvas import MemoryCanvas
from pipeline.cascade import pad_to_multiple, style_statistics, stylize_tile, stylize_whole
from pipeline.engine import to_tensor
from pipeline.imageio import read_image
from pipeline.stats import feature_stats, merge_stats
from pipeline.tiled import canvas_from_array, level_geometry, read_rgb, stylize_exact, tile_round_a, tile_round_b
from pipeline.tiles import plan_tiles
from pipeline.wct import whitening_coloring


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    qa, qb = np.round(np.clip(a, 0, 1) * 255), np.round(np.clip(b, 0, 1) * 255)
    mse = float(((qa - qb) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def style(model_set, style_dir):
    return style_statistics(to_tensor(read_image(str(style_dir / "strokes_512.jpg")).rgb), model_set)


# (content file, crop height, crop width, tile): tiles that divide and tiles that do not, and
# sides that are not multiples of 16.
CASES = [
    ("astronaut_512.jpg", 512, 512, 256),
    ("astronaut_512.jpg", 500, 470, 208),
    ("rocket_420.jpg", 420, 420, 128),
    ("photo_mosaic_1024.jpg", 333, 517, 160),
]


@pytest.mark.parametrize(("name", "height", "width", "tile"), CASES)
def test_exact_tiling_equals_the_whole_image(model_set, style, content_dir, name, height, width, tile, tmp_path):
    rgb = read_image(str(content_dir / name)).rgb[:height, :width]
    whole = stylize_whole(to_tensor(rgb), style, model_set)[0].permute(1, 2, 0).numpy()
    out = stylize_exact(canvas_from_array(rgb, workdir=str(tmp_path)), style, model_set, tile=tile,
                        workdir=str(tmp_path))
    tiled = read_rgb(out, height, width)
    assert tiled.shape == whole.shape
    assert psnr8(tiled, whole) >= 50
    assert np.abs(tiled - whole).max() < 1e-3
    assert len(plan_tiles(height, width, tile=tile)) > 1


def _level_inputs(model_set, style, rgb):
    """Input image of every level of the whole-image cascade."""
    image = pad_to_multiple(to_tensor(rgb))
    inputs = {}
    for level in model_set.levels:
        inputs[level] = image
        image = stylize_tile(image, model_set.encoders[level], model_set.decoders[level], style[level], alpha=1.0)
    return inputs


def test_merged_tile_statistics_equal_the_whole_image_statistics(model_set, style, content_dir):
    rgb = read_image(str(content_dir / "astronaut_512.jpg")).rgb[:480, :464]
    for level, image in _level_inputs(model_set, style, rgb).items():
        encoder = model_set.encoders[level]
        with torch.inference_mode():
            whole = feature_stats(encoder(image))
        canvas = MemoryCanvas(image[0].numpy().copy())
        geo = level_geometry(level, encoder.out_channels)
        tiles = plan_tiles(480, 464, tile=144)
        merged = merge_stats(tile_round_a(canvas, t, encoder, geo)[0] for t in tiles)
        assert merged.count == whole.count
        scale = np.abs(whole.covariance).max()
        np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-6, atol=1e-6 * np.abs(whole.mean).max())
        np.testing.assert_allclose(merged.covariance, whole.covariance, rtol=1e-6, atol=1e-6 * scale)


def _tiled_level(model_set, image, level, transform, geo, tile):
    encoder, decoder = model_set.encoders[level], model_set.decoders[level]
    canvas = MemoryCanvas(image[0].numpy().copy())
    h, w = canvas.height, canvas.width
    feats = MemoryCanvas(np.zeros((encoder.out_channels, h // geo.scale, w // geo.scale), np.float32))
    out = np.zeros((3, h, w), np.float32)
    for t in plan_tiles(h, w, tile=tile):
        feats.write(t.core.scaled(geo.scale), tile_round_a(canvas, t, encoder, geo)[1])
    for t in plan_tiles(h, w, tile=tile):
        f = feats if geo.cache_features else None
        out[(slice(None), *t.core.slices())] = tile_round_b(canvas, f, t, encoder, decoder, geo, transform)
    return out


@pytest.mark.parametrize("level", [5, 4, 3, 2])
def test_the_computed_halo_is_needed(model_set, style, content_dir, level):
    """Round B with the computed halo is exact; 16 px less visibly is not."""
    rgb = read_image(str(content_dir / "astronaut_512.jpg")).rgb[:384, :384]
    image = _level_inputs(model_set, style, rgb)[level]
    encoder, decoder = model_set.encoders[level], model_set.decoders[level]
    with torch.inference_mode():
        f = encoder(image)
    transform = whitening_coloring(feature_stats(f), style[level], alpha=1.0)
    with torch.inference_mode():
        from pipeline.wct import apply_transform

        reference = decoder(apply_transform(f, transform))[0].numpy()
    geo = level_geometry(level, encoder.out_channels)
    exact_error = np.abs(_tiled_level(model_set, image, level, transform, geo, tile=128) - reference).max()
    assert exact_error < 1e-5
    if geo.cache_features:
        short = dataclasses.replace(geo, decoder_halo=geo.decoder_halo - 16)
    else:
        short = dataclasses.replace(geo, halo=geo.halo - 16)
    cut_error = np.abs(_tiled_level(model_set, image, level, transform, short, tile=128) - reference).max()
    assert cut_error > 1e-4
    assert cut_error > 100 * exact_error


def test_thumbnail_mode_is_close_to_whole_but_not_exact(model_set, style, content_dir):
    from pipeline.tiled import stylize_thumbnail, thumbnail

    rgb = read_image(str(content_dir / "photo_mosaic_1024.jpg")).rgb[:768, :640]
    canvas = canvas_from_array(rgb, workdir=None)
    small = thumbnail(canvas, 768, 640, size=256)
    assert small.shape == (1, 3, 256, 213)
    np.testing.assert_allclose(small[0, :, 0, 0].numpy(), rgb[:3, :3].mean(axis=(0, 1)), atol=1e-6)
    whole = stylize_whole(to_tensor(rgb), style, model_set)[0].permute(1, 2, 0).numpy()
    # A thumbnail as large as the image has the image's statistics: one pass per tile is then exact.
    full = stylize_thumbnail(canvas, 768, 640, style, model_set, tile=256, thumbnail_size=768)
    assert psnr8(read_rgb(full, 768, 640), whole) >= 50
    # Statistics from a 3x smaller copy are only an approximation of the image's.
    approx = stylize_thumbnail(canvas, 768, 640, style, model_set, tile=256, thumbnail_size=256)
    assert psnr8(read_rgb(approx, 768, 640), whole) < 30
