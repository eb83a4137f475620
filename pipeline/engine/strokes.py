"""Stroke scale: brush strokes ``S`` times larger, at the same output resolution.

WCT's strokes are as large as the encoders' receptive field in *pixels* (tens of px), so a
100-megapixel output is a painting at 1:1 zoom but, viewed whole on a screen, a tinted photo.
With ``--stroke-scale S`` the picture is made coarse to fine, in three stages:

1. the image shrunk by ``S`` (block means, :func:`~pipeline.imaging.resample.box_downscale`)
   goes through the cascade: its strokes, enlarged ``S`` times, are the ones seen when the
   whole picture is viewed;
2. the full-resolution image goes through the cascade as without stroke scale: its strokes are
   the ones seen at 1:1;
3. the band split (:func:`~pipeline.imaging.resample.band_split_tile`) keeps the low
   frequencies of the enlarged first result and the high frequencies of the second:
   ``F + up(C - down(F))``.

Stages 1 and 2 run through the one level loop (:func:`~pipeline.engine.tiled.run_levels`) with
the caller's executors, and stage 3 is local (each output pixel reads a few coarse pixels and
the blocks under them), so the chain is exact under tiling, in this process and on Ray, in
memory bounded by the tile. It costs the plain cascade plus one of ``1 / S**2`` its size plus
a cheap per-tile pass. ``S = 1`` is the plain cascade, untouched. ``auto`` picks ``S`` so that
the first stage sees the picture at about :data:`STROKE_REFERENCE` px on its longer side: the
look at viewing size then no longer depends on the resolution. docs/stroke-scale.md gives the
figures behind the scheme, the reference size and the default.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from pipeline.engine.cascade import MIN_SIDE, LevelCallback, pad_to_multiple, stylize_whole
from pipeline.engine.controls import StyleLevel, keep_chroma, label_count
from pipeline.engine.models import ModelSet
from pipeline.engine.tiled import (
    CanvasExecutor,
    ContentStats,
    LevelGeometry,
    TileCallback,
    TileExecutor,
    model_geometry,
    run_levels,
    thumbnail_stats,
    tile_rounds,
)
from pipeline.imaging.canvas import Canvas
from pipeline.imaging.resample import BandSplit, box_downscale, label_downscale
from pipeline.imaging.tiles import Tile, plan_tiles
from pipeline.options import AUTO_STROKE_SCALE, OptionError, StrokeScale, check_stroke_scale

__all__ = [
    "STROKE_REFERENCE",
    "StrokeExecutor",
    "resolve_stroke_scale",
    "run_strokes",
    "stroke_tile_rounds",
    "stylize_strokes",
    "stylize_whole_strokes",
]

# auto: the longer side, in px, at which the coarse stage sees the picture (S = this side / it,
# rounded). Chosen by the Gram distance at 1024 px of several references (docs/stroke-scale.md).
STROKE_REFERENCE = 1024


def resolve_stroke_scale(stroke_scale: StrokeScale, height: int, width: int) -> int:
    """The integer ``S`` for an ``height`` x ``width`` image.

    ``auto`` gives ``max(height, width) / STROKE_REFERENCE`` rounded half up (at least 1, so
    images under 1.5 times the reference are left as they are), kept small enough that the
    shrunk image has :data:`~pipeline.engine.cascade.MIN_SIDE` px a side.

    Raises:
        OptionError: not a positive integer or ``auto`` (:func:`~pipeline.options.check_stroke_scale`),
            or an ``S`` that shrinks the image below :data:`~pipeline.engine.cascade.MIN_SIDE`
            px a side (both name ``stroke_scale``).
    """
    scale = check_stroke_scale(stroke_scale)
    if scale == AUTO_STROKE_SCALE:
        return max(1, min(int(max(height, width) / STROKE_REFERENCE + 0.5), min(height, width) // MIN_SIDE))
    if scale > 1 and min(height, width) // scale < MIN_SIDE:
        raise OptionError("stroke_scale", f"{scale} shrinks the {width}x{height} image to "
                          f"{width // scale}x{height // scale}; the cascade needs {MIN_SIDE} px a side")
    return scale


class StrokeExecutor(TileExecutor, Protocol):
    """A :class:`~pipeline.engine.tiled.TileExecutor` that also runs the band split."""

    def band_split(self, coarse: StrokeExecutor, tiles: Sequence[Tile], split: BandSplit) -> None:
        """Replace this executor's image (the full-resolution result) with its band split with
        ``coarse``'s image (the shrunk image's result): the output."""
        ...


def run_strokes(
    full: StrokeExecutor,
    coarse: StrokeExecutor,
    tiles: Sequence[Tile],
    coarse_tiles: Sequence[Tile],
    geometry: Sequence[LevelGeometry],
    style_stats: Mapping[int, StyleLevel],
    *,
    split: BandSplit,
    alpha: float = 1.0,
    content_stats: tuple[ContentStats, ContentStats] | None = None,
    on_level: LevelCallback | None = None,
) -> dict[str, float]:
    """The stroke scale's three stages, wherever the tiles run.

    Args:
        full: holds the full-resolution image; holds the output afterwards.
        coarse: holds the image shrunk by ``split.factor``; its result is left in it.
        tiles, coarse_tiles: each image's tiles (:func:`~pipeline.imaging.tiles.plan_tiles`).
        geometry, style_stats, alpha: as for :func:`~pipeline.engine.tiled.run_levels`.
        split: the band split's geometry.
        content_stats: thumbnail mode's statistics of the coarse and the full image, or
            ``None`` for the exact round A.
        on_level: called after each level of the full-resolution stage.

    Returns:
        Seconds of the coarse stage (``coarse``), of the reductions between rounds of both
        cascades (``reduce``) and of the band split (``band_split``).
    """
    coarse_stats, full_stats = content_stats or (None, None)
    start = time.perf_counter()
    reduce = run_levels(coarse, coarse_tiles, geometry, style_stats, alpha=alpha, content_stats=coarse_stats,
                        output=False)
    middle = time.perf_counter()
    reduce += run_levels(full, tiles, geometry, style_stats, alpha=alpha, content_stats=full_stats,
                         on_level=on_level, output=False)
    end = time.perf_counter()
    full.band_split(coarse, tiles, split)
    return {"coarse": middle - start, "reduce": reduce, "band_split": time.perf_counter() - end}


def stroke_tile_rounds(height: int, width: int, *, tile: int, levels: int, scale: int, exact: bool) -> int:
    """Tile rounds of the whole chain (both cascades and the band split): what progress counts to."""
    full = len(plan_tiles(height, width, tile=tile))
    rounds = tile_rounds(full, levels, exact=exact)
    if scale == 1:
        return rounds
    coarse = len(plan_tiles(height // scale, width // scale, tile=tile))
    return rounds + tile_rounds(coarse, levels, exact=exact) + full


def stylize_strokes(
    canvas: Canvas,
    height: int,
    width: int,
    style_stats: Mapping[int, StyleLevel],
    models: ModelSet,
    *,
    scale: int,
    tile: int = 1024,
    alpha: float = 1.0,
    workdir: str | None = None,
    thumbnail_size: int | None = None,
    on_level: LevelCallback | None = None,
    on_tile: TileCallback | None = None,
    mask: Canvas | None = None,
    preserve_color: bool = False,
) -> tuple[Canvas, dict[str, float]]:
    """The tiled cascade at stroke scale ``scale`` (at least 2), in this process.

    Args:
        canvas: the reflect-padded input (:func:`~pipeline.engine.tiled.canvas_from_array`);
            read, never modified.
        height, width: the image size.
        style_stats, models, tile, alpha, workdir, on_tile, mask, preserve_color: as for
            :func:`~pipeline.engine.tiled.stylize_exact` (the mask is shrunk with the image).
        scale: the stroke scale ``S`` (:func:`resolve_stroke_scale`).
        thumbnail_size: thumbnail mode (each cascade's statistics from a copy of at most this
            many px); ``None``: exact.
        on_level: called after each level of the full-resolution cascade.

    Returns:
        ``(canvas, seconds)``: the output canvas (crop it to ``height`` x ``width``), equal to
        :func:`stylize_whole_strokes` up to float rounding in exact mode, and the seconds of
        :func:`run_strokes`.
    """
    split = BandSplit(height, width, scale)
    ch, cw = split.coarse_size
    labels = label_count(next(iter(style_stats.values())))
    small = box_downscale(canvas, height, width, scale, workdir=workdir)
    small_mask = coarse = full = None
    try:
        small_mask = None if mask is None else label_downscale(mask, height, width, scale, workdir=workdir)
        coarse = CanvasExecutor(small, models, workdir=workdir, on_tile=on_tile, mask=small_mask, labels=labels)
        full = CanvasExecutor(canvas, models, workdir=workdir, on_tile=on_tile, mask=mask, labels=labels,
                              preserve_color=preserve_color)
        stats = None
        if thumbnail_size is not None:
            stats = (
                thumbnail_stats(small, ch, cw, style_stats, models, alpha=alpha, mask=small_mask, size=thumbnail_size),
                thumbnail_stats(canvas, height, width, style_stats, models, alpha=alpha, mask=mask,
                                size=thumbnail_size),
            )
        seconds = run_strokes(full, coarse, plan_tiles(height, width, tile=tile), plan_tiles(ch, cw, tile=tile),
                              model_geometry(models), style_stats, split=split, alpha=alpha, content_stats=stats,
                              on_level=on_level)
    except BaseException:
        if full is not None:
            full.close()
        raise
    finally:
        if coarse is not None:
            coarse.close()
        small.close()
        if small_mask is not None:
            small_mask.close()
    return full.image, seconds


def stylize_whole_strokes(
    content: torch.Tensor,
    style_stats: Mapping[int, StyleLevel],
    models: ModelSet,
    *,
    scale: int,
    alpha: float = 1.0,
    on_level: LevelCallback | None = None,
    mask: torch.Tensor | None = None,
    preserve_color: bool = False,
) -> torch.Tensor:
    """The stroke scale on a whole image in memory, with torch's own resampling: the reference
    the tiled chain is measured against.

    The shrink is ``avg_pool2d`` over ``S`` x ``S`` blocks, the enlargement torch's bicubic
    ``interpolate`` with the scale factor ``S`` (on the residual padded by edge replication,
    which is what clamping the taps to the image means).

    Args:
        content: ``(1, 3, H, W)`` float32 in [0, 1], with ``H // scale`` and ``W // scale`` >= 32.
        style_stats, models, alpha, on_level, preserve_color: as for
            :func:`~pipeline.engine.cascade.stylize_whole` (``on_level``: the full-resolution cascade).
        scale: the stroke scale ``S`` (at least 2).
        mask: ``(H', W')`` labels of the reflect-padded image; the coarse cascade takes each
            ``S`` x ``S`` block's top-left label.

    Returns:
        ``(1, 3, H, W)`` float32 on the CPU, clamped to [0, 1].
    """
    h, w = content.shape[-2:]
    ch, cw = BandSplit(h, w, scale).coarse_size
    small = F.avg_pool2d(content[..., : ch * scale, : cw * scale], scale)
    small_mask = None
    if mask is not None:
        small_mask = pad_to_multiple(mask[None, None, : ch * scale : scale, : cw * scale : scale].float())[0, 0]
    coarse = stylize_whole(small, style_stats, models, alpha=alpha, mask=small_mask)
    full = stylize_whole(content, style_stats, models, alpha=alpha, on_level=on_level, mask=mask)
    residual = coarse - F.avg_pool2d(full[..., : ch * scale, : cw * scale], scale)
    low = F.interpolate(F.pad(residual, (0, 2, 0, 2), mode="replicate"), scale_factor=scale, mode="bicubic",
                        align_corners=False, recompute_scale_factor=False)
    out = (full + low[..., :h, :w]).clamp(0, 1)
    return keep_chroma(out, content) if preserve_color else out
