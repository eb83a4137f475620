"""Training images, teachers, promotion and figures of the distillation job, without Ray."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from models import CD16X, VGG19
from pipeline.distill_data import (
    Teacher,
    decode_for_crops,
    list_images,
    random_crops,
    render_loss_curves,
    render_reconstructions,
    should_promote,
    split_holdout,
)
from pipeline.imageio import ImageError


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_list_images_is_recursive_sorted_and_skips_other_files(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.png", "1.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert list_images(str(tmp_path)) == [str(tmp_path / "1.JPG"), str(tmp_path / "b/2.png")]
    with pytest.raises(FileNotFoundError):
        list_images(str(tmp_path / "b" / "missing"))


def _names(uris: list[str]) -> set[str]:
    return {u.rsplit("/", 1)[1] for u in uris}


def test_holdout_depends_on_names_only():
    uris = [f"s3://bucket/{i:03d}.jpg" for i in range(12)]
    train, held = split_holdout(uris, every=5)
    assert len(held) == 2 and sorted(train + held) == uris and not set(train) & set(held)
    moved = [u.replace("s3://bucket/", "/data/other/") for u in reversed(uris)]
    assert _names(split_holdout(moved, every=5)[1]) == _names(held)
    assert len(split_holdout(uris[:2], every=5)[1]) == 1  # always one held out
    with pytest.raises(ValueError, match="two images"):
        split_holdout(uris[:1], every=5)


def test_decode_for_crops_fits_the_short_side():
    assert decode_for_crops(_jpeg(400, 300), side=128).shape == (128, 171, 3)
    assert decode_for_crops(_jpeg(100, 60), side=128).shape == (128, 213, 3)  # upscaled
    with pytest.raises(ImageError):
        decode_for_crops(b"not an image", side=64)


def test_random_crops_cover_scales_and_flips():
    image = np.zeros((128, 160, 3), dtype=np.uint8)
    image[:, :80] = 255  # left half white: a flip or a shift changes the crop
    crops = random_crops(image, size=64, count=32, rng=np.random.default_rng(1))
    assert crops.shape == (32, 3, 64, 64) and crops.dtype == np.float32
    assert crops.min() >= 0 and crops.max() <= 1
    assert len({crops[i].tobytes() for i in range(32)}) > 16
    with pytest.raises(ValueError, match="smaller"):
        random_crops(image, size=256, count=1, rng=np.random.default_rng())


def test_teacher_sources(weights_dir):
    assert Teacher("torchvision-vgg19").is_vgg19 and Teacher("torchvision-vgg19:random").is_vgg19
    assert not Teacher(str(weights_dir)).is_vgg19
    assert Teacher("torchvision-vgg19:random").family() == VGG19
    assert not Teacher("torchvision-vgg19").has_decoder(1)
    official = Teacher(str(weights_dir))
    assert official.family() == CD16X and official.has_decoder(5)
    with pytest.raises(ValueError, match="expected"):
        Teacher("torchvision-vgg19:imagenet").encoder(1)


def test_random_vgg19_teacher_is_the_same_for_the_same_seed():
    a, b = Teacher("torchvision-vgg19:random", seed=3), Teacher("torchvision-vgg19:random", seed=3)
    torch.testing.assert_close(a.encoder(1).conv11.weight, b.encoder(1).conv11.weight)


def test_promotion_rule():
    assert should_promote({1: 20.0}, None)
    assert should_promote({1: 20.0, 2: 18.0}, {1: 19.0, 2: 19.0})  # mean 19 >= 19
    assert not should_promote({1: 20.0, 2: 17.9}, {1: 19.0, 2: 19.0})
    assert should_promote({1: 25.0}, {1: 25.0, 5: 40.0})  # only shared levels count
    assert not should_promote({2: 30.0}, {1: 10.0})


def test_figures_are_pngs():
    curves = {"L1 student encoder": [1.0, 0.5, 0.25], "L1 student decoder": [0.1, 0.1]}
    assert render_loss_curves(curves)[:4] == b"\x89PNG"
    tile = torch.rand(1, 3, 32, 48)
    png = render_reconstructions({"teacher": [("input", tile), ("L1", tile)], "student": [("input", tile)]})
    assert Image.open(io.BytesIO(png)).size == (96, 2 * (32 + 14))
