"""The quality score: how much a picture reads as its style, seen whole and seen at 1:1.

A stylized 100-megapixel picture can be a painting at 1:1 zoom and a tinted photo on a screen,
where it is seen whole. The score puts numbers on both, with the cascade's own encoders:

- **Gram distance** to the style: the mean over levels 1-5 of
  ``||G_img - G_style||_F / ||G_style||_F``, with ``G = F F^T / N`` the uncentred second moment
  of the level-k encoder's features ``F`` (``C x N``), as style losses compare textures. Lower
  reads more as the style. Measured on the picture shrunk to the viewing size (its longer side
  to ``view`` px, Lanczos, :func:`~pipeline.imaging.imageio.read_view`) and on 1:1 crops of
  ``view`` px (:func:`crop_rects`); the style is taken as the cascade takes it
  (:func:`~pipeline.engine.runner.load_style` at ``style_size``).
- **Detail**: the mean gradient magnitude of the luma (BT.601) on the 1:1 crops, in levels of
  [0, 1] per pixel: a blurred enlargement scores low.
- **Content distance** to the photo it was made from: ``||F4(img) - F4(content)||_F /
  ||F4(content)||_F`` at level 4 (the content layer of WCT-family losses), at viewing size
  (the content shrunk to the picture's view) and on the same crops when both have one size.

Only the view and the crops are decoded (a strip at a time), so a gigapixel picture is scored
in the memory of its crops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.engine.cascade import MIN_SIDE, encode
from pipeline.engine.controls import LUMA
from pipeline.engine.models import ModelSet
from pipeline.engine.runner import load_style, to_tensor
from pipeline.engine.stats import FeatureStats, feature_stats
from pipeline.imaging.imageio import DEFAULT_MAX_PIXELS, ImageError, image_size, read_crops, read_view
from pipeline.imaging.tiles import Rect

__all__ = [
    "CONTENT_LEVEL",
    "STYLE_SIZE",
    "VIEW_SIZE",
    "Score",
    "content_distance",
    "crop_rects",
    "gram_distance",
    "mean_gradient",
    "score_image",
]

# Longer side, in px, of the picture as seen whole on a screen.
VIEW_SIZE = 1024
# Longer side the style is compared at.
STYLE_SIZE = 512
# The encoder level whose features the content distance compares.
CONTENT_LEVEL = 4


@dataclass(frozen=True)
class Score:
    """What :func:`score_image` measured.

    Attributes:
        view: longer side of the viewing size (px).
        crops: the 1:1 crops' rectangles.
        style_view: Gram distance to the style at viewing size.
        style_crops: Gram distance to the style on the crops (their mean).
        detail: mean gradient magnitude of the crops' luma (their mean).
        content_view: content distance at viewing size (``None`` without a content image).
        content_crops: content distance on the crops (``None`` without a content image of
            the picture's size).
    """

    view: int
    crops: tuple[Rect, ...]
    style_view: float
    style_crops: float
    detail: float
    content_view: float | None = None
    content_crops: float | None = None


def gram_distance(image: torch.Tensor, style: Mapping[int, FeatureStats], models: ModelSet) -> float:
    """Mean over the levels of ``style`` of the relative Frobenius distance of the Gram matrices.

    Args:
        image: ``(1, 3, H, W)`` float32 in [0, 1].
        style: the style's statistics per level (:func:`~pipeline.engine.cascade.style_statistics`).
        models: the encoders.

    Returns:
        ``mean_k ||G_k(image) - G_k(style)||_F / ||G_k(style)||_F`` (float64 throughout).
    """
    distances = []
    for level, stats in sorted(style.items()):
        target = stats.gram
        found = feature_stats(encode(models.encoders[level], image)).gram
        distances.append(np.linalg.norm(found - target) / np.linalg.norm(target))
    return float(np.mean(distances))


def content_distance(
    image: torch.Tensor, content: torch.Tensor, models: ModelSet, *, level: int = CONTENT_LEVEL
) -> float:
    """``||F(image) - F(content)||_F / ||F(content)||_F`` for the level's encoder (same-size inputs)."""
    encoder = models.encoders[level]
    found = encode(encoder, image).double()
    target = encode(encoder, content).double()
    return float(torch.linalg.vector_norm(found - target) / torch.linalg.vector_norm(target))


def mean_gradient(rgb: np.ndarray) -> float:
    """Mean gradient magnitude (forward differences) of the luma of an ``(H, W, 3)`` image in [0, 1]."""
    luma = rgb.astype(np.float64) @ np.asarray(LUMA)
    dy, dx = np.diff(luma, axis=0)[:, :-1], np.diff(luma, axis=1)[:-1, :]
    return float(np.sqrt(dx * dx + dy * dy).mean())


def crop_rects(height: int, width: int, side: int) -> list[Rect]:
    """The 1:1 crops of an ``height`` x ``width`` picture: squares of ``side`` px (smaller when
    the picture is) centred on the middle and on the middle of each quarter, kept inside it,
    each counted once."""
    h, w = min(side, height), min(side, width)
    found: dict[Rect, None] = {}
    for cy, cx in ((0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)):
        y0 = min(max(0, round(cy * height - h / 2)), height - h)
        x0 = min(max(0, round(cx * width - w / 2)), width - w)
        found[Rect(y0, x0, y0 + h, x0 + w)] = None
    return list(found)


def score_image(
    uri: str,
    style_uri: str,
    models: ModelSet,
    *,
    view: int = VIEW_SIZE,
    style_size: int = STYLE_SIZE,
    content_uri: str | None = None,
    storage_options: dict[str, Any] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Score:
    """Score a picture against its style (and the content it was made from).

    Args:
        uri: the picture (any fsspec URI).
        style_uri: the style image.
        models: the encoders (levels 1-5).
        view: longer side of the viewing size, and side of the 1:1 crops (px).
        style_size: longer side the style is resized to.
        content_uri: the photo the picture was made from, or ``None``.
        storage_options: passed to the filesystems.
        max_pixels: refuse larger images before decoding them.

    Raises:
        ImageError: a file is missing, not an image, corrupt or too large, or the picture seen at
            ``view`` px is under 32 px a side.
    """
    width, height = image_size(uri, storage_options)
    style = load_style(style_uri, models, style_size=style_size, storage_options=storage_options,
                       max_pixels=max_pixels)
    seen = to_tensor(read_view(uri, view, storage_options, max_pixels=max_pixels))
    if min(seen.shape[-2:]) < MIN_SIDE:
        shown = "x".join(map(str, seen.shape[-1:-3:-1]))
        raise ImageError(f"{uri} is {width}x{height}: seen at {view} px ({shown}) it is under {MIN_SIDE} px a side")
    rects = crop_rects(height, width, view)
    crops = [to_tensor(c) for c in read_crops(uri, rects, storage_options, max_pixels=max_pixels)]
    content_view = content_crops = None
    if content_uri is not None:
        shape = tuple(seen.shape[-2:])
        photo = to_tensor(read_view(content_uri, view, storage_options, shape=shape, max_pixels=max_pixels))
        content_view = content_distance(seen, photo, models)
        if image_size(content_uri, storage_options) == (width, height):
            originals = read_crops(content_uri, rects, storage_options, max_pixels=max_pixels)
            content_crops = float(np.mean([content_distance(c, to_tensor(o), models)
                                           for c, o in zip(crops, originals, strict=True)]))
    return Score(
        view=view,
        crops=tuple(rects),
        style_view=gram_distance(seen, style, models),
        style_crops=float(np.mean([gram_distance(c, style, models) for c in crops])),
        detail=float(np.mean([mean_gradient(c[0].permute(1, 2, 0).numpy()) for c in crops])),
        content_view=content_view,
        content_crops=content_crops,
    )
