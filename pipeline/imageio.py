"""Image reading and writing through fsspec and Pillow (tifffile for large TIFFs).

Every reader returns float32 RGB in [0, 1] with the alpha channel and ICC profile kept aside,
whatever the file held: EXIF orientation is applied, and grey, palette, RGBA, 16-bit and CMYK
images are converted. Failures raise :class:`ImageError` with a one-line message naming the
URI, so a batch job can put it in its manifest and go on.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from fsspec.core import url_to_fs
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FILE_MODE",
    "IMAGE_EXTENSIONS",
    "ImageError",
    "LoadedImage",
    "check_pixels",
    "encode_image",
    "image_size",
    "output_format",
    "read_image",
    "write_bytes",
]

DEFAULT_MAX_PIXELS = 1_000_000_000
# Pillow's own bomb guard is replaced by --max-pixels, checked before decoding.
Image.MAX_IMAGE_PIXELS = None

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
# Extensions taken as images when listing a prefix or telling a file from a prefix.
IMAGE_EXTENSIONS = frozenset(_FORMATS) | {".bmp", ".gif"}


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# Mode of written outputs: what open() would give under the process umask.
FILE_MODE = _umask_mode()


class ImageError(ValueError):
    """An input could not be read as an image, or is refused (too large, too small)."""


@dataclass
class LoadedImage:
    """A decoded image.

    Attributes:
        rgb: ``(H, W, 3)`` float32 in [0, 1] (the engine also takes uint8, as the benchmark's
            generated images are, to save memory).
        alpha: ``(H, W)`` float32 in [0, 1], or ``None``.
        icc_profile: the embedded ICC profile bytes, or ``None``.
        format: Pillow's name of the source format (``JPEG``, ``PNG``, ``TIFF``, ...).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    icc_profile: bytes | None = None
    format: str = "PNG"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


def _open_bytes(uri: str, storage_options: dict[str, Any] | None) -> bytes:
    fs, path = url_to_fs(uri, **(storage_options or {}))
    try:
        return fs.cat_file(path)
    except FileNotFoundError as e:
        raise ImageError(f"no such file: {uri}") from e
    except Exception as e:
        raise ImageError(f"cannot read {uri}: {type(e).__name__}: {e}") from e


def check_pixels(uri: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse an image over ``max_pixels`` (a decompression bomb guard, before decoding)."""
    if width * height > max_pixels:
        raise ImageError(
            f"{uri} is {width}x{height} = {width * height:,} pixels, over --max-pixels {max_pixels:,}"
        )


def _to_float_rgb(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert any Pillow mode to float RGB and optional alpha, both in [0, 1]."""
    alpha = None
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        scale = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(arr / scale, 0, 1)
        return np.repeat(grey[..., None], 3, axis=2), None
    if mode == "CMYK":
        img = img.convert("RGB")
    elif mode in ("P", "PA"):
        img = img.convert("RGBA" if ("transparency" in img.info or mode == "PA") else "RGB")
    elif mode in ("LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3])
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0, alpha


def image_size(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[int, int]:
    """``(width, height)`` from the header alone (after EXIF orientation)."""
    data = _open_bytes(uri, storage_options)
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            return w, h
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{uri} is not a readable image: {e}") from e


def read_image(
    uri: str, storage_options: dict[str, Any] | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Read and convert an image from any fsspec URI.

    Args:
        uri: local path or fsspec URI.
        storage_options: passed to the filesystem.
        max_pixels: refuse images with more pixels than this before decoding them.

    Raises:
        ImageError: missing, unreadable, not an image, truncated, or over ``max_pixels``.
    """
    data = _open_bytes(uri, storage_options)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageError(f"{uri} is not an image Pillow can identify") from e
    except OSError as e:
        raise ImageError(f"{uri} is not a readable image: {e}") from e
    check_pixels(uri, *img.size, max_pixels)
    if _is_deep_tiff(img):
        return _read_tiff(uri, data)
    try:
        img.load()
        fmt = img.format or "PNG"
        icc = img.info.get("icc_profile")
        img = ImageOps.exif_transpose(img)
        rgb, alpha = _to_float_rgb(img)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{uri} is corrupt or truncated: {e}") from e
    return LoadedImage(rgb, alpha, icc, fmt)


def _is_deep_tiff(img: Image.Image) -> bool:
    """True for TIFFs Pillow would read lossily (16-bit RGB) and tifffile reads exactly."""
    if img.format != "TIFF":
        return False
    bits = img.tag_v2.get(258)  # BitsPerSample
    samples = img.tag_v2.get(277, 1)  # SamplesPerPixel
    return bits is not None and samples >= 3 and max(np.atleast_1d(bits)) > 8


def _read_tiff(uri: str, data: bytes) -> LoadedImage:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            arr = tif.pages[0].asarray()
    except Exception as e:
        raise ImageError(f"{uri} is a TIFF tifffile cannot decode: {e}") from e
    scale = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else 1.0
    arr = arr.astype(np.float32) / scale
    alpha = arr[..., 3] if arr.shape[-1] == 4 else None
    return LoadedImage(np.ascontiguousarray(arr[..., :3]), alpha, None, "TIFF")


def output_format(uri: str) -> str:
    """Pillow format name for an output URI, from its extension."""
    ext = PurePosixPath(uri).suffix.lower()
    if ext not in _FORMATS:
        raise ImageError(f"cannot write {uri}: extension {ext!r} is not one of {sorted(_FORMATS)}")
    return _FORMATS[ext]


def encode_image(
    rgb: np.ndarray,
    fmt: str,
    *,
    alpha: np.ndarray | None = None,
    icc_profile: bytes | None = None,
    quality: int = 95,
) -> bytes:
    """Encode RGB ``(H, W, 3)`` (uint8, or float in [0, 1]) and alpha as file bytes of format ``fmt``."""
    arr = rgb if rgb.dtype == np.uint8 else (np.clip(rgb, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if alpha is not None and fmt != "JPEG":
        img.putalpha(Image.fromarray((np.clip(alpha, 0, 1) * 255.0 + 0.5).astype(np.uint8), "L"))
    params: dict[str, Any] = {}
    if icc_profile:
        params["icc_profile"] = icc_profile
    if fmt in ("JPEG", "WEBP"):
        params["quality"] = quality
    if fmt == "TIFF":
        params["compression"] = "tiff_deflate"
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def write_bytes(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` atomically: temp file + rename locally, one PUT (or completed multipart) remotely."""
    fs, path = url_to_fs(uri, **(storage_options or {}))
    if "file" in np.atleast_1d(fs.protocol):
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; outputs get the usual umask mode
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    fs.pipe_file(path, data)
