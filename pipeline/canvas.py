"""Canvases: ``(C, H, W)`` float32 images written and read by rectangle.

The tiled engine keeps each level's input image and cached features on a canvas, so no
process ever holds a full-resolution float array of a large image. :class:`DiskCanvas`
stores pixels interleaved (``H, W, C``) in a raw file and moves one row segment per
``pread``/``pwrite``: nothing is memory-mapped, so resident memory follows the rectangles in
use, not the image. :class:`MemoryCanvas` is the same interface over one array, for images
small enough to hold.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from pipeline.tiles import Rect

__all__ = ["Canvas", "DiskCanvas", "MemoryCanvas", "open_canvas", "reflect_pad_canvas"]


class Canvas(Protocol):
    channels: int
    height: int
    width: int

    def read(self, rect: Rect) -> np.ndarray:
        """``(C, h, w)`` float32 copy of ``rect``."""
        ...

    def write(self, rect: Rect, values: np.ndarray) -> None:
        """Store ``(C, h, w)`` ``values`` at ``rect``."""
        ...

    def close(self) -> None:
        """Release the storage; the canvas is not used afterwards."""
        ...


class MemoryCanvas:
    """A canvas held as one ``(C, H, W)`` float32 array."""

    def __init__(self, array: np.ndarray) -> None:
        self.channels, self.height, self.width = array.shape
        self.array = array

    def read(self, rect: Rect) -> np.ndarray:
        return self.array[(slice(None), *rect.slices())].copy()

    def write(self, rect: Rect, values: np.ndarray) -> None:
        self.array[(slice(None), *rect.slices())] = values

    def close(self) -> None:
        """Nothing to release beyond the array, which the garbage collector frees."""


class DiskCanvas:
    """A canvas in a raw file of interleaved float32 pixels, accessed row segment by row segment.

    Args:
        path: file to create (removed by :meth:`close`).
        channels, height, width: canvas shape.
    """

    def __init__(self, path: str, channels: int, height: int, width: int) -> None:
        self.channels, self.height, self.width = channels, height, width
        self.path = path
        self._pixel = channels * 4
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, height * width * self._pixel)

    def _offset(self, y: int, x: int) -> int:
        return (y * self.width + x) * self._pixel

    def read(self, rect: Rect) -> np.ndarray:
        out = np.empty((rect.height, rect.width, self.channels), np.float32)
        for i in range(rect.height):
            os.preadv(self._fd, [memoryview(out[i]).cast("B")], self._offset(rect.y0 + i, rect.x0))
        # A (C, h, w) view of pixel-interleaved memory: channels-last, the layout the convs want.
        return out.transpose(2, 0, 1)

    def write(self, rect: Rect, values: np.ndarray) -> None:
        rows = np.ascontiguousarray(values.transpose(1, 2, 0), dtype=np.float32)
        for i in range(rect.height):
            os.pwrite(self._fd, memoryview(rows[i]).cast("B"), self._offset(rect.y0 + i, rect.x0))

    def close(self) -> None:
        os.close(self._fd)
        os.unlink(self.path)


def open_canvas(channels: int, height: int, width: int, *, workdir: str | None, name: str) -> Canvas:
    """A :class:`DiskCanvas` under ``workdir``, or a :class:`MemoryCanvas` when it is ``None``."""
    if workdir is None:
        return MemoryCanvas(np.zeros((channels, height, width), np.float32))
    return DiskCanvas(os.path.join(workdir, f"{name}.f32"), channels, height, width)


def reflect_pad_canvas(canvas: Canvas, height: int, width: int) -> None:
    """Fill the canvas beyond ``height`` x ``width`` by reflection (numpy/torch ``reflect``)."""
    ch, cw = canvas.height, canvas.width
    if ch > height:
        band = canvas.read(Rect(2 * height - 1 - ch, 0, height - 1, width))
        canvas.write(Rect(height, 0, ch, width), band[:, ::-1])
    if cw > width:
        band = canvas.read(Rect(0, 2 * width - 1 - cw, ch, width - 1))
        canvas.write(Rect(0, width, ch, cw), band[:, :, ::-1])
