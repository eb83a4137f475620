"""Integer-factor resampling on canvases, a band or a tile at a time, and the stroke band split.

The stroke scale (:mod:`pipeline.engine.strokes`) stylizes a copy of the image shrunk by an integer
factor ``S`` and puts its low frequencies back into the full-resolution result. Everything
here is local, so it tiles exactly:

- the shrink is the mean of each ``S`` x ``S`` block whose top-left pixel is ``(i S, j S)``
  (:func:`box_bands`, :func:`box_downscale`); an ``H`` x ``W`` image gives ``H // S`` x
  ``W // S`` pixels, and the last ``H % S`` rows fall in no block (the upscale reaches them by
  clamping, below). Labels are not averaged: a block takes the label of its top-left pixel
  (:func:`label_downscale`), the rule the cascade already samples masks by;
- the enlargement is bicubic (Keys, ``a = -0.75``, as torch and OpenCV), with image pixel
  ``y`` at source coordinate ``(y + 0.5) / S - 0.5`` and source indices clamped to the image
  (:func:`cubic_matrix`): each output pixel reads at most 4 x 4 source pixels near it;
- the band split (:func:`band_split_tile`) of a full-resolution picture ``F`` and a small one
  ``C``: ``F + up(C - down(F))``, the low frequencies of ``up(C)`` and the high frequencies of
  ``F``. A tile core needs the few source pixels its cubic taps reach and, for ``down(F)`` at
  those, the blocks of ``F`` under them (:meth:`BandSplit.regions`).

Bands of rows are read and written a few at a time, so no image is ever held whole.
Nothing here knows about torch or Ray.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.imaging.canvas import Canvas, open_canvas, reflect_pad_canvas
from pipeline.imaging.tiles import Rect, canvas_size

__all__ = [
    "BAND_ROWS",
    "CUBIC_A",
    "BandSplit",
    "band_split_tile",
    "box_bands",
    "box_downscale",
    "box_mean",
    "cubic_matrix",
    "label_bands",
    "label_downscale",
]

# Keys' cubic convolution parameter; -0.75 is torch's and OpenCV's bicubic.
CUBIC_A = -0.75
# Image rows read per band when shrinking (at least one block row): 8.6 MB of float32 for a
# 12000-px-wide image at S = 12.
BAND_ROWS = 64


def box_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block of ``(C, h, w)`` values (``h``, ``w`` multiples of it)."""
    c, h, w = values.shape
    return values.reshape(c, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def box_bands(canvas: Canvas, height: int, width: int, factor: int, *, rows: int = BAND_ROWS) -> Iterator[np.ndarray]:
    """The ``height`` x ``width`` image on ``canvas`` shrunk by ``factor``, a band of rows at a time.

    Args:
        canvas: holds the image at its top left (a padded canvas is read only inside it).
        height, width: the image size.
        factor: block side; the result is ``height // factor`` x ``width // factor``.
        rows: image rows read per band (rounded down to whole blocks, at least one).

    Yields:
        ``(C, n, width // factor)`` float32 block means, top to bottom.
    """
    th, tw = height // factor, width // factor
    step = max(1, rows // factor)
    for by in range(0, th, step):
        n = min(step, th - by)
        yield box_mean(canvas.read(Rect(by * factor, 0, (by + n) * factor, tw * factor)), factor)


def _shrunk_canvas(
    bands: Iterator[np.ndarray], channels: int, height: int, width: int, *, workdir: str | None, name: str
) -> Canvas:
    """Write ``bands`` (a ``height`` x ``width`` image, top to bottom) onto a reflect-padded canvas."""
    out = open_canvas(channels, *canvas_size(height, width), workdir=workdir, name=name)
    try:
        y = 0
        for band in bands:
            out.write(Rect(y, 0, y + band.shape[1], width), band)
            y += band.shape[1]
        reflect_pad_canvas(out, height, width)
    except BaseException:
        out.close()
        raise
    return out


def box_downscale(canvas: Canvas, height: int, width: int, factor: int, *, workdir: str | None) -> Canvas:
    """The image shrunk by ``factor`` (block means, :func:`box_bands`) on a new reflect-padded
    float32 canvas of :func:`~pipeline.imaging.tiles.canvas_size` ``(height // factor, width // factor)``."""
    bands = box_bands(canvas, height, width, factor)
    return _shrunk_canvas(bands, canvas.channels, height // factor, width // factor, workdir=workdir, name="coarse")


def label_bands(mask: Canvas, height: int, width: int, factor: int) -> Iterator[np.ndarray]:
    """Mask labels shrunk by ``factor``, one row at a time: each block's top-left label.

    Yields:
        ``(C, 1, width // factor)`` float32 for each of the ``height // factor`` rows; one image
        row is read per block row.
    """
    tw = width // factor
    for by in range(height // factor):
        yield mask.read(Rect(by * factor, 0, by * factor + 1, tw * factor))[:, :, ::factor]


def label_downscale(mask: Canvas, height: int, width: int, factor: int, *, workdir: str | None) -> Canvas:
    """Mask labels shrunk by ``factor`` (:func:`label_bands`) on a reflect-padded canvas laid out
    as :func:`box_downscale` lays out the image they label."""
    bands = label_bands(mask, height, width, factor)
    return _shrunk_canvas(bands, mask.channels, height // factor, width // factor, workdir=workdir,
                          name="coarse-mask")


def _cubic(t: np.ndarray) -> np.ndarray:
    """Keys' weights of the taps at offsets -1, 0, 1, 2 for fractional positions ``t`` in [0, 1)."""

    def near(x: np.ndarray) -> np.ndarray:
        return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:
        return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def cubic_matrix(start: int, stop: int, factor: int, size: int) -> tuple[int, np.ndarray]:
    """Bicubic enlargement by ``factor`` along one axis, for output pixels ``[start, stop)``.

    Output pixel ``y`` samples the source at ``(y + 0.5) / factor - 0.5``; taps outside
    ``[0, size)`` are clamped to the edge (torch's ``interpolate(..., mode="bicubic",
    align_corners=False)`` with that scale factor does the same).

    Args:
        start, stop: output pixel range.
        factor: enlargement (output pixels per source pixel).
        size: source pixels along the axis.

    Returns:
        ``(first, weights)``: ``weights`` ``(stop - start, n)`` float32 maps source pixels
        ``[first, first + n)`` to the outputs, the smallest span the taps reach.
    """
    y = np.arange(start, stop, dtype=np.float64)
    centre = (y + 0.5) / factor - 0.5
    base = np.floor(centre)
    taps = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3), 0, size - 1)
    first = int(taps.min())
    weights = np.zeros((len(y), int(taps.max()) + 1 - first), np.float64)
    np.add.at(weights, (np.arange(len(y))[:, None], taps - first), _cubic(centre - base))
    return first, weights.astype(np.float32)


@dataclass(frozen=True)
class BandSplit:
    """The band split of an ``height`` x ``width`` image at stroke scale ``factor``.

    Attributes:
        height, width: the full-resolution image.
        factor: the stroke scale ``S`` (an integer, at least 2).
    """

    height: int
    width: int
    factor: int

    @property
    def coarse_size(self) -> tuple[int, int]:
        """``(height, width)`` of the shrunk image."""
        return self.height // self.factor, self.width // self.factor

    def taps(self, core: Rect) -> tuple[Rect, np.ndarray, np.ndarray]:
        """The cubic enlargement onto ``core``: the small image's pixels it reads, and the row
        and column weights (:func:`cubic_matrix`) mapping them to the core's pixels."""
        ch, cw = self.coarse_size
        y0, rows = cubic_matrix(core.y0, core.y1, self.factor, ch)
        x0, cols = cubic_matrix(core.x0, core.x1, self.factor, cw)
        return Rect(y0, x0, y0 + rows.shape[1], x0 + cols.shape[1]), rows, cols

    def regions(self, core: Rect) -> tuple[Rect, Rect]:
        """What :func:`band_split_tile` reads for ``core``: ``(coarse, full)``, the small image's
        pixels the cubic taps reach and the full-resolution pixels (the core and the blocks
        under those coarse pixels)."""
        coarse = self.taps(core)[0]
        return coarse, self.full_region(core, coarse)

    def full_region(self, core: Rect, coarse: Rect) -> Rect:
        """The full-resolution pixels the band split of ``core`` reads: the core and the blocks
        under the ``coarse`` pixels its taps reach."""
        s = self.factor
        return Rect(min(core.y0, coarse.y0 * s), min(core.x0, coarse.x0 * s),
                    max(core.y1, coarse.y1 * s), max(core.x1, coarse.x1 * s))


def band_split_tile(full: Canvas, coarse: Canvas, core: Rect, split: BandSplit) -> np.ndarray:
    """``F + up(C - down(F))`` on one core: the low frequencies of the enlarged small result
    ``C`` with the high frequencies of the full-resolution result ``F``.

    Both pictures are clamped to [0, 1] first, as they would be if written.

    Args:
        full: ``F``, holding at least ``split.regions(core)[1]``.
        coarse: ``C``, the small image's result, holding at least ``split.regions(core)[0]``.
        core: the output rectangle.
        split: the geometry.

    Returns:
        ``(C, core.height, core.width)`` float32, not clamped.
    """
    need, rows, cols = split.taps(core)
    region = split.full_region(core, need)
    s = split.factor
    values = np.clip(full.read(region), 0, 1)
    blocks = Rect(need.y0 * s, need.x0 * s, need.y1 * s, need.x1 * s).relative_to(region)
    residual = np.clip(coarse.read(need), 0, 1) - box_mean(values[(slice(None), *blocks.slices())], s)
    return values[(slice(None), *core.relative_to(region).slices())] + rows @ residual @ cols.T
