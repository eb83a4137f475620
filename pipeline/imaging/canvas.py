"""Canvases: ``(C, H, W)`` images written and read by rectangle, read as float32.

The tiled engine keeps each level's input image and cached features on a canvas, so no
process ever holds a full-resolution float array of a large image. :class:`DiskCanvas`
stores pixels interleaved (``H, W, C``) in a raw file and moves one row segment per
``pread``/``pwrite``: nothing is memory-mapped, so resident memory follows the rectangles in
use, not the image. Its file is unlinked as soon as it is made: the blocks belong to the open
file alone and go back to the file system when the canvas is closed or the process ends,
however it ends (a stop signal, SIGKILL, the OOM killer, Ray killing a worker), so a canvas is
never left on disk. :class:`MemoryCanvas` is the same interface over one array, for images
small enough to hold.

A canvas stores float32, or the decoded file's own 8- or 16-bit integers: an 8-bit input
costs 3 bytes per pixel on disk instead of 12, and becomes float32 in [0, 1] only as a
rectangle is read. Writing values of the canvas's own dtype stores them as they are; float
values in [0, 1] written to an integer canvas are rounded to its levels.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from typing import Protocol

import numpy as np
from numpy.typing import DTypeLike

from pipeline.errors import DiskFullError, is_disk_full
from pipeline.imaging.tiles import Rect

__all__ = ["CANVAS_DTYPES", "Canvas", "DiskCanvas", "MemoryCanvas", "open_canvas", "reflect_pad_canvas"]

# What a canvas may store, each with the value that reads as 1.0.
CANVAS_DTYPES = {np.dtype(np.float32): 1.0, np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _dtype(dtype: DTypeLike) -> np.dtype:
    found = np.dtype(dtype)
    if found not in CANVAS_DTYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in CANVAS_DTYPES]}, got {found}")
    return found


def _as_float(stored: np.ndarray) -> np.ndarray:
    """Stored values as float32 in [0, 1] (float32 canvases are returned as they are)."""
    if stored.dtype == np.float32:
        return stored
    return stored.astype(np.float32) / np.float32(CANVAS_DTYPES[stored.dtype])


def _as_stored(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` in ``dtype``: as they are when they already have it, else rounded from [0, 1]."""
    if values.dtype == dtype or dtype == np.float32:
        return np.asarray(values, dtype)
    return np.rint(np.clip(values, 0, 1) * CANVAS_DTYPES[dtype]).astype(dtype)


class Canvas(Protocol):
    channels: int
    height: int
    width: int
    dtype: np.dtype  # how the values are stored (one of CANVAS_DTYPES); read() gives float32

    def read(self, rect: Rect) -> np.ndarray:
        """``(C, h, w)`` float32 copy of ``rect``, in [0, 1] for integer canvases."""
        ...

    def write(self, rect: Rect, values: np.ndarray) -> None:
        """Store ``(C, h, w)`` ``values`` at ``rect``."""
        ...

    def close(self) -> None:
        """Release the storage; the canvas is not used afterwards."""
        ...


class MemoryCanvas:
    """A canvas held as one ``(C, H, W)`` array of one of :data:`CANVAS_DTYPES`."""

    def __init__(self, array: np.ndarray) -> None:
        self.channels, self.height, self.width = array.shape
        self.dtype = _dtype(array.dtype)
        self.array = array

    def read(self, rect: Rect) -> np.ndarray:
        return _as_float(self.array[(slice(None), *rect.slices())]).copy()

    def write(self, rect: Rect, values: np.ndarray) -> None:
        self.array[(slice(None), *rect.slices())] = _as_stored(values, self.dtype)

    def close(self) -> None:
        """Nothing to release beyond the array, which the garbage collector frees."""


class DiskCanvas:
    """A canvas in a raw file of interleaved pixels, accessed row segment by row segment.

    Args:
        path: file to create; it is unlinked at once (the name is kept for messages), and its
            blocks are freed by :meth:`close` or the end of the process.
        channels, height, width: canvas shape.
        dtype: what is stored per channel (one of :data:`CANVAS_DTYPES`).
    """

    def __init__(
        self, path: str, channels: int, height: int, width: int, dtype: DTypeLike = np.float32
    ) -> None:
        self.channels, self.height, self.width = channels, height, width
        self.dtype = _dtype(dtype)
        self.path = path
        self._pixel = channels * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.unlink(path)
        with self._naming_a_full_disk():
            os.ftruncate(self._fd, height * width * self._pixel)

    @contextlib.contextmanager
    def _naming_a_full_disk(self) -> Iterator[None]:
        """Raise a full disk as :class:`~pipeline.errors.DiskFullError` naming this file and its
        file system (the file is sparse: blocks are taken as rows are written)."""
        try:
            yield
        except OSError as e:
            if is_disk_full(e):
                raise DiskFullError.at(self.path) from e
            raise

    def _offset(self, y: int, x: int) -> int:
        return (y * self.width + x) * self._pixel

    def read(self, rect: Rect) -> np.ndarray:
        out = np.empty((rect.height, rect.width, self.channels), self.dtype)
        for i in range(rect.height):
            os.preadv(self._fd, [memoryview(out[i]).cast("B")], self._offset(rect.y0 + i, rect.x0))
        # A (C, h, w) view of pixel-interleaved memory: channels-last, the layout the convs want.
        return _as_float(out).transpose(2, 0, 1)

    def write(self, rect: Rect, values: np.ndarray) -> None:
        rows = np.ascontiguousarray(_as_stored(values.transpose(1, 2, 0), self.dtype))
        with self._naming_a_full_disk():
            for i in range(rect.height):
                data = memoryview(rows[i]).cast("B")
                if os.pwrite(self._fd, data, self._offset(rect.y0 + i, rect.x0)) != data.nbytes:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a short write: the disk filled up

    def close(self) -> None:
        os.close(self._fd)


def open_canvas(
    channels: int,
    height: int,
    width: int,
    *,
    workdir: str | None,
    name: str,
    dtype: DTypeLike = np.float32,
) -> Canvas:
    """A :class:`DiskCanvas` under ``workdir``, or a :class:`MemoryCanvas` when it is ``None``.

    ``name`` starts the file's name, which is made unique, so two canvases opened under one
    workdir with one name (a content image and its mask, say) never share a file.
    """
    if workdir is None:
        return MemoryCanvas(np.zeros((channels, height, width), _dtype(dtype)))
    fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=f".{np.dtype(dtype).str[1:]}", dir=workdir)
    os.close(fd)
    return DiskCanvas(path, channels, height, width, dtype)


def reflect_pad_canvas(canvas: Canvas, height: int, width: int) -> None:
    """Fill the canvas beyond ``height`` x ``width`` by reflection (numpy/torch ``reflect``)."""
    ch, cw = canvas.height, canvas.width
    if ch > height:
        band = canvas.read(Rect(2 * height - 1 - ch, 0, height - 1, width))
        canvas.write(Rect(height, 0, ch, width), band[:, ::-1])
    if cw > width:
        band = canvas.read(Rect(0, 2 * width - 1 - cw, ch, width - 1))
        canvas.write(Rect(0, width, ch, cw), band[:, :, ::-1])
