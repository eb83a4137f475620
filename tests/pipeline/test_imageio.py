"""pipeline/imageio.py: every input mode to float RGB (+ alpha), clear errors, lossless atomic writes.

Format fixtures are generated here with numpy/Pillow/tifffile; only the corrupt-JPEG case starts
from a real photo (its bytes are truncated into a temporary file).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from pipeline.imageio import (
    ImageError,
    encode_image,
    image_size,
    output_format,
    read_image,
    write_bytes,
)


def _write_image(uri: str, rgb: np.ndarray, **kwargs) -> None:
    """Encode by the extension of ``uri`` and write atomically, as the output path does."""
    write_bytes(uri, encode_image(rgb, output_format(uri), **kwargs))


def _rng() -> np.random.Generator:
    return np.random.default_rng(42)


def _save(img: Image.Image, path: Path, **params) -> str:
    img.save(path, **params)
    return str(path)


def _one_line_error(uri: str, **kwargs) -> str:
    with pytest.raises(ImageError) as err:
        read_image(uri, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    assert uri in message
    return message


# ---------------------------------------------------------------- modes


def test_grey(tmp_path: Path) -> None:
    grey = _rng().integers(0, 256, size=(9, 13), dtype=np.uint8)
    out = read_image(_save(Image.fromarray(grey, "L"), tmp_path / "g.png"))
    assert out.rgb.shape == (9, 13, 3) and out.rgb.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(out.rgb[..., c], grey / np.float32(255))
    assert out.alpha is None and out.format == "PNG"


def test_grey_with_alpha(tmp_path: Path) -> None:
    la = _rng().integers(0, 256, size=(8, 6, 2), dtype=np.uint8)
    out = read_image(_save(Image.fromarray(la, "LA"), tmp_path / "la.png"))
    np.testing.assert_array_equal(out.rgb, np.repeat(la[..., :1], 3, axis=2) / np.float32(255))
    np.testing.assert_array_equal(out.alpha, la[..., 1] / np.float32(255))


def test_palette_with_transparency(tmp_path: Path) -> None:
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]
    index = _rng().integers(0, 4, size=(7, 11), dtype=np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette)
    out = read_image(_save(img, tmp_path / "p.png", transparency=0))
    colours = np.array(palette, dtype=np.float32).reshape(4, 3) / 255
    np.testing.assert_array_equal(out.rgb, colours[index])
    np.testing.assert_array_equal(out.alpha, (index != 0).astype(np.float32))


def test_palette_without_transparency_has_no_alpha(tmp_path: Path) -> None:
    img = Image.fromarray(np.zeros((4, 4), np.uint8), "P")
    img.putpalette([10, 20, 30] * 256)
    out = read_image(_save(img, tmp_path / "p.png"))
    assert out.alpha is None
    np.testing.assert_allclose(out.rgb[0, 0], np.array([10, 20, 30]) / 255)


def test_rgba_keeps_alpha(tmp_path: Path) -> None:
    rgba = _rng().integers(0, 256, size=(10, 12, 4), dtype=np.uint8)
    out = read_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    np.testing.assert_array_equal(out.rgb, rgba[..., :3] / np.float32(255))
    np.testing.assert_array_equal(out.alpha, rgba[..., 3] / np.float32(255))


def test_cmyk(tmp_path: Path) -> None:
    # white, cyan, magenta, yellow, black
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 255, 0], [0, 0, 0, 255]]], np.uint8)
    out = read_image(_save(Image.fromarray(cmyk, "CMYK"), tmp_path / "c.tif"))
    expected = np.array([[[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 0]]], np.float32)
    np.testing.assert_array_equal(out.rgb, expected)
    assert out.format == "TIFF"


@pytest.mark.parametrize("peak", [199, 65535])
def test_16bit_grey_png(tmp_path: Path, peak: int) -> None:
    """Scaled by 65535 whatever the values: a dark 16-bit image stays dark."""
    grey = np.linspace(0, peak, 6 * 7).astype(np.uint16).reshape(6, 7)
    img = Image.fromarray(grey)
    assert img.mode == "I;16"
    out = read_image(_save(img, tmp_path / "g16.png"))
    for c in range(3):
        np.testing.assert_allclose(out.rgb[..., c], grey / 65535.0, rtol=1e-6, atol=0)


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_rgb_tiff(tmp_path: Path, channels: int) -> None:
    arr = _rng().integers(0, 65536, size=(9, 10, channels), dtype=np.uint16)
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, arr, photometric="rgb", extrasamples=["unassalpha"] if channels == 4 else None)
    out = read_image(str(path))
    # Exact to float32: no reduction to 8 bits on the way.
    np.testing.assert_allclose(out.rgb, arr[..., :3] / 65535.0, rtol=1e-6, atol=0)
    if channels == 4:
        np.testing.assert_allclose(out.alpha, arr[..., 3] / 65535.0, rtol=1e-6, atol=0)
    else:
        assert out.alpha is None


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # 24 rows x 40 columns, four flat quadrants of different colours (JPEG keeps flat areas).
    rgb = np.zeros((24, 40, 3), np.uint8)
    rgb[:12, :20] = (255, 0, 0)
    rgb[:12, 20:] = (0, 255, 0)
    rgb[12:, :20] = (0, 0, 255)
    rgb[12:, 20:] = (255, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to display
    uri = _save(Image.fromarray(rgb), tmp_path / "rot.jpg", quality=95, exif=exif)
    out = read_image(uri)
    assert out.rgb.shape == (40, 24, 3)
    assert image_size(uri) == (24, 40)
    # Mean error 0.021 (JPEG chroma blur at the quadrant edges) against the clockwise turn,
    # about 0.5 against the other candidates.
    assert np.abs(out.rgb - np.rot90(rgb, k=-1) / 255.0).mean() < 0.05
    assert np.abs(out.rgb - np.rot90(rgb, k=1) / 255.0).mean() > 0.3
    assert np.abs(out.rgb - np.transpose(rgb, (1, 0, 2)) / 255.0).mean() > 0.3


# ---------------------------------------------------------------- errors and limits


@pytest.fixture(scope="module")
def truncated_jpeg(content_dir: Path, tmp_path_factory) -> str:
    data = (content_dir / "astronaut_512.jpg").read_bytes()
    path = tmp_path_factory.mktemp("corrupt") / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def test_truncated_jpeg(truncated_jpeg: str) -> None:
    assert "truncated" in _one_line_error(truncated_jpeg)


def test_text_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\nsecond line\n")
    assert "not an image" in _one_line_error(str(path))


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in _one_line_error(str(tmp_path / "absent.png"))


def test_max_pixels_refuses_before_decoding(truncated_jpeg: str) -> None:
    """The refusal comes from the header: decoding this file would fail as truncated instead."""
    message = _one_line_error(truncated_jpeg, max_pixels=512 * 512 - 1)
    assert "--max-pixels" in message and "512x512" in message
    assert "truncated" in _one_line_error(truncated_jpeg, max_pixels=512 * 512)


# ---------------------------------------------------------------- writing


def test_png_round_trip_is_lossless(tmp_path: Path) -> None:
    rgb = _rng().integers(0, 256, size=(17, 23, 3)).astype(np.float32) / 255
    alpha = _rng().integers(0, 256, size=(17, 23)).astype(np.float32) / 255
    _write_image(str(tmp_path / "out.png"), rgb, alpha=alpha)
    back = read_image(str(tmp_path / "out.png"))
    np.testing.assert_array_equal(back.rgb, rgb)
    np.testing.assert_array_equal(back.alpha, alpha)


@pytest.mark.parametrize("name", ["out.png", "out.jpg", "out.tif"])
def test_icc_profile_is_kept(tmp_path: Path, name: str) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    _write_image(str(tmp_path / name), np.full((8, 8, 3), 0.5, np.float32), icc_profile=icc)
    assert read_image(str(tmp_path / name)).icc_profile == icc


def test_jpeg_quality(tmp_path: Path) -> None:
    low = Image.fromarray(_rng().integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    rgb = np.asarray(low.resize((64, 64), Image.Resampling.BICUBIC), np.float32) / 255  # smooth colours
    sizes, errors = {}, {}
    for quality in (20, 95):
        uri = str(tmp_path / f"q{quality}.jpg")
        _write_image(uri, rgb, quality=quality)
        sizes[quality] = Path(uri).stat().st_size
        errors[quality] = float(np.abs(read_image(uri).rgb - rgb).mean())
    # Measured: 998 vs 2386 bytes, mean error 0.041 vs 0.0097.
    assert sizes[20] < 0.6 * sizes[95]
    assert errors[95] < errors[20] / 3


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
    rgb = _rng().integers(0, 256, size=(5, 7, 3)).astype(np.float32) / 255
    uri = "memory://imageio-test/out.png"
    _write_image(uri, rgb)
    np.testing.assert_array_equal(read_image(uri).rgb, rgb)
    assert image_size(uri) == (7, 5)


def test_output_format() -> None:
    assert output_format("s3://b/x.JPG") == "JPEG"
    assert output_format("a/b.tiff") == "TIFF"
    with pytest.raises(ImageError, match=r"'\.bmp'"):
        output_format("x.bmp")


def test_written_file_is_a_normal_image(tmp_path: Path) -> None:
    """What write_image writes opens in Pillow with the expected mode and size."""
    _write_image(str(tmp_path / "x.png"), np.zeros((3, 5, 3), np.float32), alpha=np.ones((3, 5), np.float32))
    with Image.open(io.BytesIO((tmp_path / "x.png").read_bytes())) as img:
        assert img.mode == "RGBA" and img.size == (5, 3)
