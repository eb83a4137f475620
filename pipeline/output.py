"""Writing a stylized canvas to its output URI, streaming tiles for large TIFFs.

PNG, JPEG and WebP need the whole 8-bit image in memory (3 bytes per pixel); a ``.tif``/
``.tiff`` output is written as a tiled BigTIFF one 256x256 tile at a time straight from the
canvas, so it never exists whole. Both are written atomically (see
:func:`pipeline.imageio.write_bytes`; a TIFF goes through a local temporary file first).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
from fsspec.core import url_to_fs

from pipeline.canvas import Canvas, MemoryCanvas
from pipeline.imageio import FILE_MODE, encode_image, output_format, write_bytes
from pipeline.tiles import Rect

__all__ = ["TIFF_TILE", "canvas_to_uint8", "write_canvas"]

TIFF_TILE = 256


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def canvas_to_uint8(canvas: Canvas, height: int, width: int, *, band: int = 256) -> np.ndarray:
    """The image part of a canvas as ``(H, W, 3)`` uint8, converted a band of rows at a time."""
    out = np.empty((height, width, 3), np.uint8)
    for y in range(0, height, band):
        rows = canvas.read(Rect(y, 0, min(y + band, height), width))
        out[y : y + rows.shape[1]] = _to_uint8(rows.transpose(1, 2, 0))
    return out


def _tiff_tiles(canvas: Canvas, height: int, width: int, alpha: Canvas | None) -> Iterator[np.ndarray]:
    for y in range(0, height, TIFF_TILE):
        for x in range(0, width, TIFF_TILE):
            rect = Rect(y, x, min(y + TIFF_TILE, height), min(x + TIFF_TILE, width))
            tile = np.zeros((TIFF_TILE, TIFF_TILE, 3 if alpha is None else 4), np.uint8)
            tile[: rect.height, : rect.width, :3] = _to_uint8(canvas.read(rect).transpose(1, 2, 0))
            if alpha is not None:
                tile[: rect.height, : rect.width, 3] = _to_uint8(alpha.read(rect)[0])
            yield tile


def _write_tiff(
    uri: str,
    canvas: Canvas,
    height: int,
    width: int,
    alpha: Canvas | None,
    icc_profile: bytes | None,
    storage_options: dict[str, Any] | None,
) -> None:
    import tifffile

    fs, path = url_to_fs(uri, **(storage_options or {}))
    local = "file" in np.atleast_1d(fs.protocol)
    folder = os.path.dirname(path) if local else None
    if folder:
        os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".tif")
    os.close(fd)
    try:
        extratags = [(34675, 7, len(icc_profile), icc_profile, True)] if icc_profile else []
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            tif.write(
                _tiff_tiles(canvas, height, width, alpha),
                shape=(height, width, 3 if alpha is None else 4),
                dtype=np.uint8,
                tile=(TIFF_TILE, TIFF_TILE),
                photometric="rgb",
                extrasamples=None if alpha is None else ("unassalpha",),
                compression="zlib",
                extratags=extratags,
            )
        if local:
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        else:
            fs.put_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
        uri: output URI; ``.tif``/``.tiff`` gives a tiled BigTIFF streamed from the canvas.
        canvas: output canvas of the cascade (float32 RGB, may exceed [0, 1]).
        height, width: the image size (the canvas is padded beyond it).
        alpha: ``(H, W)`` float32 alpha, or a ``(1, H, W)`` canvas of it, to re-attach
            (dropped for JPEG).
        icc_profile: ICC profile to embed.
        quality: JPEG/WebP quality.
        storage_options: passed to the output filesystem.
    """
    fmt = output_format(uri)
    if isinstance(alpha, np.ndarray):
        alpha = MemoryCanvas(alpha[None])
    if fmt == "TIFF":
        _write_tiff(uri, canvas, height, width, alpha, icc_profile, storage_options)
        return
    rgb = canvas_to_uint8(canvas, height, width)
    alpha_array = None if alpha is None else alpha.read(Rect(0, 0, height, width))[0]
    data = encode_image(rgb, fmt, alpha=alpha_array, icc_profile=icc_profile, quality=quality)
    write_bytes(uri, data, storage_options)
