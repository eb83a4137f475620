"""A canvas assembled from rectangular chunks: how a tile sees its neighbours on Ray.

In the batch job each level's image (and each cached feature map) exists only as one array
per tile core, held in the object store. A tile's round needs its core grown by a halo, which
reaches into neighbouring cores, so the actor wraps the few chunks it was handed in a
:class:`ChunkCanvas` and the tiled engine's functions read the region from it as they would
from any other :class:`~pipeline.imaging.canvas.Canvas`. Nothing here knows about Ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from pipeline.imaging.tiles import Rect

__all__ = ["ChunkCanvas", "compact", "intersection", "overlapping", "unit_float"]


def compact(values: np.ndarray) -> np.ndarray:
    """``values`` (float in [0, 1]) as uint8 when that loses nothing, else as float32.

    An 8-bit input decodes to multiples of 1/255; sending those as uint8 costs a quarter of
    the bytes, and :func:`unit_float` gives back the very same float32 values.
    """
    quantized = np.rint(values * 255.0).clip(0, 255).astype(np.uint8)
    if np.array_equal(unit_float(quantized), values):
        return quantized
    return np.asarray(values, dtype=np.float32)


def unit_float(values: np.ndarray) -> np.ndarray:
    """uint8 ``values`` scaled to float32 in [0, 1] (as decoding does); float values as float32."""
    if values.dtype == np.uint8:
        return values.astype(np.float32) / 255.0
    return np.asarray(values, dtype=np.float32)


def intersection(a: Rect, b: Rect) -> Rect | None:
    """The common part of two rectangles, or ``None`` when they share no pixel."""
    y0, x0, y1, x1 = max(a.y0, b.y0), max(a.x0, b.x0), min(a.y1, b.y1), min(a.x1, b.x1)
    if y0 >= y1 or x0 >= x1:
        return None
    return Rect(y0, x0, y1, x1)


def overlapping(rects: Sequence[Rect], region: Rect) -> list[int]:
    """Indices of the ``rects`` that share at least one pixel with ``region``.

    The batch driver uses it to hand a tile round exactly the neighbouring cores its halo
    reaches, whatever the ratio of halo to tile size.
    """
    return [i for i, rect in enumerate(rects) if intersection(rect, region) is not None]


class ChunkCanvas:
    """A ``(C, H, W)`` float32 canvas made of non-overlapping chunks, kept by reference.

    Chunks are float32, or uint8 standing for multiples of 1/255 (see :func:`compact`).
    Reads copy the requested rectangle out of the chunks that cover it; reading a pixel no
    chunk covers is an error, so a tile that was handed too few neighbours fails loudly
    instead of computing on zeros. Chunks may be read-only (arrays from Ray's object store
    are): they are never modified.

    Args:
        channels, height, width: shape of the whole canvas (its bounds, which set where a
            tile's halo is clipped).
        chunks: ``(rect, values)`` pairs, ``values`` ``(C, rect.height, rect.width)``.
    """

    def __init__(
        self, channels: int, height: int, width: int, chunks: Iterable[tuple[Rect, np.ndarray]] = ()
    ) -> None:
        self.channels, self.height, self.width = channels, height, width
        self._chunks: list[tuple[Rect, np.ndarray]] = []
        for rect, values in chunks:
            self.write(rect, values)

    def read(self, rect: Rect) -> np.ndarray:
        """``(C, h, w)`` float32 copy of ``rect``, assembled from the chunks covering it.

        Raises:
            ValueError: part of ``rect`` is covered by no chunk.
        """
        out = np.empty((self.channels, rect.height, rect.width), np.float32)
        covered = 0
        for chunk_rect, values in self._chunks:
            common = intersection(chunk_rect, rect)
            if common is None:
                continue
            src = common.relative_to(chunk_rect)
            dst = common.relative_to(rect)
            out[(slice(None), *dst.slices())] = unit_float(values[(slice(None), *src.slices())])
            covered += common.area
        if covered != rect.area:
            raise ValueError(f"{rect} is only partly covered by the {len(self._chunks)} chunks of this canvas")
        return out

    def write(self, rect: Rect, values: np.ndarray) -> None:
        """Add ``values`` (float32 or uint8) as the chunk at ``rect`` (kept by reference, not copied).

        Raises:
            ValueError: ``values`` does not have the rectangle's shape or a known dtype,
                ``rect`` leaves the canvas, or it overlaps a chunk already written.
        """
        expected = (self.channels, rect.height, rect.width)
        if values.shape != expected:
            raise ValueError(f"chunk at {rect} must have shape {expected}, got {values.shape}")
        if values.dtype not in (np.float32, np.uint8):
            raise ValueError(f"chunk at {rect} must be float32 or uint8, got {values.dtype}")
        if rect.y0 < 0 or rect.x0 < 0 or rect.y1 > self.height or rect.x1 > self.width:
            raise ValueError(f"chunk at {rect} leaves the {self.height}x{self.width} canvas")
        for other, _ in self._chunks:
            if intersection(other, rect) is not None:
                raise ValueError(f"chunk at {rect} overlaps the chunk at {other}")
        self._chunks.append((rect, values))
