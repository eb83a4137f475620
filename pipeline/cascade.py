"""The whole-image WCT cascade: the reference every tiled run is measured against.

The image is padded by reflection to a multiple of 16 (four 2x2 max-pools before relu5_1),
levels 5..1 each encode, whiten-colour with the image's own global statistics and decode, and
the result is cropped back to the input size.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.receptive import HALO_ALIGN
from pipeline.models import ModelSet
from pipeline.stats import FeatureStats, feature_stats
from pipeline.wct import ColorTransform, apply_transform, whitening_coloring

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
        float32 features whatever the encoder's dtype (:mod:`pipeline.precision`): statistics,
        caches and canvases never see bf16/fp16 values.
    """
    with torch.inference_mode():
        return encoder(_model_input(encoder, image)).float()


def decode_transformed(decoder: torch.nn.Module, features: torch.Tensor, transform: ColorTransform) -> torch.Tensor:
    """Whiten-colour ``features`` with ``transform`` (in float32) and decode them to float32 ``(N, 3, H, W)``."""
    with torch.inference_mode():
        return decoder(_model_input(decoder, apply_transform(features, transform))).float()


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
    style_stats: FeatureStats,
    *,
    alpha: float,
    content_stats: FeatureStats | None = None,
) -> torch.Tensor:
    """One level of WCT on one tile.

    Args:
        tile: ``(1, 3, H, W)`` float32, H and W multiples of 16.
        encoder, decoder: the level's pair.
        style_stats: the style's statistics at this level.
        alpha: style strength in [0, 1].
        content_stats: global content statistics; ``None`` uses the tile's own, which is the
            whole-image transform when the tile is the whole image.

    Returns:
        ``(1, 3, H, W)`` float32 on the models' device.
    """
    features = encode(encoder, tile)
    stats = content_stats if content_stats is not None else feature_stats(features)
    return decode_transformed(decoder, features, whitening_coloring(stats, style_stats, alpha=alpha))


def stylize_whole(
    content: torch.Tensor,
    style_stats: dict[int, FeatureStats],
    models: ModelSet,
    *,
    alpha: float = 1.0,
    on_level: LevelCallback | None = None,
) -> torch.Tensor:
    """Stylize a whole image in memory with levels 5..1.

    Args:
        content: ``(1, 3, H, W)`` float32 RGB in [0, 1], both sides >= 32.
        style_stats: from :func:`style_statistics` with the same ``models``.
        models: the loaded encoders/decoders.
        alpha: style strength in [0, 1].
        on_level: called as ``on_level(level, seconds)`` after each level.

    Returns:
        ``(1, 3, H, W)`` float32 on the CPU, clamped to [0, 1].
    """
    _check_size(content, "content image")
    h, w = content.shape[-2:]
    image = pad_to_multiple(content).to(models.device)
    for level in models.levels:
        start = time.perf_counter()
        image = stylize_tile(
            image, models.encoders[level], models.decoders[level], style_stats[level], alpha=alpha
        )
        if on_level is not None:
            on_level(level, time.perf_counter() - start)
    return image[..., :h, :w].clamp(0, 1).cpu()
