"""pipeline/imaging/imageio.py: every input kind decoded through libvips, checked against Pillow.

Each input is a real encoded file made here from a photo (scikit-image's astronaut, 200x150,
so :func:`read_canvas` decodes it in two strips), in the format and layout under test. The
decoded colours are compared with what Pillow makes of the same file (``ImageOps.exif_transpose``,
``convert``, and ``ImageCms`` for embedded profiles), both whole (:func:`read_image`) and
streamed onto a canvas (:func:`read_canvas`); where Pillow cannot open a layout (BigTIFF,
16-bit RGB), the reference is the array the lossless file was written from.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile
from PIL import Image, ImageCms, ImageOps
from skimage import data

from pipeline.imaging import imageio
from pipeline.imaging.imageio import (
    ImageError,
    check_output,
    encode_image,
    image_size,
    output_format,
    read_canvas,
    read_image,
    write_bytes,
)
from pipeline.imaging.tiles import Rect

# Pillow's and libvips' decoders and colour engines agree to this many 8-bit levels.
LEVELS = 2.0
PHOTO = np.ascontiguousarray(data.astronaut()[60:210, 140:340])  # 150 rows x 200 columns
H, W = PHOTO.shape[:2]
SRGB = ImageCms.createProfile("sRGB")


def _pillow(path: Path, mode: str = "RGB") -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert(mode), np.float64)


def _pillow_icc(path: Path, profile: bytes) -> np.ndarray:
    with Image.open(path) as img:
        out = ImageCms.profileToProfile(
            img, ImageCms.ImageCmsProfile(io.BytesIO(profile)), SRGB,
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, outputMode="RGB",
        )
    return np.asarray(out, np.float64)


def _vips_profile(name: str) -> tuple[pyvips.Image, bytes]:
    """The photo converted to one of libvips' built-in profiles (``p3``, ``cmyk``), and the profile."""
    image = pyvips.Image.new_from_array(PHOTO).copy(interpretation="srgb").icc_transform(name, input_profile="srgb")
    return image, image.get("icc-profile-data")


def _grey() -> np.ndarray:
    return np.asarray(Image.fromarray(PHOTO).convert("L"))


def _alpha() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return ((xx * 255) // (W - 1) ^ (yy % 7 * 30)).astype(np.uint8)


def _orientation(value: int, ext: str) -> Callable[[Path], tuple[Path, np.ndarray]]:
    def make(folder: Path) -> tuple[Path, np.ndarray]:
        path = folder / f"rot{value}{ext}"
        if ext == ".jpg":
            exif = Image.Exif()
            exif[0x0112] = value
            Image.fromarray(PHOTO).save(path, quality=95, exif=exif)
        else:
            Image.fromarray(PHOTO).save(path, tiffinfo={274: value})
        return path, _pillow(path)

    return make


def _save(name: str, image: Callable[[], Image.Image], mode: str = "RGB", **params):
    def make(folder: Path) -> tuple[Path, np.ndarray]:
        path = folder / name
        image().save(path, **params)
        return path, _pillow(path, mode)

    return make


def _tifffile(name: str, mode: str = "RGB", array: Callable[[], np.ndarray] = lambda: PHOTO, **params):
    def make(folder: Path) -> tuple[Path, np.ndarray]:
        path = folder / name
        tifffile.imwrite(path, array(), **params)
        return path, _pillow(path, mode)

    return make


def _with_profile(name: str, ext: str):
    """The photo converted by libvips to its built-in ``p3`` (RGB) or ``cmyk`` profile, embedded."""

    def make(folder: Path) -> tuple[Path, np.ndarray]:
        image, profile = _vips_profile(name)
        path = folder / f"{name}{ext}"
        image.write_to_file(str(path), **({"Q": 95} if ext == ".jpg" else {}))
        return path, _pillow_icc(path, profile)

    return make


def _rgba_photo() -> Image.Image:
    return Image.fromarray(np.dstack([PHOTO, _alpha()]), "RGBA")


def _palette_alpha() -> Image.Image:
    img = Image.fromarray(PHOTO).quantize(64)
    img.info["transparency"] = 0
    return img


def _animated_gif(folder: Path) -> tuple[Path, np.ndarray]:
    """An animated GIF is read as its first frame."""
    path = folder / "anim.gif"
    frames = [Image.fromarray(PHOTO), Image.fromarray(np.ascontiguousarray(PHOTO[::-1]))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as img:
        assert img.n_frames == 2
        return path, np.asarray(img.convert("RGB"), np.float64)


def _bigtiff(folder: Path) -> tuple[Path, np.ndarray]:
    path = folder / "big.tif"
    tifffile.imwrite(path, PHOTO, bigtiff=True, tile=(64, 64), compression="zlib")
    return path, PHOTO.astype(np.float64)


def _rgb16(ext: str, alpha: bool = False):
    def make(folder: Path) -> tuple[Path, np.ndarray]:
        photo16 = PHOTO.astype(np.uint16) * 257 + np.uint16(128)  # fills the low byte too
        arr = np.dstack([photo16, _alpha().astype(np.uint16) * 257]) if alpha else photo16
        path = folder / f"rgb16{ext}"
        if ext == ".png":
            pyvips.Image.new_from_array(arr).copy(interpretation="rgb16").pngsave(str(path))
        else:
            tifffile.imwrite(path, arr, photometric="rgb", extrasamples=["unassalpha"] if alpha else None)
        return path, arr / 257.0

    return make


def _grey16(folder: Path) -> tuple[Path, np.ndarray]:
    path = folder / "grey16.png"
    grey16 = _grey().astype(np.uint16) * 257 + np.uint16(100)
    Image.fromarray(grey16).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"
        seen = np.asarray(img, np.float64) / 257.0
    return path, np.repeat(seen[..., None], 3, axis=2)


# (maker, canvas dtype): maker(folder) -> (file, Pillow's RGB or RGBA of it, 0..255)
KINDS = {
    "jpeg": (_save("p.jpg", lambda: Image.fromarray(PHOTO), quality=90), np.uint8),
    "jpeg_progressive": (_save("pp.jpg", lambda: Image.fromarray(PHOTO), quality=90, progressive=True), np.uint8),
    "jpeg_grey": (_save("g.jpg", lambda: Image.fromarray(_grey()), quality=90), np.uint8),
    "jpeg_cmyk": (_save("c.jpg", lambda: Image.fromarray(PHOTO).convert("CMYK"), quality=95), np.uint8),
    "jpeg_cmyk_icc": (_with_profile("cmyk", ".jpg"), np.uint8),
    "jpeg_p3_icc": (_with_profile("p3", ".jpg"), np.uint8),
    "jpeg_exif_3": (_orientation(3, ".jpg"), np.uint8),
    "jpeg_exif_6": (_orientation(6, ".jpg"), np.uint8),
    "jpeg_exif_8": (_orientation(8, ".jpg"), np.uint8),
    "png": (_save("p.png", lambda: Image.fromarray(PHOTO)), np.uint8),
    "png_rgba": (_save("a.png", _rgba_photo, "RGBA"), np.uint8),
    "png_grey": (_save("g.png", lambda: Image.fromarray(_grey())), np.uint8),
    "png_grey_alpha": (
        _save("ga.png", lambda: Image.fromarray(np.dstack([_grey(), _alpha()]), "LA"), "RGBA"), np.uint8
    ),
    "png_palette": (_save("pal.png", lambda: Image.fromarray(PHOTO).quantize(64)), np.uint8),
    "png_palette_alpha": (_save("pala.png", _palette_alpha, "RGBA", transparency=0), np.uint8),
    "png_16bit": (_rgb16(".png"), np.uint16),
    "png_16bit_alpha": (_rgb16(".png", alpha=True), np.uint16),
    "png_16bit_grey": (_grey16, np.uint16),
    "png_p3_icc": (_with_profile("p3", ".png"), np.uint8),
    "webp": (_save("p.webp", lambda: Image.fromarray(PHOTO), quality=90), np.uint8),
    "webp_rgba_lossless": (_save("a.webp", _rgba_photo, "RGBA", lossless=True), np.uint8),
    "gif_animated": (_animated_gif, np.uint8),
    "tiff_striped": (_tifffile("s.tif", rowsperstrip=16, compression="zlib"), np.uint8),
    "tiff_single_strip": (_tifffile("one.tif", rowsperstrip=H), np.uint8),
    "tiff_tiled": (_tifffile("t.tif", tile=(64, 64), compression="zlib"), np.uint8),
    "tiff_bigtiff": (_bigtiff, np.uint8),
    "tiff_16bit": (_rgb16(".tif"), np.uint16),
    "tiff_16bit_alpha": (_rgb16(".tif", alpha=True), np.uint16),
    "tiff_rgba": (_save("a.tif", _rgba_photo, "RGBA"), np.uint8),
    "tiff_grey": (_tifffile("g.tif", array=_grey), np.uint8),
    "tiff_min_is_white": (_tifffile("w.tif", array=lambda: 255 - _grey(), photometric="miniswhite"), np.uint8),
    "tiff_palette": (_save("pal.tif", lambda: Image.fromarray(PHOTO).quantize(64)), np.uint8),
    "tiff_cmyk": (_save("c.tif", lambda: Image.fromarray(PHOTO).convert("CMYK")), np.uint8),
    "tiff_cmyk_icc": (_with_profile("cmyk", ".tif"), np.uint8),
    "tiff_p3_icc": (_with_profile("p3", ".tif"), np.uint8),
    "tiff_orientation_6": (_orientation(6, ".tif"), np.uint8),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request, tmp_path: Path) -> tuple[str, np.ndarray, type]:
    make, dtype = KINDS[request.param]
    path, reference = make(tmp_path)
    return str(path), reference, dtype


def _max_levels(got: np.ndarray, reference: np.ndarray) -> float:
    assert got.shape == reference.shape
    return float(np.abs(got * 255.0 - reference).max())


def test_whole_image_matches_pillow(kind) -> None:
    uri, reference, _ = kind
    out = read_image(uri)
    got = out.rgb if out.alpha is None else np.dstack([out.rgb, out.alpha])
    assert out.rgb.dtype == np.float32
    assert _max_levels(got, reference) <= LEVELS
    assert image_size(uri) == (reference.shape[1], reference.shape[0])


def test_canvas_matches_pillow_in_the_files_depth(kind, tmp_path: Path) -> None:
    """Streamed strip by strip onto a disk canvas that keeps 8-bit files in 8 bits."""
    uri, reference, dtype = kind
    image = read_canvas(uri, workdir=str(tmp_path))
    try:
        h, w = image.height, image.width
        assert image.canvas.dtype == dtype
        assert (image.canvas.height % 16, image.canvas.width % 16) == (0, 0)
        got = image.canvas.read(Rect(0, 0, h, w)).transpose(1, 2, 0)
        if image.alpha is not None:
            assert image.alpha.dtype == dtype
            got = np.dstack([got, image.alpha.read(Rect(0, 0, h, w))[0]])
        assert _max_levels(got, reference) <= LEVELS
        # The padding is the reflection of the image (what the cascade pads with).
        padded = image.canvas.read(Rect(0, 0, image.canvas.height, image.canvas.width))
        ph, pw = image.canvas.height - h, image.canvas.width - w
        np.testing.assert_array_equal(padded, np.pad(padded[:, :h, :w], ((0, 0), (0, ph), (0, pw)), mode="reflect"))
    finally:
        image.close()


def test_rgb_profile_is_kept_for_the_output_and_others_are_not(tmp_path: Path) -> None:
    _, p3 = _vips_profile("p3")
    p3_path, _ = _with_profile("p3", ".png")(tmp_path)
    cmyk_path, _ = _with_profile("cmyk", ".tif")(tmp_path)
    assert read_image(str(p3_path)).icc_profile == p3
    assert read_image(str(cmyk_path)).icc_profile is None  # the output is RGB: a CMYK profile cannot describe it


def test_reads_from_s3_through_a_source_without_a_local_copy(s3_fs, s3_options, tmp_path: Path) -> None:
    path, reference = _save("p.png", lambda: Image.fromarray(PHOTO))(tmp_path)
    s3_fs.mkdir("imageio")
    s3_fs.put(str(path), "imageio/p.png")
    uri = "s3://imageio/p.png"
    image = read_canvas(uri, s3_options, workdir=str(tmp_path))
    try:
        got = image.canvas.read(Rect(0, 0, H, W)).transpose(1, 2, 0)
        assert _max_levels(got, reference) == 0
    finally:
        image.close()
    assert image_size(uri, s3_options) == (W, H)


class _DroppingProxy:
    """A TCP proxy in front of ``upstream`` that closes each connection once ``limit`` bytes of
    response have gone through: a connection dropped in the middle of a download."""

    def __init__(self, upstream: tuple[str, int], limit: int) -> None:
        self.upstream, self.limit = upstream, limit
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.limit), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, limit: int | None) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while chunk := source.recv(1 << 16):
                if limit is not None and sent + len(chunk) > limit:
                    target.sendall(chunk[: limit - sent])
                    break
                target.sendall(chunk)
                sent += len(chunk)
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self._listener.close()


def test_a_connection_dropped_mid_read_is_reported_as_itself(s3_fs, s3_options, tmp_path, capfd, monkeypatch):
    """libvips reads a remote file through Python callbacks; an exception inside one is raised
    as what it is, not as a corrupt image, and no callback traceback reaches stderr."""
    import s3fs

    path, _ = _save("p.png", lambda: Image.fromarray(PHOTO))(tmp_path)
    s3_fs.mkdir("dropped")
    s3_fs.put(str(path), "dropped/p.png")
    endpoint = s3_options["client_kwargs"]["endpoint_url"].removeprefix("http://").split(":")
    proxy = _DroppingProxy((endpoint[0], int(endpoint[1])), limit=path.stat().st_size // 3)
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)  # s3fs' own retries would only slow this down
    options = {**s3_options, "skip_instance_cache": True,
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{proxy.port}"}}
    try:
        with pytest.raises(Exception) as raised:
            read_canvas("s3://dropped/p.png", options, workdir=str(tmp_path))
    finally:
        proxy.close()
    assert not isinstance(raised.value, ImageError), raised.value
    assert "payload" in str(raised.value).lower() or "connection" in str(raised.value).lower(), raised.value
    assert "cffi" not in capfd.readouterr().err


# ---------------------------------------------------------------- errors and limits


def _one_line_error(uri: str, read=read_image, **kwargs) -> str:
    with pytest.raises(ImageError) as err:
        read(uri, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    assert uri in message
    return message


@pytest.fixture
def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(PHOTO).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("read", [read_image, read_canvas], ids=["whole", "canvas"])
def test_truncated_jpeg(tmp_path: Path, jpeg_bytes: bytes, read) -> None:
    path = tmp_path / "truncated.jpg"
    path.write_bytes(jpeg_bytes[: len(jpeg_bytes) // 2])
    kwargs = {"workdir": str(tmp_path)} if read is read_canvas else {}
    assert "truncated" in _one_line_error(str(path), read, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.jpg"]  # no canvas left behind


def test_corrupt_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(PHOTO).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zeros over compressed data: CRC and inflate fail
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    assert "corrupt" in _one_line_error(str(path), read_canvas, workdir=str(tmp_path))


def test_text_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\nsecond line\n")
    assert "not an image" in _one_line_error(str(path))


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in _one_line_error(str(tmp_path / "absent.png"))


@pytest.mark.parametrize("read", [read_image, read_canvas], ids=["whole", "canvas"])
def test_max_pixels_refuses_from_the_header(tmp_path: Path, jpeg_bytes: bytes, read) -> None:
    """The refusal comes from the header: decoding this file would fail as truncated instead."""
    path = tmp_path / "truncated.jpg"
    path.write_bytes(jpeg_bytes[: len(jpeg_bytes) // 2])
    kwargs = {"workdir": str(tmp_path)} if read is read_canvas else {}
    message = _one_line_error(str(path), read, max_pixels=H * W - 1, **kwargs)
    assert "--max-pixels" in message and f"{W}x{H}" in message
    assert "truncated" in _one_line_error(str(path), read, max_pixels=H * W, **kwargs)


@pytest.mark.parametrize("side", [1, 20])
def test_too_small_for_the_cascade(tmp_path: Path, side: int) -> None:
    path = tmp_path / f"small{side}.png"
    Image.fromarray(PHOTO[:side, :side]).save(path)
    message = _one_line_error(str(path), read_canvas, workdir=str(tmp_path))
    assert f"{side}x{side}" in message and "smallest side" in message
    assert read_image(str(path)).rgb.shape == (side, side, 3)  # a style may be that small


# ---------------------------------------------------------------- writing


def _write_image(uri: str, rgb: np.ndarray, **kwargs) -> None:
    write_bytes(uri, encode_image(rgb, output_format(uri), **kwargs))


def test_png_round_trip_is_lossless(tmp_path: Path) -> None:
    rgb = PHOTO.astype(np.float32) / 255
    alpha = _alpha().astype(np.float32) / 255
    _write_image(str(tmp_path / "out.png"), rgb, alpha=alpha)
    back = read_image(str(tmp_path / "out.png"))
    np.testing.assert_array_equal(back.rgb, rgb)
    np.testing.assert_array_equal(back.alpha, alpha)


@pytest.mark.parametrize("name", ["out.png", "out.jpg", "out.tif", "out.webp"])
def test_icc_profile_is_kept(tmp_path: Path, name: str) -> None:
    _, p3 = _vips_profile("p3")
    _write_image(str(tmp_path / name), np.full((40, 40, 3), 0.5, np.float32), icc_profile=p3)
    assert read_image(str(tmp_path / name)).icc_profile == p3


def test_jpeg_quality(tmp_path: Path) -> None:
    rgb = PHOTO.astype(np.float32) / 255
    sizes, errors = {}, {}
    for quality in (20, 95):
        uri = str(tmp_path / f"q{quality}.jpg")
        _write_image(uri, rgb, quality=quality)
        sizes[quality] = Path(uri).stat().st_size
        errors[quality] = float(np.abs(read_image(uri).rgb - rgb).mean())
    assert sizes[20] < 0.5 * sizes[95]
    assert errors[95] < errors[20] / 2


def test_write_bytes_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "file.png"
    write_bytes(str(target), b"first")
    write_bytes(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.png"]
    # A failing write leaves the old file whole and no temporary behind.
    with pytest.raises(TypeError):
        write_bytes(str(target), "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.png"]


def test_fsspec_uris_round_trip() -> None:
    rgb = PHOTO[:40, :50].astype(np.float32) / 255
    uri = "memory://imageio-test/out.png"
    _write_image(uri, rgb)
    np.testing.assert_array_equal(read_image(uri).rgb, rgb)
    assert image_size(uri) == (50, 40)


def test_output_format_and_limits() -> None:
    assert output_format("s3://b/x.JPG") == "JPEG"
    assert output_format("a/b.tiff") == "TIFF"
    assert output_format("a/b.dzi") == "DZI" and output_format("a/b.ptif") == "PTIF"
    with pytest.raises(ImageError, match=r"'\.bmp'"):
        output_format("x.bmp")
    assert check_output("x.webp", 16_383, 100) == "WEBP"
    with pytest.raises(ImageError, match="16383"):
        check_output("x.webp", 16_384, 100)
    assert check_output("x.jpg", 65_535, 10) == "JPEG"
    assert imageio.OUTPUT_LIMITS.keys() == set(imageio._FORMATS.values())
