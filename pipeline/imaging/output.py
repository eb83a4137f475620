"""Writing a stylized canvas to its output URI, a strip of rows at a time, through libvips.

libvips encodes demand-driven: the encoder pulls rows from its input as it goes. The canvas
is offered to it as an uncompressed PNG stream (stored deflate blocks, no filtering) that is
made from the canvas one band of rows at a time as libvips reads it, so neither the float
nor the 8-bit image ever exists whole, whatever the output format (WebP excepted: its
encoder takes the whole picture, at most 16383 px a side). Alpha travels in the same stream;
an ICC profile kept from the input is applied by converting the sRGB result back to it.
The file is written to a local temporary path and published atomically
(:func:`pipeline.imaging.imageio.local_output`).
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyvips

from pipeline.imaging.canvas import Canvas, MemoryCanvas
from pipeline.imaging.heap import release_free_heap
from pipeline.imaging.imageio import check_output, local_output, save_vips
from pipeline.imaging.tiles import Rect

__all__ = ["canvas_image", "canvas_png_stream", "canvas_to_uint8", "write_canvas"]

# Rows converted per band of the PNG stream.
BAND_ROWS = 64


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def canvas_to_uint8(canvas: Canvas, height: int, width: int, *, band: int = 256) -> np.ndarray:
    """The image part of a canvas as ``(H, W, 3)`` uint8, converted a band of rows at a time
    with the writer's rounding (the Ray actors send the last level this way)."""
    out = np.empty((height, width, 3), np.uint8)
    for y in range(0, height, band):
        rows = canvas.read(Rect(y, 0, min(y + band, height), width))
        out[y : y + rows.shape[1]] = _to_uint8(rows.transpose(1, 2, 0))
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def canvas_png_stream(
    canvas: Canvas, height: int, width: int, alpha: Canvas | None = None, *, band: int = BAND_ROWS
) -> Iterator[bytes]:
    """The ``height`` x ``width`` image on ``canvas`` (and ``alpha``) as the pieces of a PNG file.

    8-bit RGB or RGBA, rows unfiltered, deflate level 0: producing it is a copy, and a PNG
    decoder reads it back row by row. One band of rows is in memory at a time.
    """
    colour_type = 2 if alpha is None else 6  # RGB or RGBA
    yield b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
    deflate = zlib.compressobj(0)
    for y in range(0, height, band):
        release_free_heap()
        rect = Rect(y, 0, min(y + band, height), width)
        pixels = canvas.read(rect)
        if alpha is not None:
            pixels = np.concatenate([pixels, alpha.read(rect)])
        rows = np.zeros((rect.height, 1 + width * pixels.shape[0]), np.uint8)  # filter byte 0, then samples
        rows[:, 1:] = _to_uint8(pixels.transpose(1, 2, 0)).reshape(rect.height, -1)
        yield _chunk(b"IDAT", deflate.compress(rows.data) + deflate.flush(zlib.Z_FULL_FLUSH))
    yield _chunk(b"IDAT", deflate.flush()) + _chunk(b"IEND", b"")


class _StreamReader:
    """``read(n)`` over an iterator of byte strings (what :class:`pyvips.SourceCustom` calls)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = memoryview(b"")

    def read(self, size: int) -> bytes | None:
        while not self._buffer:
            piece = next(self._pieces, None)
            if piece is None:
                return None
            self._buffer = memoryview(piece)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return bytes(out)


def canvas_image(canvas: Canvas, height: int, width: int, alpha: Canvas | None = None) -> tuple[pyvips.Image, Any]:
    """A sequential libvips image of the canvas, and the source object that must outlive it."""
    source = pyvips.SourceCustom()
    source.on_read(_StreamReader(canvas_png_stream(canvas, height, width, alpha)).read)
    return pyvips.Image.new_from_source(source, "", access="sequential"), source


def _to_profile(image: pyvips.Image, icc_profile: bytes, folder: str) -> pyvips.Image:
    """Convert the sRGB ``image`` to the RGB profile it came from (libvips takes it by file name)."""
    path = os.path.join(folder, "profile.icc")
    with open(path, "wb") as f:
        f.write(icc_profile)
    return image.icc_transform(path, input_profile="srgb", intent="relative")


def write_canvas(
    uri: str,
    canvas: Canvas,
    height: int,
    width: int,
    *,
    alpha: np.ndarray | Canvas | None = None,
    icc_profile: bytes | None = None,
    quality: int = 95,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Write the ``height`` x ``width`` image on ``canvas`` to ``uri`` (format by extension).

    Args:
        uri: output URI; see :func:`pipeline.imaging.imageio.save_vips` for what each extension gives.
        canvas: output canvas of the cascade (float32 RGB, may exceed [0, 1]).
        height, width: the image size (the canvas is padded beyond it).
        alpha: ``(H, W)`` float32 alpha, or a ``(1, H, W)`` canvas of it, to re-attach
            (dropped for JPEG).
        icc_profile: the input's RGB ICC profile: the sRGB result is converted to it and it is
            embedded.
        quality: JPEG/WebP (and DeepZoom tile) quality.
        storage_options: passed to the output filesystem.
    """
    fmt = check_output(uri, width, height)
    if isinstance(alpha, np.ndarray):
        alpha = MemoryCanvas(np.asarray(alpha, np.float32)[None])
    image, source = canvas_image(canvas, height, width, alpha)
    with tempfile.TemporaryDirectory(prefix="ultrastyle-out-") as folder, local_output(uri, storage_options) as path:
        if icc_profile:
            image = _to_profile(image, icc_profile, folder)
        save_vips(image, path, fmt, quality=quality)
    del image, source
