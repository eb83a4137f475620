"""Reading a (tiled or stripped) TIFF straight onto a canvas, one segment at a time.

Gigapixel inputs arrive as TIFFs. Decoding one whole would need its full size in memory, so
the segments (tiles or strips) are decoded one by one from the fsspec file and written to a
disk canvas, which is then reflect-padded to the 16-px grid in place. Only one segment and
the thin padding bands are ever held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from pipeline.canvas import Canvas, open_canvas, reflect_pad_canvas
from pipeline.cascade import MIN_SIDE
from pipeline.imageio import DEFAULT_MAX_PIXELS, ImageError, check_pixels
from pipeline.tiles import Rect, canvas_size

__all__ = ["StreamedImage", "is_tiff", "read_tiff_canvas"]


@dataclass
class StreamedImage:
    """An image that lives on canvases rather than in one array.

    Attributes:
        canvas: ``(3, H', W')`` reflect-padded float32 RGB in [0, 1] (``H'``, ``W'`` multiples of 16).
        height, width: the image size.
        alpha: ``(1, H, W)`` canvas of alpha in [0, 1], or ``None``.
        icc_profile: embedded ICC profile, or ``None``.
    """

    canvas: Canvas
    height: int
    width: int
    alpha: Canvas | None = None
    icc_profile: bytes | None = None
    format: str = "TIFF"

    def close(self) -> None:
        """Release the canvases (their files, for disk canvases)."""
        self.canvas.close()
        if self.alpha is not None:
            self.alpha.close()


def is_tiff(uri: str) -> bool:
    return uri.lower().endswith((".tif", ".tiff"))


def _scale(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def read_tiff_canvas(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    workdir: str | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> StreamedImage:
    """Decode the first page of a TIFF segment by segment onto a padded canvas.

    Args:
        uri: any fsspec URI of a TIFF (grey, grey+alpha, RGB or RGBA; 8/16-bit or float).
        storage_options: passed to the filesystem.
        workdir: folder for the disk canvases (``None``: in memory).
        max_pixels: refuse larger images before decoding anything.

    Raises:
        ImageError: unreadable, not a TIFF, unsupported layout, too large or too small.
    """
    import tifffile

    canvas = alpha = None
    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as f, tifffile.TiffFile(f) as tif:
            page = tif.pages[0]
            height, width = page.imagelength, page.imagewidth
            samples = page.samplesperpixel
            check_pixels(uri, width, height, max_pixels)
            if min(height, width) < MIN_SIDE:
                raise ImageError(f"{uri} is {width}x{height}; the smallest side handled is {MIN_SIDE} px")
            if samples not in (1, 2, 3, 4) or (page.planarconfig != 1 and samples > 1):
                layout = f"{samples} samples, planar config {page.planarconfig}"
                raise ImageError(f"{uri}: unsupported TIFF layout ({layout})")
            icc = page.tags.get(34675)
            canvas = open_canvas(3, *canvas_size(height, width), workdir=workdir, name="input")
            has_alpha = samples in (2, 4)
            alpha = open_canvas(1, height, width, workdir=workdir, name="alpha") if has_alpha else None
            scale = _scale(page.dtype)
            for segment, index, _ in page.segments():
                y, x = index[2], index[3]
                seg = segment[0][: height - y, : width - x]
                rect = Rect(y, x, y + seg.shape[0], x + seg.shape[1])
                values = seg.astype(np.float32).transpose(2, 0, 1) / scale
                colour = values[:1].repeat(3, axis=0) if samples <= 2 else values[:3]
                canvas.write(rect, colour)
                if alpha is not None:
                    alpha.write(rect, values[-1:])
    except Exception as e:
        for opened in (canvas, alpha):
            if opened is not None:
                opened.close()
        if isinstance(e, ImageError):
            raise
        if isinstance(e, FileNotFoundError):
            raise ImageError(f"no such file: {uri}") from e
        raise ImageError(f"{uri} is not a readable TIFF: {type(e).__name__}: {e}") from e
    reflect_pad_canvas(canvas, height, width)
    return StreamedImage(canvas, height, width, alpha, icc.value if icc is not None else None)
