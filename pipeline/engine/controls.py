"""Creative controls that keep tiled == whole: style blending, masks, colour preservation.

All three are exact under tiling because each is either a change of the per-level transform
(built once from global statistics) or a per-pixel operation:

- **Blending** (``--style-weights``): the WCT paper's style interpolation,
  ``f' = sum_i w_i (C_i W (f - mu_c) + mu_i)``, is one affine map per level with the blended
  colouring ``(sum_i w_i C_i, sum_i w_i mu_i)`` (:func:`pipeline.engine.wct.blend_colorings`).
- **Masks** (``--mask``): the WCT paper's spatial control. Per level, the content statistics are
  reduced per region (:func:`pipeline.engine.stats.label_stats`, merged over tiles like the global
  ones) and region ``i`` is whitened with its own statistics and coloured with style ``i``.
  A feature cell of level ``k`` takes the label of its top-left image pixel (every
  ``2 ** (k - 1)``-th pixel, :func:`sample_labels`): a local rule, and tile origins are
  16-aligned, so a tile samples exactly the cells the whole image does.
- **Colour preservation** (``--preserve-color``): luminance-only transfer. The cascade runs as
  usual; the output keeps its luminance (Y of YCbCr, BT.601 as in JPEG) and takes the content's
  chroma, at full resolution, pixel by pixel (:func:`keep_chroma`).

A level's "style" handed to the level loop is therefore a :data:`StyleLevel`: one style's
statistics (as before), one :class:`~pipeline.engine.wct.Coloring` (a blend), or a tuple of them (one
per mask label); :func:`level_transform` turns it and the content statistics into the level's
:data:`~pipeline.engine.wct.TransformSet`. Nothing here knows about Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, TypeVar

import numpy as np
import torch

from pipeline.engine.stats import FeatureStats, TileStats, feature_stats, label_stats
from pipeline.engine.wct import Coloring, TransformSet, blend_colorings, coloring, whitening_coloring
from pipeline.imaging.canvas import Canvas, open_canvas, reflect_pad_canvas
from pipeline.imaging.imageio import DEFAULT_MAX_PIXELS, ImageError, image_size, read_canvas
from pipeline.imaging.tiles import Rect, canvas_size

__all__ = [
    "LUMA",
    "MASK_EXTENSION",
    "STYLE_SEPARATOR",
    "StyleLevel",
    "check_mask_size",
    "control_settings",
    "join_styles",
    "keep_chroma",
    "label_count",
    "level_transform",
    "mask_canvas",
    "mask_for",
    "read_mask",
    "region_labels",
    "region_stats",
    "sample_labels",
    "split_styles",
    "style_levels",
    "style_stem",
]

# One level's style: one style's statistics, a blend of styles, or one colouring per mask label.
StyleLevel = FeatureStats | Coloring | tuple[Coloring, ...]
# BT.601 luma weights (JPEG's YCbCr): Y = LUMA . (R, G, B).
LUMA = (0.299, 0.587, 0.114)

Pixels = TypeVar("Pixels", np.ndarray, torch.Tensor)
# The batch job names an output made from several styles (a blend, or a mask's styles) by this
# join of their URIs: the manifest's ``style_uri`` of such a pair.
STYLE_SEPARATOR = " + "
# The batch job's masks: ``<--mask prefix>/<content path below the input, without extension>.png``.
MASK_EXTENSION = ".png"


def join_styles(uris: Sequence[str]) -> str:
    """The ``style_uri`` of an output made from several styles (one URI stays as it is)."""
    return STYLE_SEPARATOR.join(uris)


def split_styles(style_uri: str) -> list[str]:
    """The style URIs behind a :func:`join_styles` value."""
    return style_uri.split(STYLE_SEPARATOR)


def style_stem(style_uri: str) -> str:
    """The output name's style part: the file stem, or the stems joined by ``+`` for several styles."""
    return "+".join(PurePosixPath(uri).stem for uri in split_styles(style_uri))


def mask_for(content_uri: str, *, input_uri: str, mask_uri: str) -> str:
    """The batch job's mask of a content image: same path below ``mask_uri`` as the content
    below ``input_uri``, with the extension :data:`MASK_EXTENSION`."""
    base = input_uri.rstrip("/") + "/"
    relative = content_uri[len(base) :] if content_uri.startswith(base) else PurePosixPath(content_uri).name
    return mask_uri.rstrip("/") + "/" + str(PurePosixPath(relative).with_suffix(MASK_EXTENSION))


def control_settings(
    *, style_weights: Sequence[float] | None = None, mask: str | None = None, preserve_color: bool = False
) -> dict[str, Any]:
    """The controls an output depends on, for its manifest settings (empty without any).

    Args:
        style_weights: ``--style-weights`` as given (normalised, so ``2,2`` and ``1,1`` agree).
        mask: the mask's content digest (:func:`pipeline.batch.fingerprint.style_digest`).
        preserve_color: ``--preserve-color``.
    """
    found: dict[str, Any] = {}
    if style_weights is not None:
        total = float(sum(style_weights))
        found["style_weights"] = [float(w) / total for w in style_weights]
    if mask is not None:
        found["mask"] = mask
    if preserve_color:
        found["preserve_color"] = True
    return found


def style_levels(
    styles: Sequence[Mapping[int, FeatureStats]], *, weights: Sequence[float] | None = None, masked: bool = False
) -> dict[int, StyleLevel]:
    """What the level loop colours with, per level, from one or more styles' statistics.

    Args:
        styles: each style's statistics per level (:func:`pipeline.engine.cascade.style_statistics`).
        weights: blend weights, one per style (normalised); ``None`` with one style.
        masked: one colouring per style, picked per pixel by a mask's labels (no weights).

    Returns:
        ``level -> StyleLevel``: the one style's statistics unchanged (so the single-style
        path computes exactly what it always did), a blended :class:`Coloring`, or a tuple of
        colourings indexed by mask label.
    """
    if not styles:
        raise ValueError("styles must not be empty")
    levels = list(styles[0])
    if masked:
        if weights is not None:
            raise ValueError("--style-weights and --mask do not go together: the mask picks one style per pixel")
        return {k: tuple(coloring(s[k]) for s in styles) for k in levels}
    if weights is None:
        if len(styles) > 1:
            raise ValueError(f"{len(styles)} styles for one output need --style-weights or --mask")
        return dict(styles[0])
    return {k: blend_colorings([coloring(s[k]) for s in styles], weights) for k in levels}


def label_count(style: StyleLevel) -> int:
    """Mask labels a level's style expects: the number of styles when masked, else 0."""
    return len(style) if isinstance(style, tuple) else 0


def level_transform(stats: TileStats, style: StyleLevel, *, alpha: float) -> TransformSet:
    """A level's transform(s) from the merged content statistics (per label when masked)."""
    if isinstance(style, tuple):
        if not isinstance(stats, tuple) or len(stats) != len(style):
            raise ValueError(f"a masked level needs content statistics per label ({len(style)})")
        return tuple(whitening_coloring(c, s, alpha=alpha) for c, s in zip(stats, style, strict=True))
    if isinstance(stats, tuple):
        raise ValueError("content statistics per label need a style per label (a mask)")
    return whitening_coloring(stats, style, alpha=alpha)


def sample_labels(mask: np.ndarray | torch.Tensor, scale: int) -> torch.Tensor:
    """Labels of a level's feature cells: the label of each cell's top-left pixel.

    Args:
        mask: ``(H, W)`` or ``(1, H, W)`` labels at image resolution (float32 or integer),
            starting on a multiple of ``scale``.
        scale: image pixels per feature cell, ``2 ** (level - 1)``.

    Returns:
        ``(H / scale, W / scale)`` int64 on the CPU.
    """
    if mask.ndim == 3:
        mask = mask[0]
    picked = mask[::scale, ::scale]
    return torch.as_tensor(np.asarray(picked)).to(torch.int64)


def region_labels(mask: Canvas | None, rect: Rect, scale: int) -> torch.Tensor | None:
    """The labels of ``rect``'s feature cells read from a mask canvas (``None`` without one)."""
    return None if mask is None else sample_labels(mask.read(rect), scale)


def region_stats(features: torch.Tensor, labels: torch.Tensor | None, count: int) -> TileStats:
    """Round A's statistics of a feature map: global, or per label when there are labels."""
    if labels is None:
        return feature_stats(features)
    return label_stats(features, labels, count)


def keep_chroma(styled: Pixels, content: Pixels) -> Pixels:
    """Luminance-only transfer: the styled luminance with the content's chroma.

    In YCbCr, keeping Cb and Cr and replacing Y adds ``Y(styled) - Y(content)`` to each of R,
    G and B. ``styled`` is first clamped to [0, 1] (as the output is), so the whole-image and
    the tiled paths give the same values.

    Args:
        styled, content: ``(..., 3, H, W)`` float RGB in [0, 1] (numpy or torch, same kind).

    Returns:
        ``(..., 3, H, W)`` in [0, 1].
    """
    styled = styled.clip(0, 1)

    def luma(x: Pixels) -> Pixels:
        return LUMA[0] * x[..., 0:1, :, :] + LUMA[1] * x[..., 1:2, :, :] + LUMA[2] * x[..., 2:3, :, :]

    return (content + (luma(styled) - luma(content))).clip(0, 1)


def check_mask_size(
    mask_uri: str, height: int, width: int, storage_options: dict[str, Any] | None = None
) -> None:
    """Refuse a mask whose size differs from the content's, from its header alone.

    Raises:
        ImageError: unreadable, or another size (the message names ``--mask``).
    """
    mw, mh = image_size(mask_uri, storage_options)
    if (mw, mh) != (width, height):
        raise ImageError(f"--mask {mask_uri} is {mw}x{mh}, the content image is {width}x{height}: they must match")


def mask_canvas(labels: np.ndarray, *, styles: int, workdir: str | None, mask_uri: str = "mask") -> Canvas:
    """Put ``(H, W)`` integer labels on a reflect-padded 1-channel canvas of the content's canvas size.

    Raises:
        ImageError: a label is ``styles`` or more (the message names ``--mask`` and ``--style``).
    """
    h, w = labels.shape
    return _labels_canvas(lambda y0, y1: labels[y0:y1], h, w, styles=styles, workdir=workdir, mask_uri=mask_uri)


def _labels_canvas(
    rows: Callable[[int, int], np.ndarray],
    height: int,
    width: int,
    *,
    styles: int,
    workdir: str | None,
    mask_uri: str,
    band: int = 256,
) -> Canvas:
    """Copy labels onto a padded canvas a band of ``rows(y0, y1)`` at a time, checking each band."""
    canvas = open_canvas(1, *canvas_size(height, width), workdir=workdir, name="mask")
    try:
        for y in range(0, height, band):
            labels = rows(y, min(y + band, height))
            top = int(labels.max(initial=0))
            if top >= styles:
                raise ImageError(
                    f"--mask {mask_uri} has value {top} but only {styles} --style given "
                    f"(value i picks the i-th --style, counting from 0)"
                )
            canvas.write(Rect(y, 0, y + labels.shape[0], width), labels[None].astype(np.float32))
    except BaseException:
        canvas.close()
        raise
    reflect_pad_canvas(canvas, height, width)
    return canvas


def _grey_levels(values: np.ndarray) -> np.ndarray:
    """Decoded channel values back to 8-bit grey levels (uint8 as they are, uint16 scaled, float in [0, 1])."""
    if values.dtype == np.uint8:
        return values.astype(np.int64)
    if values.dtype == np.uint16:
        return np.rint(values / 257).astype(np.int64)
    return np.rint(values * 255).astype(np.int64)


def read_mask(
    mask_uri: str,
    *,
    height: int,
    width: int,
    styles: int,
    workdir: str | None,
    storage_options: dict[str, Any] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Canvas:
    """Read a label mask onto a padded canvas (see :func:`mask_canvas`).

    The mask is an 8-bit greyscale image of the content's size whose grey value ``i`` picks
    the ``i``-th style (0, 1, 2, ...); a colour image counts by its red channel. Masks are
    decoded a strip at a time onto a canvas, as content images are, and labels are copied a
    band at a time, so a mask costs no more memory than reading its content image does.

    Raises:
        ImageError: unreadable, another size than ``height`` x ``width``, or more labels than styles.
    """
    check_mask_size(mask_uri, height, width, storage_options)
    streamed = read_canvas(mask_uri, storage_options, workdir=workdir, max_pixels=max_pixels)
    try:
        return _labels_canvas(lambda y0, y1: _grey_levels(streamed.canvas.read(Rect(y0, 0, y1, width))[0]),
                              height, width, styles=styles, workdir=workdir, mask_uri=mask_uri)
    finally:
        streamed.close()
