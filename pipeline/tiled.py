"""The exact tiled cascade: tiling changes memory and parallelism, not the picture.

WCT's statistics are global to the image, so per level k = 5..1 the tiles take two rounds:

- round A: encode every tile's core grown by the encoder's halo, keep the core's features
  and their :class:`~pipeline.stats.FeatureStats`; merging those gives the whole image's
  statistics up to float rounding, and with them one :class:`~pipeline.wct.ColorTransform`;
- round B: transform and decode every tile with that one transform and write its core into
  the next level's canvas.

Halos come from :mod:`models.receptive`, so a core sees the same receptive field as in the
whole-image run. Round B reads back the features cached in round A where they are cheap to
keep (deep levels, few values per pixel) and re-encodes a larger region where they are not.
The per-tile functions (:func:`encode_core`, :func:`decode_core`) are what the Ray actors run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from models import decoder_halo, encoder_halo, level_halo
from pipeline.canvas import Canvas, open_canvas, reflect_pad_canvas
from pipeline.cascade import MIN_SIDE, LevelCallback, decode_transformed, encode, pad_to_multiple
from pipeline.models import ModelSet
from pipeline.stats import FeatureStats, feature_stats, merge_stats
from pipeline.tiles import Rect, Tile, canvas_size, plan_tiles
from pipeline.wct import ColorTransform, whitening_coloring

__all__ = [
    "FEATURE_CACHE_MAX",
    "LevelGeometry",
    "canvas_from_array",
    "decode_core",
    "encode_core",
    "level_geometry",
    "read_rgb",
    "stylize_exact",
    "stylize_thumbnail",
    "thumbnail",
    "tile_round_a",
    "tile_round_b",
]

# Round A's features are kept for round B when they cost at most this many float32 values per
# image pixel (levels 3..5 of the 16x models: 4, 2 and 0.5); below that, re-encoding is cheaper
# than storing (level 1: 24 values per pixel for an encoder of one conv).
FEATURE_CACHE_MAX = 4.0



@dataclass(frozen=True)
class LevelGeometry:
    """Scales and halos of one level.

    Attributes:
        level: 1..5.
        scale: image pixels per feature cell, ``2 ** (level - 1)``.
        encoder_halo: round A's halo (encoder reach, 16-aligned).
        decoder_halo: round B's halo on cached features (decoder reach, 16-aligned).
        halo: round B's halo when re-encoding (reach of encoder then decoder).
        cache_features: whether round B reads round A's features back.
    """

    level: int
    scale: int
    encoder_halo: int
    decoder_halo: int
    halo: int
    cache_features: bool


def level_geometry(level: int, channels: int) -> LevelGeometry:
    """Geometry of ``level`` for an encoder with ``channels`` output channels."""
    scale = 2 ** (level - 1)
    return LevelGeometry(
        level,
        scale,
        encoder_halo(level),
        decoder_halo(level),
        level_halo(level),
        channels / scale**2 <= FEATURE_CACHE_MAX,
    )


def encode_core(encoder: torch.nn.Module, region: torch.Tensor, core: Rect, scale: int) -> torch.Tensor:
    """Encode a tile region and return the features of its core.

    Args:
        encoder: encoder of the level.
        region: ``(1, 3, h, w)`` float32, the core grown by at least the encoder halo.
        core: the core in ``region``'s pixel coordinates (16-aligned).
        scale: pixels per feature cell of the level.

    Returns:
        ``(1, C, core.height / scale, core.width / scale)`` float32.
    """
    features = encode(encoder, region)
    return features[(..., *core.scaled(scale).slices())]


def decode_core(
    decoder: torch.nn.Module, features: torch.Tensor, transform: ColorTransform, core: Rect
) -> torch.Tensor:
    """Whiten-colour and decode a feature region, returning the core's pixels.

    Args:
        decoder: decoder of the level.
        features: ``(1, C, h, w)`` features of the core grown by at least the decoder halo.
        transform: the level's global transform.
        core: the core in the region's pixel coordinates.

    Returns:
        ``(1, 3, core.height, core.width)`` float32.
    """
    return decode_transformed(decoder, features, transform)[(..., *core.slices())]


def canvas_from_array(rgb: np.ndarray, *, workdir: str | None, band: int = 256) -> Canvas:
    """Put an ``(H, W, 3)`` image (uint8, or float in [0, 1]) on a reflect-padded canvas.

    Rows are converted to float32 a band at a time and the padding is filled on the canvas,
    so neither a float nor a padded copy of the image ever exists whole.
    """
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"content image is {w}x{h}; the smallest side handled is {MIN_SIDE} px")
    scale = 255.0 if rgb.dtype == np.uint8 else 1.0
    canvas = open_canvas(3, *canvas_size(h, w), workdir=workdir, name="input")
    for y in range(0, h, band):
        rows = rgb[y : y + band].astype(np.float32) / scale
        canvas.write(Rect(y, 0, y + rows.shape[0], w), rows.transpose(2, 0, 1))
    reflect_pad_canvas(canvas, h, w)
    return canvas


def read_rgb(canvas: Canvas, height: int, width: int) -> np.ndarray:
    """The image part of an output canvas as ``(H, W, 3)`` float32 clamped to [0, 1]."""
    return np.clip(canvas.read(Rect(0, 0, height, width)).transpose(1, 2, 0), 0, 1)


def tile_round_a(
    canvas: Canvas, tile: Tile, encoder: torch.nn.Module, geo: LevelGeometry
) -> tuple[FeatureStats, np.ndarray]:
    """Round A for one tile: the core's feature statistics and its ``(C, h, w)`` features.

    ``canvas`` needs to hold the core grown by ``geo.encoder_halo`` (clipped to the canvas).
    """
    bounds = Rect(0, 0, canvas.height, canvas.width)
    region = tile.core.grow(geo.encoder_halo, bounds)
    x = torch.from_numpy(canvas.read(region))[None]
    f = encode_core(encoder, x, tile.core.relative_to(region), geo.scale)
    return feature_stats(f), f[0].cpu().numpy()


def tile_round_b(
    canvas: Canvas,
    features: Canvas | None,
    tile: Tile,
    encoder: torch.nn.Module,
    decoder: torch.nn.Module,
    geo: LevelGeometry,
    transform: ColorTransform,
) -> np.ndarray:
    """Round B for one tile: the core's ``(3, h, w)`` pixels for the next level.

    With cached ``features`` (a canvas at the level's scale holding the core grown by
    ``geo.decoder_halo``), they are transformed and decoded; without, ``canvas`` must hold
    the core grown by ``geo.halo`` and is encoded again.
    """
    bounds = Rect(0, 0, canvas.height, canvas.width)
    device = next(decoder.parameters()).device
    if features is not None:
        region = tile.core.grow(geo.decoder_halo, bounds)
        f = torch.from_numpy(features.read(region.scaled(geo.scale)))[None].to(device)
    else:
        region = tile.core.grow(geo.halo, bounds)
        f = encode(encoder, torch.from_numpy(canvas.read(region))[None])
    y = decode_core(decoder, f, transform, tile.core.relative_to(region))
    return y[0].cpu().numpy()


def _decode_level(
    image: Canvas,
    features: Canvas | None,
    tiles: list[Tile],
    encoder: torch.nn.Module,
    decoder: torch.nn.Module,
    geo: LevelGeometry,
    transform: ColorTransform,
    workdir: str | None,
) -> Canvas:
    """Round B over every tile, into a new canvas: the next level's input."""
    out = open_canvas(3, image.height, image.width, workdir=workdir, name=f"level{geo.level}")
    for t in tiles:
        out.write(t.core, tile_round_b(image, features, t, encoder, decoder, geo, transform))
    return out


def stylize_exact(
    canvas: Canvas,
    style_stats: dict[int, FeatureStats],
    models: ModelSet,
    *,
    tile: int = 1024,
    alpha: float = 1.0,
    workdir: str | None = None,
    on_level: LevelCallback | None = None,
) -> Canvas:
    """Run levels 5..1 tile by tile with global statistics.

    Args:
        canvas: the reflect-padded input (see :func:`canvas_from_array`); not modified.
        style_stats: from :func:`pipeline.cascade.style_statistics` with the same ``models``.
        models: the loaded encoders/decoders.
        tile: core side in pixels (multiple of 16). Peak memory grows with its square.
        alpha: style strength in [0, 1].
        workdir: folder for disk canvases (intermediate images and cached features), or
            ``None`` to keep them in memory.
        on_level: called as ``on_level(level, seconds)`` after each level.

    Returns:
        The output canvas (same size as ``canvas``); crop it to the image with
        :func:`read_rgb`. Equal to :func:`pipeline.cascade.stylize_whole` up to float rounding.
    """
    tiles = plan_tiles(canvas.height, canvas.width, tile=tile)
    image = canvas
    for level in models.levels:
        start = time.perf_counter()
        encoder = models.encoders[level]
        geo = level_geometry(level, encoder.out_channels)
        features = None
        if geo.cache_features:
            features = open_canvas(
                encoder.out_channels,
                canvas.height // geo.scale,
                canvas.width // geo.scale,
                workdir=workdir,
                name=f"features{level}",
            )
        stats = []
        for t in tiles:
            tile_stats, core_features = tile_round_a(image, t, encoder, geo)
            stats.append(tile_stats)
            if features is not None:
                features.write(t.core.scaled(geo.scale), core_features)
        transform = whitening_coloring(merge_stats(stats), style_stats[level], alpha=alpha)
        out = _decode_level(image, features, tiles, encoder, models.decoders[level], geo, transform, workdir)
        if features is not None:
            features.close()
        if image is not canvas:
            image.close()
        image = out
        if on_level is not None:
            on_level(level, time.perf_counter() - start)
    return image


def thumbnail(canvas: Canvas, height: int, width: int, *, size: int = 1024, band_blocks: int = 64) -> torch.Tensor:
    """Box-filtered copy of the image part of ``canvas`` with its longer side at most ``size``.

    Rows are averaged a band of blocks at a time, so the full-resolution image is never read
    whole. Returns ``(1, 3, h, w)`` float32.
    """
    factor = max(1, -(-max(height, width) // size))
    th, tw = height // factor, width // factor
    rows = []
    for by in range(0, th, band_blocks):
        n = min(band_blocks, th - by)
        block = canvas.read(Rect(by * factor, 0, (by + n) * factor, tw * factor))
        rows.append(block.reshape(3, n, factor, tw, factor).mean(axis=(2, 4)))
    return torch.from_numpy(np.concatenate(rows, axis=1))[None]


def stylize_thumbnail(
    canvas: Canvas,
    height: int,
    width: int,
    style_stats: dict[int, FeatureStats],
    models: ModelSet,
    *,
    tile: int = 1024,
    alpha: float = 1.0,
    thumbnail_size: int = 1024,
    workdir: str | None = None,
    on_level: LevelCallback | None = None,
) -> Canvas:
    """Approximate tiled cascade: each level's content statistics from a downscaled copy.

    The thumbnail runs the whole-image cascade alongside; its per-level statistics stand in
    for the full image's, so every tile is encoded, transformed and decoded in one pass (no
    round A). Faster than :func:`stylize_exact` by the cost of round A, but the result differs
    from the whole-image one by however much the thumbnail's statistics differ (the README
    gives the figures).
    """
    tiles = plan_tiles(canvas.height, canvas.width, tile=tile)
    small = pad_to_multiple(thumbnail(canvas, height, width, size=thumbnail_size)).to(models.device)
    image = canvas
    for level in models.levels:
        start = time.perf_counter()
        encoder, decoder = models.encoders[level], models.decoders[level]
        small_features = encode(encoder, small)
        transform = whitening_coloring(feature_stats(small_features), style_stats[level], alpha=alpha)
        small = decode_transformed(decoder, small_features, transform)
        geo = level_geometry(level, encoder.out_channels)
        out = _decode_level(image, None, tiles, encoder, decoder, geo, transform, workdir)
        if image is not canvas:
            image.close()
        image = out
        if on_level is not None:
            on_level(level, time.perf_counter() - start)
    return image
