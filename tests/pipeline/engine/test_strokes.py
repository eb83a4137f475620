"""Stroke scale: S = 1 is the plain cascade bit for bit, the tiled chain equals the whole-image
one (torch's pooling and bicubic) with every control, and ``auto`` picks S from the size."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.bench import psnr8
from pipeline.engine.cascade import style_statistics
from pipeline.engine.controls import style_levels
from pipeline.engine.runner import LoadedImage, stylize_image, to_tensor
from pipeline.engine.strokes import STROKE_REFERENCE, resolve_stroke_scale, stroke_tile_rounds
from pipeline.engine.tiled import canvas_from_array, read_rgb, stylize_exact
from pipeline.imaging.canvas import MemoryCanvas
from pipeline.imaging.imageio import read_image
from pipeline.imaging.tiles import canvas_size, plan_tiles
from pipeline.options import OptionError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def style(model_set, style_dir):
    return style_statistics(to_tensor(read_image(str(style_dir / "strokes_512.jpg")).rgb[:256, :256]), model_set)


@pytest.fixture(scope="module")
def photo(content_dir) -> np.ndarray:
    """333 x 517 of the photo mosaic: sides that are not multiples of 16 or of the stroke scale."""
    return read_image(str(content_dir / "photo_mosaic_1024.jpg")).rgb[:333, :517]


def test_resolve_the_stroke_scale():
    for bad in ("0", "-2", "1.5", "two", "", 0):
        with pytest.raises(OptionError, match=r"^stroke_scale must be a positive integer or 'auto'"):
            resolve_stroke_scale(bad, 100, 100)
    assert resolve_stroke_scale("auto", 8000, 12000) == round(12000 / STROKE_REFERENCE) == 12
    assert resolve_stroke_scale("auto", 2160, 3840) == 4
    assert resolve_stroke_scale("auto", 1024, 1536) == 2 and resolve_stroke_scale("auto", 1024, 1535) == 1
    assert resolve_stroke_scale("auto", 2000, 2560) == 3  # halves round up
    assert resolve_stroke_scale("auto", 300, 200) == 1
    assert resolve_stroke_scale("auto", 64, 60000) == 2  # the shrunk image keeps 32 px a side
    assert resolve_stroke_scale(1, 40, 40) == 1 and resolve_stroke_scale(3, 96, 500) == 3
    with pytest.raises(OptionError, match=r"^stroke_scale 4 shrinks the 500x100 image to 125x25"):
        resolve_stroke_scale(4, 100, 500)


def test_stroke_scale_1_and_auto_on_a_small_image_are_the_plain_cascade_bit_for_bit(model_set, style, photo):
    rgb = photo[:200, :300]
    plain = read_rgb(stylize_exact(canvas_from_array(rgb, workdir=None), style, model_set, tile=160), 200, 300)
    for scale in (1, "auto"):
        canvas, report = stylize_image(LoadedImage(rgb), style, model_set, mode="exact", tile=160,
                                       stroke_scale=scale)
        assert report.stroke_scale == 1
        np.testing.assert_array_equal(read_rgb(canvas, 200, 300), plain)


@pytest.mark.parametrize("controls", ["none", "mask+colour"])
def test_tiled_stroke_scale_equals_the_whole_image_chain(model_set, style, photo, controls, tmp_path):
    scale = 4
    kwargs: dict = {}
    styles = style
    if controls != "none":
        labels = np.zeros(canvas_size(333, 517), np.float32)
        labels[:, 200:] = 1
        labels[150:, 400:] = 0
        kwargs = {"mask": MemoryCanvas(labels[None]), "preserve_color": True}
        styles = style_levels([style, {k: s for k, s in style.items()}], masked=True)
    whole, report = stylize_image(LoadedImage(photo), styles, model_set, mode="whole", stroke_scale=scale, **kwargs)
    assert report.stroke_scale == scale
    ticks: list[int] = []
    tiled, report = stylize_image(LoadedImage(photo), styles, model_set, mode="exact", tile=160, stroke_scale=scale,
                                  workdir=str(tmp_path), on_tile=ticks.append, **kwargs)
    a, b = read_rgb(whole, 333, 517), read_rgb(tiled, 333, 517)
    assert psnr8(a, b) >= 50 and np.abs(a - b).max() < 1e-3
    assert sum(ticks) == stroke_tile_rounds(333, 517, tile=160, levels=5, scale=scale, exact=True)
    assert report.seconds["coarse"] > 0 and report.seconds["band_split"] > 0
    # and it is another picture than the plain one
    plain, _ = stylize_image(LoadedImage(photo), styles, model_set, mode="whole", **kwargs)
    assert psnr8(read_rgb(plain, 333, 517), a) < 30
    assert len(plan_tiles(333, 517, tile=160)) > 1 and len(plan_tiles(333 // scale, 517 // scale, tile=160)) == 1
