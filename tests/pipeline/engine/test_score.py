"""The quality score against independent float64 computations, on real photos and the real encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.engine.runner import load_style, to_tensor
from pipeline.engine.score import content_distance, crop_rects, gram_distance, mean_gradient, score_image
from pipeline.imaging.imageio import ImageError, read_image
from pipeline.imaging.tiles import Rect


def _gram64(encoder: torch.nn.Module, image: torch.Tensor) -> np.ndarray:
    """``F F^T / N`` in float64 numpy from the encoder's raw output (no engine code in between)."""
    with torch.no_grad():
        features = encoder(image.contiguous()).double().numpy()[0]
    flat = features.reshape(features.shape[0], -1)
    return flat @ flat.T / flat.shape[1]


def test_gram_distance_is_the_float64_formula(model_set, content_dir, style_dir, one_torch_thread):
    image = to_tensor(read_image(str(content_dir / "astronaut_512.jpg")).rgb)
    image = F.interpolate(image, size=(200, 180), mode="bilinear", antialias=True, align_corners=False)
    style_uri = str(style_dir / "strokes_591x800.jpg")
    style = load_style(style_uri, model_set, style_size=300)
    style_image = to_tensor(read_image(style_uri).rgb)
    style_image = F.interpolate(style_image, size=(300, round(591 * 300 / 800)), mode="bilinear", antialias=True,
                                align_corners=False)
    want = []
    for level in range(1, 6):
        encoder = model_set.encoders[level]
        g_image, g_style = _gram64(encoder, image), _gram64(encoder, style_image)
        want.append(np.linalg.norm(g_image - g_style) / np.linalg.norm(g_style))
    got = gram_distance(image, style, model_set)
    assert got == pytest.approx(float(np.mean(want)), rel=1e-5)
    assert 0.05 < got < 5
    assert gram_distance(style_image, style, model_set) < 1e-5  # the style is at distance 0 from itself


def test_detail_is_the_mean_gradient_of_the_luma():
    photo = np.random.default_rng(0).uniform(0, 1, (64, 80, 3)).astype(np.float32)
    assert mean_gradient(np.full((20, 30, 3), 0.3, np.float32)) == 0
    ramp = np.repeat(np.linspace(0, 1, 101, dtype=np.float32)[None, :, None], 50, axis=0).repeat(3, axis=2)
    assert mean_gradient(ramp) == pytest.approx(0.01, rel=1e-4)  # one level per px, along x only
    assert mean_gradient(photo) > 0.3


def test_content_distance_is_relative_level_4_distance(model_set):
    rng = np.random.default_rng(1)
    content = to_tensor(rng.uniform(0, 1, (96, 96, 3)).astype(np.float32))
    other = to_tensor(rng.uniform(0, 1, (96, 96, 3)).astype(np.float32))
    assert content_distance(content, content, model_set) == 0
    with torch.no_grad():
        a = model_set.encoders[4](other.contiguous()).double()
        b = model_set.encoders[4](content.contiguous()).double()
    want = float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))
    assert content_distance(other, content, model_set) == pytest.approx(want, rel=1e-6)


def test_crops_are_inside_distinct_and_centred():
    assert crop_rects(8000, 12000, 1024)[0].y0 == 4000 - 512 and len(crop_rects(8000, 12000, 1024)) == 5
    for height, width in [(8000, 12000), (600, 900), (300, 200)]:
        rects = crop_rects(height, width, 512)
        assert len(set(rects)) == len(rects)
        for r in rects:
            assert 0 <= r.y0 < r.y1 <= height and 0 <= r.x0 < r.x1 <= width
            assert (r.height, r.width) == (min(512, height), min(512, width))
    assert len(crop_rects(300, 200, 512)) == 1


def test_score_image_from_files(model_set, content_dir, style_dir, tmp_path, one_torch_thread):
    photo = Image.open(content_dir / "astronaut_512.jpg").convert("RGB").crop((0, 0, 512, 384))
    path = tmp_path / "picture.png"
    photo.save(path)
    style_uri = str(style_dir / "strokes_512.jpg")
    style = load_style(style_uri, model_set, style_size=128)
    score = score_image(str(path), style_uri, model_set, view=128, style_size=128, content_uri=str(path))
    assert score.view == 128 and len(score.crops) == 5 and all(r.width == 128 for r in score.crops)
    assert score.content_view == 0 and score.content_crops == 0
    pixels = np.asarray(photo, np.float32) / 255
    crops = [to_tensor(pixels[r.y0 : r.y1, r.x0 : r.x1]) for r in score.crops]
    assert score.style_crops == pytest.approx(np.mean([gram_distance(c, style, model_set) for c in crops]), rel=1e-9)
    assert score.detail == pytest.approx(np.mean([mean_gradient(pixels[r.y0 : r.y1, r.x0 : r.x1])
                                                  for r in score.crops]), rel=1e-6)
    # seen at its own size the picture is not resampled: the view is the picture
    whole = score_image(str(path), style_uri, model_set, view=512, style_size=128)
    assert whole.style_view == pytest.approx(gram_distance(to_tensor(pixels), style, model_set), rel=1e-9)
    assert whole.crops == (Rect(0, 0, 384, 512),) and whole.style_crops == whole.style_view
    # another size of content: distance at viewing size only
    photo.resize((256, 192)).save(tmp_path / "small.png")
    other = score_image(str(path), style_uri, model_set, view=128, style_size=128,
                        content_uri=str(tmp_path / "small.png"))
    assert 0 < other.content_view < 0.2 and other.content_crops is None
    photo.resize((1000, 40)).save(tmp_path / "thin.png")
    with pytest.raises(ImageError, match="under 32 px a side"):
        score_image(str(tmp_path / "thin.png"), style_uri, model_set, view=128)
