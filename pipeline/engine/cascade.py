"""The whole-image WCT cascade: the reference every tiled run is measured against.

The image is padded by reflection to a multiple of 16 (four 2x2 max-pools before relu5_1),
levels 5..1 each encode, whiten-colour with the image's own global statistics and decode, and
the result is cropped back to the input size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from models.receptive import HALO_ALIGN
from pipeline.engine.controls import StyleLevel, keep_chroma, label_count, level_transform, region_stats, sample_labels
from pipeline.engine.models import ModelSet
from pipeline.engine.stats import FeatureStats, TileStats, feature_stats
from pipeline.engine.wct import TransformSet, apply_transforms

__all__ = [
    "MIN_SIDE",
    "PAD_MULTIPLE",
    "decode_transformed",
    "encode",
    "pad_to_multiple",
    "style_statistics",
    "stylize_tile",
    "stylize_whole",
    "upload",
]

PAD_MULTIPLE = HALO_ALIGN  # four 2x2 max-pools before relu5_1
# Smallest side the level-5 encoder can pad by reflection after four max-pools (2 cells).
MIN_SIDE = 32

LevelCallback = Callable[[int, float], None]


def _check_size(image: torch.Tensor, what: str) -> None:
    h, w = image.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"{what} is {w}x{h}; the smallest side handled is {MIN_SIDE} px")


def pad_to_multiple(image: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Reflect-pad ``(1, 3, H, W)`` on the bottom and right to multiples of ``multiple``."""
    h, w = image.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return image
    return F.pad(image, (0, pw, 0, ph), mode="reflect")


def upload(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``. A CPU tensor bound for a GPU is staged in pinned memory and copied
    without blocking, so the host thread goes on to queue the kernels that read it."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _model_input(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on ``module``'s device, in its weights' dtype (the precision policy), channels-last."""
    weight = next(module.parameters())
    return upload(x, weight.device).to(weight.dtype, memory_format=torch.channels_last)


def encode(encoder: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Encoder forward on the encoder's device and in its dtype, channels-last, under ``inference_mode``.

    Returns:
        float32 features whatever the encoder's dtype (:mod:`pipeline.engine.precision`): statistics,
        caches and canvases never see bf16/fp16 values.
    """
    with torch.inference_mode():
        return encoder(_model_input(encoder, image)).float()


def decode_transformed(
    decoder: torch.nn.Module, features: torch.Tensor, transform: TransformSet, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Whiten-colour ``features`` with ``transform`` (in float32; per pixel by ``labels``, ``(H, W)``,
    when it is one per mask label) and decode them to float32 ``(N, 3, H, W)``."""
    with torch.inference_mode():
        return decoder(_model_input(decoder, apply_transforms(features, transform, labels))).float()


def style_statistics(style: torch.Tensor, models: ModelSet) -> dict[int, FeatureStats]:
    """Feature statistics of a style image at every level of ``models``, computed once per style.

    Args:
        style: ``(1, 3, H, W)`` float32 RGB in [0, 1]; any size with both sides >= 32.
    """
    _check_size(style, "style image")
    return {k: feature_stats(encode(models.encoders[k], style)) for k in models.levels}


def stylize_tile(
    tile: torch.Tensor,
    encoder: torch.nn.Module,
    decoder: torch.nn.Module,
    style_stats: StyleLevel,
    *,
    alpha: float,
    content_stats: TileStats | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One level of WCT on one tile.

    Args:
        tile: ``(1, 3, H, W)`` float32, H and W multiples of 16.
        encoder, decoder: the level's pair.
        style_stats: the style's statistics at this level, or a blend / one per mask label
            (:data:`pipeline.engine.controls.StyleLevel`).
        alpha: style strength in [0, 1].
        content_stats: global content statistics; ``None`` uses the tile's own, which is the
            whole-image transform when the tile is the whole image.
        mask: ``(H, W)`` labels at the tile's resolution, with one colouring per label.

    Returns:
        ``(1, 3, H, W)`` float32 on the models' device.
    """
    features = encode(encoder, tile)
    labels = None if mask is None else sample_labels(mask, tile.shape[-1] // features.shape[-1])
    stats = content_stats if content_stats is not None else region_stats(features, labels, label_count(style_stats))
    return decode_transformed(decoder, features, level_transform(stats, style_stats, alpha=alpha), labels)


def stylize_whole(
    content: torch.Tensor,
    style_stats: Mapping[int, StyleLevel],
    models: ModelSet,
    *,
    alpha: float = 1.0,
    on_level: LevelCallback | None = None,
    mask: torch.Tensor | None = None,
    preserve_color: bool = False,
) -> torch.Tensor:
    """Stylize a whole image in memory with levels 5..1.

    Args:
        content: ``(1, 3, H, W)`` float32 RGB in [0, 1], both sides >= 32.
        style_stats: from :func:`style_statistics` with the same ``models``, or per level a
            blend / one colouring per mask label (:func:`pipeline.engine.controls.style_levels`).
        models: the loaded encoders/decoders.
        alpha: style strength in [0, 1].
        on_level: called as ``on_level(level, seconds)`` after each level.
        mask: ``(H', W')`` labels of the reflect-padded image (sides rounded up to 16), with
            one colouring per label in ``style_stats``.
        preserve_color: keep the content's chroma (:func:`pipeline.engine.controls.keep_chroma`).

    Returns:
        ``(1, 3, H, W)`` float32 on the CPU, clamped to [0, 1].
    """
    _check_size(content, "content image")
    h, w = content.shape[-2:]
    image = pad_to_multiple(content).to(models.device)
    for level in models.levels:
        start = time.perf_counter()
        image = stylize_tile(
            image, models.encoders[level], models.decoders[level], style_stats[level], alpha=alpha, mask=mask
        )
        if on_level is not None:
            on_level(level, time.perf_counter() - start)
    out = image[..., :h, :w].clamp(0, 1).cpu()
    return keep_chroma(out, content) if preserve_color else out
