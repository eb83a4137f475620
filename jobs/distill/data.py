"""The distillation job's images: listing, the held-out split, crops, and the Ray Data pipeline.

Everything but :func:`training_dataset` is plain Python on numpy/Pillow/torch, so it runs
in-process and in tests; :func:`training_dataset` wires the same functions into Ray Data.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import ray
import torch
import torch.nn.functional as F
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, ImageOps, UnidentifiedImageError
from pyarrow.fs import FileSystem, FSSpecHandler, PyFileSystem

from pipeline.imaging.imageio import ImageError, read_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "arrow_fs",
    "decode_for_crops",
    "list_images",
    "load_eval_images",
    "random_crops",
    "split_holdout",
    "training_dataset",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")


def list_images(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Every image file under ``uri`` (recursively), as sorted full URIs.

    Raises:
        FileNotFoundError: ``uri`` holds no file with one of :data:`IMAGE_EXTENSIONS`.
    """
    fs, path = url_to_fs(uri, **(storage_options or {}))
    found = [path] if fs.isfile(path) else fs.find(path)
    files = sorted(p for p in found if p.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(uri)
    return [fs.unstrip_protocol(p) if "://" in uri else p for p in files]


def split_holdout(uris: Sequence[str], *, every: int) -> tuple[list[str], list[str]]:
    """Split image URIs into (training, held-out), holding out one in ``every``.

    The held-out images are those whose file name has the smallest sha256, so the split
    depends on the file names alone, not on the listing order or the prefix they live under.

    Raises:
        ValueError: fewer than two images, or ``every`` < 2.
    """
    if every < 2:
        raise ValueError(f"every must be >= 2, got {every}")
    if len(uris) < 2:
        raise ValueError(f"need at least two images to hold one out, got {len(uris)}")
    ranked = sorted(uris, key=lambda u: hashlib.sha256(u.rsplit("/", 1)[-1].encode()).hexdigest())
    held = set(ranked[: max(1, len(uris) // every)])
    return [u for u in uris if u not in held], [u for u in uris if u in held]


def decode_for_crops(data: bytes, *, side: int) -> np.ndarray:
    """Decode image bytes to RGB with the shorter side resized to ``side``, aspect kept.

    Runs once per training image per epoch, so it asks JPEG for a reduced decode (Pillow's
    ``draft``) before resizing: crops of a 4K photo at 128 px would show texture rather than
    scenes, and a full decode would cost more than the training step. EXIF orientation is
    applied and grey, palette and CMYK images become RGB.

    Returns:
        ``(H, W, 3)`` uint8 with ``min(H, W) == side``.

    Raises:
        ImageError: the bytes are not an image Pillow can decode.
    """
    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (side, side))
        img = ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"training image is not decodable: {e}") from e
    w, h = img.size
    scale = side / min(w, h)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    if size != (w, h):
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(img)


def random_crops(image: np.ndarray, *, size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random crops of ``image`` at random scales, resized to ``size``, randomly flipped.

    Each crop's side is drawn from ``[size, min(H, W)]`` (a zoom of 1x up to the whole short
    side), so with images decoded at ``2 * size`` the network sees scales 1x..2x.

    Args:
        image: ``(H, W, 3)`` uint8 with ``min(H, W) >= size``.
        size: output side in pixels.
        count: crops to cut.
        rng: source of randomness (a fresh generator per call gives new crops every epoch).

    Returns:
        ``(count, 3, size, size)`` float32 RGB in [0, 1].
    """
    h, w = image.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"image is {w}x{h}, smaller than the crop size {size}")
    pil = Image.fromarray(image)
    out = np.empty((count, 3, size, size), dtype=np.float32)
    for i in range(count):
        side = int(rng.integers(size, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = pil.crop((left, top, left + side, top + side))
        if side != size:
            crop = crop.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(crop, dtype=np.float32) / 255.0
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out[i] = arr.transpose(2, 0, 1)
    return out


def load_eval_images(
    uris: Sequence[str], *, side: int, storage_options: dict[str, Any] | None = None
) -> list[torch.Tensor]:
    """Held-out images, shorter side resized to ``side`` and centre-cropped to multiples of 16.

    Returns:
        One ``(1, 3, H, W)`` float32 tensor in [0, 1] per URI, H and W multiples of 16.
    """
    images = []
    for uri in uris:
        x = torch.from_numpy(read_image(uri, storage_options).rgb).permute(2, 0, 1)[None]
        h, w = x.shape[-2:]
        scale = side / min(h, w)
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
        h, w = x.shape[-2:]
        top, left = (h % 16) // 2, (w % 16) // 2
        images.append(x[..., top : top + h - h % 16, left : left + w - w % 16].clamp(0, 1).contiguous())
    return images


# ---------------------------------------------------------------------------- Ray Data


def arrow_fs(uri: str, storage_options: dict[str, Any] | None) -> tuple[str, FileSystem | None]:
    """(path, filesystem) for pyarrow users (Ray Train storage, Ray Data): local paths go as they
    are; any other fsspec URI goes through the same fsspec filesystem and options as everything else."""
    fs, path = url_to_fs(uri, **(storage_options or {}))
    if isinstance(fs, LocalFileSystem):
        return os.path.abspath(path), None
    return path, PyFileSystem(FSSpecHandler(fs))


def _decode_row(row: dict[str, Any], *, side: int) -> dict[str, Any]:
    return {"image": decode_for_crops(row["bytes"], side=side)}


def _crop_row(row: dict[str, Any], *, size: int, count: int) -> list[dict[str, Any]]:
    crops = random_crops(row["image"], size=size, count=count, rng=np.random.default_rng())
    return [{"image": crop} for crop in crops]


def training_dataset(
    uris: Sequence[str], *, image_size: int, crops_per_image: int, storage_options: dict[str, Any] | None
) -> ray.data.Dataset:
    """Ray Data pipeline: read bytes, decode at twice the crop size, cut random crops.

    Returns:
        A dataset of ``{"image": (3, image_size, image_size) float32 in [0, 1]}`` rows,
        ``crops_per_image`` per image per epoch.
    """
    paths = []
    filesystem = None
    for uri in uris:
        path, filesystem = arrow_fs(uri, storage_options)
        paths.append(path)
    ds = ray.data.read_binary_files(paths, filesystem=filesystem)
    ds.context.print_on_execution_start = False  # this dataset's own context: no lines every epoch
    ds.context.enable_progress_bars = False
    ds = ds.map(partial(_decode_row, side=2 * image_size))
    return ds.flat_map(partial(_crop_row, size=image_size, count=crops_per_image))
