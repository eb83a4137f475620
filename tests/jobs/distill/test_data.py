"""jobs/distill/data.py: training images, the held-out split and crops (no Ray needed)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jobs.distill.data import decode_for_crops, list_images, random_crops, split_holdout
from pipeline.imaging.imageio import ImageError


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
