"""Image reading and writing through libvips (pyvips) and fsspec.

Decoding goes through one libvips pipeline whatever the file holds: EXIF orientation is
applied, an embedded ICC profile converts the colours to sRGB, CMYK without a profile is
converted as Pillow does, grey is repeated to RGB, palettes are expanded, and an alpha
channel is kept aside. :func:`read_canvas` runs that pipeline a strip of rows at a time
straight onto a disk canvas, in the file's own 8 or 16 bits, so a gigapixel input never
exists in memory; :func:`read_image` returns the whole image as float32 arrays, for the
small images (styles, training crops) that are used whole. Local files are read by libvips
itself; other fsspec URIs (``s3://...``) through a libvips source that reads the fsspec file
on demand, so no local copy is made. Failures raise :class:`ImageError` with a one-line
message naming the URI, so a batch job can put it in its manifest and go on.

An animated GIF (or any multi-page file) is read as its first frame.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyvips
from fsspec.core import url_to_fs

from pipeline.errors import DiskFullError, is_disk_full, one_line_error
from pipeline.imaging.canvas import Canvas, open_canvas, reflect_pad_canvas
from pipeline.imaging.deepzoom import viewer_page
from pipeline.imaging.heap import release_free_heap
from pipeline.imaging.tiles import Rect, canvas_size
from pipeline.options import DEFAULT_MAX_PIXELS

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FILE_MODE",
    "IMAGE_EXTENSIONS",
    "OUTPUT_LIMITS",
    "ImageError",
    "LoadedImage",
    "StreamedImage",
    "check_output",
    "check_pixels",
    "encode_image",
    "image_size",
    "local_output",
    "output_format",
    "read_canvas",
    "read_image",
    "save_vips",
    "write_bytes",
]

# The smallest side the cascade handles (five 2x poolings leave at least one 2x2 cell);
# pipeline.engine.cascade.MIN_SIDE, repeated so that reading an image does not import torch.
MIN_SIDE = 32

# Output extension -> format name. "PTIF" is a tiled pyramidal TIFF, "DZI" a DeepZoom
# pyramid (``name.dzi`` beside a ``name_files/`` folder of tiles): the zoomable outputs.
_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".ptif": "PTIF",
    ".dzi": "DZI",
}
# Extensions taken as images when listing a prefix or telling a file from a prefix.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif"})
# Largest side each output format can store.
OUTPUT_LIMITS = {
    "JPEG": 65_535, "WEBP": 16_383, "PNG": 2**31 - 1, "TIFF": 2**32 - 1, "PTIF": 2**32 - 1, "DZI": 2**31 - 1
}
# DeepZoom tile side and overlap (the format's customary 254 + 1 + 1 = 256).
DZ_TILE, DZ_OVERLAP = 254, 1
# Rows decoded per strip by read_canvas (a JPEG MCU row at 4:2:0): 1.9 MB for a 40000-px-wide
# image. 128 rows decoded no faster and peaked 90 MB higher on a 38700-px-wide JPEG.
STRIP_ROWS = 16
# libvips format of the decoded samples -> canvas dtype.
_CANVAS_DTYPE = {"uchar": np.uint8, "ushort": np.uint16, "float": np.float32}
# White of the sample formats that are stored as float32 (double and float are taken as [0, 1]).
_FULL_SCALE = {"char": 127.0, "short": 32767.0, "int": 2.0**31 - 1, "uint": 2.0**32 - 1}
# libvips loader name prefix -> the format name the rest of the project uses.
_LOADER_FORMAT = {"jpeg": "JPEG", "png": "PNG", "tiff": "TIFF", "webp": "WEBP", "gif": "GIF", "heif": "HEIF"}


# Every libvips pipeline here runs once; the operation cache would only keep their buffers
# (57 MB after decoding a 38700x1200 JPEG).
pyvips.cache_set_max(0)


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
    """A decoded image held in memory.

    Attributes:
        rgb: ``(H, W, 3)`` float32 in [0, 1] (the engine also takes uint8, as the benchmark's
            generated images are, to save memory).
        alpha: ``(H, W)`` float32 in [0, 1], or ``None``.
        icc_profile: the embedded RGB ICC profile the output is converted back to, or ``None``.
        format: the source format (``JPEG``, ``PNG``, ``TIFF``, ...).
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


@dataclass
class StreamedImage:
    """An image that lives on canvases rather than in one array.

    Attributes:
        canvas: ``(3, H', W')`` reflect-padded RGB (``H'``, ``W'`` multiples of 16), stored in
            the file's own depth and read as float32 in [0, 1].
        height, width: the image size.
        alpha: ``(1, H, W)`` canvas of alpha, or ``None``.
        icc_profile: the embedded RGB ICC profile the output is converted back to, or ``None``.
        format: the source format.
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


def _is_local(fs: Any) -> bool:
    return "file" in np.atleast_1d(fs.protocol)


class _SourceFile:
    """A file object as the read and seek callbacks of a :class:`pyvips.SourceCustom`.

    An exception cannot cross libvips from a callback: cffi would print its traceback and
    hand libvips a zero, which reads as a truncated file. So a callback that raises (a
    dropped connection, a stop signal arriving while Python reads) keeps the exception in
    :attr:`error` and returns -1, libvips fails the operation, and :func:`_open_vips` raises
    the kept exception in its place.
    """

    def __init__(self, file: Any) -> None:
        self._file = file
        self.error: BaseException | None = None

    def source(self) -> pyvips.SourceCustom:
        source = pyvips.SourceCustom()
        source.signal_connect("read", self._read)
        source.signal_connect("seek", self._seek)
        return source

    def _read(self, buffer: Any) -> int:
        try:
            chunk = self._file.read(len(buffer))
        except BaseException as e:
            self.error = self.error or e
            return -1
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def _seek(self, offset: int, whence: int) -> int:
        try:
            return self._file.seek(offset, whence)
        except BaseException as e:
            self.error = self.error or e
            return -1


@contextlib.contextmanager
def _open_vips(uri: str, storage_options: dict[str, Any] | None, access: str) -> Iterator[pyvips.Image]:
    """The first page of ``uri`` as a lazy libvips image (only the header is read here).

    A remote file is read through a :class:`pyvips.SourceCustom` over the fsspec file, which
    stays open until the ``with`` block ends.
    """
    try:
        fs, path = url_to_fs(uri, **(storage_options or {}))
        if _is_local(fs):
            if not os.path.isfile(path):
                raise FileNotFoundError(path)
            yield pyvips.Image.new_from_file(path, access=access, fail_on="error")
            return
        with fs.open(path, "rb") as f:
            reader = _SourceFile(f)
            try:
                yield pyvips.Image.new_from_source(reader.source(), "", access=access, fail_on="error")
            except BaseException as e:
                if reader.error is not None and reader.error is not e:
                    raise reader.error from None  # what stopped libvips' reads, not the read error it saw
                raise
    except FileNotFoundError as e:
        raise ImageError(f"no such file: {uri}") from e
    except pyvips.Error as e:
        raise ImageError(f"{uri} is not an image libvips can read: {one_line_error(e)}") from e


def _orientation(image: pyvips.Image) -> int:
    return image.get("orientation") if image.get_typeof("orientation") else 1


def _header_size(image: pyvips.Image) -> tuple[int, int]:
    """``(width, height)`` after EXIF orientation."""
    if _orientation(image) in (5, 6, 7, 8):
        return image.height, image.width
    return image.width, image.height


def _format(image: pyvips.Image) -> str:
    loader = image.get("vips-loader") if image.get_typeof("vips-loader") else ""
    return next((name for prefix, name in _LOADER_FORMAT.items() if loader.startswith(prefix)), loader.upper())


def check_pixels(uri: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse an image over ``max_pixels`` (a decompression bomb guard, before decoding)."""
    if width * height > max_pixels:
        raise ImageError(
            f"{uri} is {width}x{height} = {width * height:,} pixels, over --max-pixels {max_pixels:,}"
        )


def image_size(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[int, int]:
    """``(width, height)`` from the header alone (after EXIF orientation)."""
    with _open_vips(uri, storage_options, "sequential") as image:
        return _header_size(image)


@dataclass
class _Decoded:
    """The conversion pipeline of one file: sRGB colour and alpha, both lazy libvips images."""

    colour: pyvips.Image
    alpha: pyvips.Image | None
    icc_profile: bytes | None
    format: str
    dtype: np.dtype


def _cmyk_to_rgb(cmyk: pyvips.Image) -> pyvips.Image:
    """CMYK without a profile, as Pillow converts it: ``R = (255 - C)(255 - K) / 255``."""
    full = 65535 if cmyk.format == "ushort" else 255
    white = full - cmyk
    return (white[:3] * white[3] / full + 0.5).cast(cmyk.format)


def _convert(uri: str, image: pyvips.Image) -> _Decoded:
    """Build the lazy pipeline from the file's bands to sRGB (+ alpha) in its own depth."""
    fmt = _format(image)
    if _orientation(image) != 1:
        image = image.autorot()
    alpha = None
    if image.hasalpha():
        alpha = image[image.bands - 1]
        image = image.extract_band(0, n=image.bands - 1)
    profile = image.get("icc-profile-data") if image.get_typeof("icc-profile-data") else None
    kept_profile = None
    if image.interpretation == "cmyk" and profile is None:
        image = _cmyk_to_rgb(image)
    elif profile is not None:
        depth = 16 if image.format == "ushort" else 8
        try:
            image = image.icc_transform("srgb", embedded=True, depth=depth, intent="relative")
        except pyvips.Error as e:
            raise ImageError(f"{uri} has an ICC profile libvips cannot use: {one_line_error(e)}") from e
        kept_profile = profile if image.bands == 3 and len(profile) > 16 and profile[16:20] == b"RGB " else None
    elif image.bands == 1:
        image = image.bandjoin([image, image])
    elif image.bands != 3 or image.interpretation not in ("srgb", "rgb16", "rgb", "multiband"):
        image = image.colourspace("rgb16" if image.format == "ushort" else "srgb")
    if image.bands != 3:
        raise ImageError(f"{uri}: cannot convert {image.bands} bands ({image.interpretation}) to RGB")
    if image.format not in _CANVAS_DTYPE:
        # Rare sample formats (signed, 32-bit, double) go through float in [0, 1].
        image = (image / _FULL_SCALE.get(image.format, 1.0)).cast("float")
    if alpha is not None and alpha.format != image.format:
        alpha = alpha.cast(image.format)
    return _Decoded(image, alpha, kept_profile, fmt, np.dtype(_CANVAS_DTYPE[image.format]))


def _check_size(uri: str, image: pyvips.Image, max_pixels: int) -> tuple[int, int]:
    width, height = _header_size(image)
    check_pixels(uri, width, height, max_pixels)
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{uri} is {width}x{height}; the smallest side handled is {MIN_SIDE} px")
    return width, height


def _strips(image: pyvips.Image, dtype: np.dtype, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(y, (h, W, bands) samples)`` of ``image``, top to bottom, ``rows`` rows at a time.

    One :class:`pyvips.Region` pulls the strips in order through one pipeline, which is what a
    sequential-access image allows (separate crops would each restart the decoder's window).
    """
    region = pyvips.Region.new(image)
    for y in range(0, image.height, rows):
        h = min(rows, image.height - y)
        yield y, np.frombuffer(region.fetch(0, y, image.width, h), dtype).reshape(h, image.width, image.bands)


def read_canvas(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    workdir: str | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> StreamedImage:
    """Decode an image a strip at a time onto a reflect-padded canvas.

    The canvas stores the decoded samples (uint8 for 8-bit files, uint16 for 16-bit, float32
    for float TIFFs); only one strip of rows is in memory at a time. The size is checked
    against ``max_pixels`` from the header, before any pixel is decoded.

    Args:
        uri: local path or fsspec URI of a JPEG, PNG, WebP, TIFF (incl. BigTIFF), GIF, ...
        storage_options: passed to the filesystem.
        workdir: folder for the disk canvases (``None``: in memory).
        max_pixels: refuse larger images before decoding them.

    Raises:
        ImageError: missing, not an image, corrupt, truncated, too large or too small.
    """
    canvas = alpha = None
    # Sequential access streams; a rotation needs the pixels out of order, which libvips
    # then serves from its own temporary copy (on disk above 100 MB).
    with _open_vips(uri, storage_options, "sequential") as header:
        rotated = _orientation(header) != 1
    with _open_vips(uri, storage_options, "random" if rotated else "sequential") as image:
        width, height = _check_size(uri, image, max_pixels)
        decoded = _convert(uri, image)
        dtype = decoded.dtype
        try:
            canvas = open_canvas(3, *canvas_size(height, width), workdir=workdir, name="input", dtype=dtype)
            if decoded.alpha is not None:
                alpha = open_canvas(1, height, width, workdir=workdir, name="alpha", dtype=dtype)
            joined = decoded.colour if decoded.alpha is None else decoded.colour.bandjoin(decoded.alpha)
            for y, strip in _strips(joined, dtype, STRIP_ROWS):
                release_free_heap()
                rows = strip.transpose(2, 0, 1)
                rect = Rect(y, 0, y + rows.shape[1], width)
                canvas.write(rect, rows[:3])
                if alpha is not None:
                    alpha.write(rect, rows[3:])
        except Exception as e:
            for opened in (canvas, alpha):
                if opened is not None:
                    opened.close()
            if isinstance(e, pyvips.Error) and is_disk_full(e):  # libvips' own copy of a rotated image
                raise DiskFullError.at(tempfile.gettempdir()) from e
            if isinstance(e, pyvips.Error):
                raise ImageError(f"{uri} is corrupt or truncated: {one_line_error(e)}") from e
            raise
    reflect_pad_canvas(canvas, height, width)
    return StreamedImage(canvas, height, width, alpha, decoded.icc_profile, decoded.format)


def read_image(
    uri: str, storage_options: dict[str, Any] | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Read and convert a whole image from any fsspec URI into float32 arrays.

    Args:
        uri: local path or fsspec URI.
        storage_options: passed to the filesystem.
        max_pixels: refuse images with more pixels than this before decoding them.

    Raises:
        ImageError: missing, unreadable, not an image, truncated, or over ``max_pixels``.
    """
    with _open_vips(uri, storage_options, "random") as image:
        width, height = _header_size(image)
        check_pixels(uri, width, height, max_pixels)
        decoded = _convert(uri, image)
        joined = decoded.colour if decoded.alpha is None else decoded.colour.bandjoin(decoded.alpha)
        try:
            samples = np.concatenate([strip for _, strip in _strips(joined, decoded.dtype, height)])
        except pyvips.Error as e:
            raise ImageError(f"{uri} is corrupt or truncated: {one_line_error(e)}") from e
    scale = np.float32(255 if decoded.dtype == np.uint8 else 65535 if decoded.dtype == np.uint16 else 1)
    values = samples.astype(np.float32) / scale
    alpha = None if decoded.alpha is None else np.ascontiguousarray(values[..., 3])
    return LoadedImage(np.ascontiguousarray(values[..., :3]), alpha, decoded.icc_profile, decoded.format)


def output_format(uri: str) -> str:
    """Format name of an output URI, from its extension (see the module's ``_FORMATS``)."""
    ext = PurePosixPath(uri).suffix.lower()
    if ext not in _FORMATS:
        raise ImageError(f"cannot write {uri}: extension {ext!r} is not one of {sorted(_FORMATS)}")
    return _FORMATS[ext]


def check_output(uri: str, width: int, height: int) -> str:
    """The output format of ``uri``, after checking it can hold a ``width`` x ``height`` image.

    Called before stylizing, so a wrong extension or an image too large for the format fails
    at once instead of after the work.
    """
    fmt = output_format(uri)
    if max(width, height) > OUTPUT_LIMITS[fmt]:
        limit = OUTPUT_LIMITS[fmt]
        raise ImageError(f"cannot write {uri}: {fmt} holds at most {limit} px a side, not {width}x{height}")
    return fmt


def _with_profile(image: pyvips.Image, icc_profile: bytes | None) -> pyvips.Image:
    if not icc_profile:
        return image
    image = image.copy()
    image.set_type(pyvips.GValue.blob_type, "icc-profile-data", icc_profile)
    return image


def save_vips(image: pyvips.Image, path: str, fmt: str, *, quality: int = 95) -> None:
    """Encode a libvips image to the local ``path`` in format ``fmt`` (see :func:`output_format`).

    JPEG and WebP take ``quality``; PNG and TIFF are lossless (deflate); TIFF is tiled
    BigTIFF, PTIF the same with a pyramid of halved levels, DZI a DeepZoom folder of 256-px
    JPEG tiles beside ``path`` with a viewer page ``name.html`` (:mod:`pipeline.imaging.deepzoom`).
    Alpha is dropped for JPEG (and DeepZoom tiles).
    """
    if fmt in ("JPEG", "DZI") and image.hasalpha():
        image = image.extract_band(0, n=image.bands - 1)
    if fmt == "JPEG":
        image.jpegsave(path, Q=quality)
    elif fmt == "WEBP":
        image.webpsave(path, Q=quality)
    elif fmt == "PNG":
        image.pngsave(path, compression=6)
    elif fmt in ("TIFF", "PTIF"):
        image.tiffsave(
            path, tile=True, tile_width=256, tile_height=256, compression="deflate",
            predictor="horizontal", bigtiff=True, pyramid=fmt == "PTIF",
        )
    else:
        base = path[: -len(".dzi")] if path.endswith(".dzi") else path
        image.dzsave(base, layout="dz", tile_size=DZ_TILE, overlap=DZ_OVERLAP, suffix=f".jpg[Q={quality}]")
        page = viewer_page(os.path.basename(base), image.width, image.height, tile=DZ_TILE, overlap=DZ_OVERLAP,
                           suffix="jpg")
        with open(base + ".html", "w", encoding="utf-8") as f:
            f.write(page)


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
    if alpha is not None and fmt != "JPEG":
        a = alpha if alpha.dtype == np.uint8 else (np.clip(alpha, 0, 1) * 255.0 + 0.5).astype(np.uint8)
        arr = np.concatenate([arr, a[..., None]], axis=2)
    image = pyvips.Image.new_from_array(np.ascontiguousarray(arr)).copy(interpretation="srgb")
    with tempfile.TemporaryDirectory(prefix="ultrastyle-encode-") as folder:
        path = os.path.join(folder, "image" + {"JPEG": ".jpg", "DZI": ".dzi"}.get(fmt, "." + fmt.lower()))
        save_vips(_with_profile(image, icc_profile), path, fmt, quality=quality)
        with open(path, "rb") as f:
            return f.read()


@contextlib.contextmanager
def local_output(uri: str, storage_options: dict[str, Any] | None = None) -> Iterator[str]:
    """A local temporary path to write ``uri``'s content to; published atomically on success.

    Locally the temporary file sits beside the target and is renamed over it; remotely it is
    uploaded with the filesystem's ``put`` (s3fs: one PUT, or a completed multipart upload),
    so a reader never sees a partial object. A full disk while writing raises
    :class:`~pipeline.errors.DiskFullError` naming the file system. Everything written under the temporary path's
    folder whose name starts with the temporary name (a DeepZoom ``_files`` folder) is
    published with it, renamed the same way.
    """
    fs, path = url_to_fs(uri, **(storage_options or {}))
    local = _is_local(fs)
    parent = os.path.dirname(path)
    if local:
        os.makedirs(parent or ".", exist_ok=True)
    staging = tempfile.mkdtemp(dir=(parent or ".") if local else None, prefix=".tmp-")
    name = os.path.basename(path)
    try:
        try:
            yield os.path.join(staging, name)
        except Exception as e:  # libvips or a plain write found the disk full: say which one
            if is_disk_full(e) and not isinstance(e, DiskFullError):
                raise DiskFullError.at(os.path.join(staging, name)) from e
            raise
        # The named file last: it is what readers look for, so it appears once the rest is there.
        for entry in sorted(os.listdir(staging), key=lambda e: e == name):
            src, target = os.path.join(staging, entry), f"{parent}/{entry}" if parent else entry
            if not local:
                # put_file for a file: put would first ask whether the target is a folder (a LIST on S3).
                if os.path.isdir(src):
                    fs.put(src, target, recursive=True)
                else:
                    fs.put_file(src, target)
                continue
            if os.path.isdir(src):
                shutil.rmtree(target, ignore_errors=True)
            else:
                os.chmod(src, FILE_MODE)  # temporary files are 0600; outputs get the umask mode
            os.replace(src, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_bytes(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` atomically: temp file + rename locally, one PUT (or completed multipart) remotely."""
    with local_output(uri, storage_options) as path, open(path, "wb") as f:
        f.write(data)
