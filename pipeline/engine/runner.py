"""The in-process engine: one content image and one style, whole-image or exact tiled.

This is what ``ultrastyle stylize FILE`` and ``ultrastyle bench`` run, and what a Ray actor
runs for an image small enough to go through in one call. ``mode="auto"`` picks the whole-image
cascade when the padded image fits in one tile and the exact tiled cascade otherwise; both
give the same picture, the tiled one in memory bounded by the tile size.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.engine.cascade import LevelCallback, style_statistics, stylize_whole
from pipeline.engine.controls import StyleLevel, label_count, read_mask
from pipeline.engine.models import ModelSet
from pipeline.engine.stats import FeatureStats
from pipeline.engine.tiled import TileCallback, canvas_from_array, read_rgb, stylize_exact, stylize_thumbnail
from pipeline.imaging.canvas import Canvas, MemoryCanvas
from pipeline.imaging.imageio import (
    DEFAULT_MAX_PIXELS,
    LoadedImage,
    StreamedImage,
    check_output,
    image_size,
    read_canvas,
    read_image,
)
from pipeline.imaging.output import write_canvas
from pipeline.imaging.tiles import Rect, canvas_size, plan_tiles
from pipeline.options import DEFAULT_QUALITY, DEFAULT_TILE, MODES, Mode, check_mode

__all__ = [
    "MODES",
    "RunReport",
    "StyleLevels",
    "StyleStats",
    "choose_mode",
    "load_style",
    "style_from_rgb",
    "stylize_file",
    "stylize_image",
]

StyleStats = dict[int, FeatureStats]
# What the cascade colours with per level: one style's statistics, a blend, or one per mask label.
StyleLevels = dict[int, StyleLevel]


@dataclass
class RunReport:
    """What one content image went through: size, mode, tiles and seconds per stage."""

    width: int
    height: int
    mode: str
    tiles: int
    seconds: dict[str, float] = field(default_factory=dict)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` float32 in [0, 1] (or uint8) -> ``(1, 3, H, W)`` float32 in [0, 1]."""
    values = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else np.ascontiguousarray(rgb)
    return torch.from_numpy(values).permute(2, 0, 1)[None].contiguous()


def load_style(
    uri: str,
    models: ModelSet,
    *,
    style_size: int | None = None,
    storage_options: dict[str, Any] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> StyleStats:
    """Read a style image, optionally resize its longer side to ``style_size``, and return its statistics."""
    return style_from_rgb(read_image(uri, storage_options, max_pixels=max_pixels).rgb, models, style_size=style_size)


def style_from_rgb(rgb: np.ndarray, models: ModelSet, *, style_size: int | None = None) -> StyleStats:
    """Statistics of a style image in memory, its longer side first resized to ``style_size``.

    Args:
        rgb: ``(H, W, 3)`` uint8, or float32 in [0, 1]; both sides at least 32 px (after the resize).
        models: the encoders the statistics are taken with.
        style_size: the longer side's length in pixels (antialiased bilinear); ``None`` keeps it.

    Returns:
        Feature statistics (float64) per level of ``models``.
    """
    image = to_tensor(rgb)
    if style_size:
        h, w = image.shape[-2:]
        factor = style_size / max(h, w)
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        image = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)
    return style_statistics(image, models)


def choose_mode(mode: Mode, height: int, width: int, tile: int) -> str:
    """``auto`` -> ``whole`` when the padded image fits in one tile, else ``exact``."""
    if check_mode(mode) != "auto":
        return mode
    ch, cw = canvas_size(height, width)
    return "whole" if max(ch, cw) <= tile else "exact"


def stylize_image(
    image: LoadedImage | StreamedImage,
    style_stats: StyleStats | StyleLevels,
    models: ModelSet,
    *,
    mode: Mode = "auto",
    tile: int = DEFAULT_TILE,
    alpha: float = 1.0,
    workdir: str | None = None,
    on_level: LevelCallback | None = None,
    on_tile: TileCallback | None = None,
    mask: Canvas | None = None,
    preserve_color: bool = False,
) -> tuple[Canvas, RunReport]:
    """Stylize a decoded or streamed image (``on_tile``: tiled modes' progress, see
    :func:`pipeline.engine.tiled.stylize_exact`).

    ``style_stats`` may be one style's statistics or :func:`pipeline.engine.controls.style_levels`'
    blend or per-label colourings; ``mask`` (with the latter) holds the labels on a canvas of
    the image's padded size (:func:`pipeline.engine.controls.read_mask`); ``preserve_color`` keeps
    the content's chroma. Every mode takes every control.

    Returns:
        ``(canvas, report)``: the result on a canvas (crop to ``image.height`` x
        ``image.width``) and what was done.
    """
    h, w = image.height, image.width
    chosen = choose_mode(mode, h, w, tile)
    start = time.perf_counter()
    if chosen == "whole":
        rgb = image.rgb if isinstance(image, LoadedImage) else read_rgb(image.canvas, h, w)
        labels = None if mask is None else torch.from_numpy(mask.read(Rect(0, 0, mask.height, mask.width))[0])
        out = stylize_whole(to_tensor(rgb), style_stats, models, alpha=alpha, on_level=on_level, mask=labels,
                            preserve_color=preserve_color)
        canvas: Canvas = MemoryCanvas(out[0].numpy())
        tiles = 1
    else:
        owned = isinstance(image, LoadedImage)
        source = canvas_from_array(image.rgb, workdir=workdir) if owned else image.canvas
        try:
            if chosen == "exact":
                canvas = stylize_exact(
                    source, style_stats, models, tile=tile, alpha=alpha, workdir=workdir, on_level=on_level,
                    on_tile=on_tile, mask=mask, preserve_color=preserve_color,
                )
            else:
                canvas = stylize_thumbnail(
                    source, h, w, style_stats, models, tile=tile, alpha=alpha, workdir=workdir, on_level=on_level,
                    on_tile=on_tile, mask=mask, preserve_color=preserve_color,
                )
        finally:
            if owned:
                source.close()
        tiles = len(plan_tiles(h, w, tile=tile))
    report = RunReport(w, h, chosen, tiles, {"stylize": time.perf_counter() - start})
    return canvas, report


def read_content(
    uri: str, storage_options: dict[str, Any] | None = None, *, workdir: str | None, max_pixels: int
) -> StreamedImage:
    """Decode ``uri`` a strip at a time onto a canvas under ``workdir`` (8-bit stays 8-bit)."""
    return read_canvas(uri, storage_options, workdir=workdir, max_pixels=max_pixels)


def stylize_file(
    content_uri: str,
    output_uri: str,
    style_stats: StyleStats | StyleLevels,
    models: ModelSet,
    *,
    mode: Mode = "auto",
    tile: int = DEFAULT_TILE,
    alpha: float = 1.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    quality: int = DEFAULT_QUALITY,
    storage_options: dict[str, Any] | None = None,
    on_level: LevelCallback | None = None,
    on_tile: TileCallback | None = None,
    mask_uri: str | None = None,
    preserve_color: bool = False,
) -> RunReport:
    """Read ``content_uri``, stylize it and write ``output_uri`` (alpha and ICC profile kept).

    The output's format, and whether it can hold the image, are checked from the input's
    header before anything is decoded or stylized. ``mask_uri`` (with per-label colourings in
    ``style_stats``) is read onto a canvas and checked (size, labels) before anything is
    stylized.
    """
    labels = label_count(next(iter(style_stats.values())))
    if (mask_uri is None) != (labels == 0):
        raise ValueError("a mask needs one colouring per style (style_levels(..., masked=True)) and vice versa")
    start = time.perf_counter()
    check_output(output_uri, *image_size(content_uri, storage_options))
    workdir = tempfile.gettempdir()  # the canvases are unlinked files: nothing stays there (see DiskCanvas)
    image = read_content(content_uri, storage_options, workdir=workdir, max_pixels=max_pixels)
    mask = None
    try:
        if mask_uri is not None:
            mask = read_mask(mask_uri, height=image.height, width=image.width, styles=labels, workdir=workdir,
                             storage_options=storage_options, max_pixels=max_pixels)
        read_s = time.perf_counter() - start
        canvas, report = stylize_image(
            image, style_stats, models, mode=mode, tile=tile, alpha=alpha, workdir=workdir, on_level=on_level,
            on_tile=on_tile, mask=mask, preserve_color=preserve_color,
        )
        start = time.perf_counter()
        try:
            write_result(output_uri, canvas, image, quality=quality, storage_options=storage_options)
        finally:
            canvas.close()
    finally:
        image.close()
        if mask is not None:
            mask.close()
    report.seconds = {"read": read_s, **report.seconds, "write": time.perf_counter() - start}
    return report


def write_result(
    output_uri: str,
    canvas: Canvas,
    image: LoadedImage | StreamedImage,
    *,
    quality: int = DEFAULT_QUALITY,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Write the stylized ``canvas`` of ``image`` with the input's alpha and ICC profile."""
    write_canvas(
        output_uri,
        canvas,
        image.height,
        image.width,
        alpha=image.alpha,
        icc_profile=image.icc_profile,
        quality=quality,
        storage_options=storage_options,
    )
