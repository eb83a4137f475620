"""pipeline/imaging/output.py: the canvas streamed to every output format through libvips."""

import io
import os
import stat

import numpy as np
import pytest
import pyvips
import tifffile
from PIL import Image

from pipeline.imaging.canvas import MemoryCanvas
from pipeline.imaging.imageio import FILE_MODE, ImageError, read_image
from pipeline.imaging.output import canvas_png_stream, write_canvas


@pytest.fixture
def canvas():
    rng = np.random.default_rng(3)
    # Values outside [0, 1] must be clamped on the way out; the canvas is padded beyond 300x530.
    return MemoryCanvas(rng.uniform(-0.2, 1.2, (3, 320, 560)).astype(np.float32))


def _expected(canvas, h, w):
    return (np.clip(canvas.array[:, :h, :w], 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)


def _alpha(h, w):
    return np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)


def test_png_stream_is_a_png_pillow_reads(canvas):
    """The stream libvips decodes is a valid PNG made a band at a time."""
    data = b"".join(canvas_png_stream(canvas, 300, 530, MemoryCanvas(_alpha(300, 530)[None]), band=7))
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "RGBA" and img.size == (530, 300)
        arr = np.asarray(img)
    np.testing.assert_array_equal(arr[..., :3], _expected(canvas, 300, 530))
    np.testing.assert_array_equal(arr[..., 3], (_alpha(300, 530) * 255 + 0.5).astype(np.uint8))


def test_tiff_output_is_a_tiled_bigtiff(tmp_path, canvas):
    alpha = _alpha(300, 530)
    path = tmp_path / "out" / "result.tif"
    write_canvas(str(path), canvas, 300, 530, alpha=alpha)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and len(tif.pages) == 1
        data = page.asarray()
    assert data.shape == (300, 530, 4)
    np.testing.assert_array_equal(data[..., :3], _expected(canvas, 300, 530))
    np.testing.assert_array_equal(data[..., 3], (alpha * 255 + 0.5).astype(np.uint8))
    assert [p.name for p in path.parent.iterdir()] == ["result.tif"]


def test_png_keeps_alpha_and_jpeg_drops_it(tmp_path, canvas):
    alpha = np.full((320, 560), 0.5, np.float32)
    write_canvas(str(tmp_path / "a.png"), canvas, 320, 560, alpha=alpha)
    png = Image.open(tmp_path / "a.png")
    assert png.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(png)[..., :3], _expected(canvas, 320, 560))
    write_canvas(str(tmp_path / "a.jpg"), canvas, 320, 560, alpha=alpha, quality=90)
    assert Image.open(io.BytesIO((tmp_path / "a.jpg").read_bytes())).mode == "RGB"
    write_canvas(str(tmp_path / "a.webp"), canvas, 320, 560, alpha=alpha, quality=90)
    assert Image.open(tmp_path / "a.webp").mode == "RGBA"


def test_rgb_profile_is_converted_back_and_embedded(tmp_path):
    """The cascade works in sRGB; the output goes back to the input's profile, so colours survive."""
    smooth = np.linspace(0.1, 0.9, 64 * 64 * 3, dtype=np.float32).reshape(3, 64, 64)
    p3 = pyvips.Image.black(1, 1, bands=3).copy(interpretation="srgb").icc_transform("p3", input_profile="srgb")
    profile = p3.get("icc-profile-data")
    write_canvas(str(tmp_path / "p3.png"), MemoryCanvas(smooth), 64, 64, icc_profile=profile)
    back = read_image(str(tmp_path / "p3.png"))
    assert back.icc_profile == profile
    assert np.abs(back.rgb - smooth.transpose(1, 2, 0)).max() <= 2 / 255
    with Image.open(tmp_path / "p3.png") as img:  # the stored values are P3, not the sRGB ones
        assert np.abs(np.asarray(img) / 255.0 - smooth.transpose(1, 2, 0)).max() > 4 / 255


def test_outputs_get_the_umask_mode_not_0600(tmp_path, canvas):
    for name in ("a.png", "a.tif"):
        write_canvas(str(tmp_path / name), canvas, 32, 32)
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == FILE_MODE != 0o600


def test_format_is_checked_before_anything_is_written(tmp_path, canvas):
    with pytest.raises(ImageError, match=r"'\.bmp'"):
        write_canvas(str(tmp_path / "a.bmp"), canvas, 32, 32)
    assert os.listdir(tmp_path) == []


def test_s3_output(s3_fs, s3_options, canvas):
    s3_fs.mkdir("output")
    write_canvas("s3://output/x/a.png", canvas, 300, 530, storage_options=s3_options)
    with Image.open(io.BytesIO(s3_fs.cat_file("output/x/a.png"))) as img:
        np.testing.assert_array_equal(np.asarray(img), _expected(canvas, 300, 530))
    assert s3_fs.ls("output/x") == ["output/x/a.png"]


@pytest.fixture(scope="module")
def photo_canvas():
    from skimage import data

    photo = data.astronaut()[:, :500].astype(np.float32) / 255  # 512 x 500
    return MemoryCanvas(np.ascontiguousarray(photo.transpose(2, 0, 1)))


def test_pyramidal_tiff_has_halved_levels(tmp_path, photo_canvas):
    write_canvas(str(tmp_path / "z.ptif"), photo_canvas, 512, 500)
    with tifffile.TiffFile(tmp_path / "z.ptif") as tif:
        shapes = [page.shape[:2] for page in tif.pages]
        assert all(page.is_tiled for page in tif.pages)
        full = tif.pages[0].asarray()
    assert shapes == [(512, 500), (256, 250)]  # libvips halves down to one 256-px tile
    np.testing.assert_array_equal(full, _expected(photo_canvas, 512, 500))


def test_deepzoom_output_with_its_viewer_page(tmp_path, photo_canvas):
    write_canvas(str(tmp_path / "out" / "z.dzi"), photo_canvas, 512, 500, quality=95)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["z.dzi", "z.html", "z_files"]
    dzi = (out / "z.dzi").read_text()
    assert 'Width="500"' in dzi and 'Height="512"' in dzi and 'TileSize="254"' in dzi
    levels = sorted(int(p.name) for p in (out / "z_files").iterdir() if p.is_dir())
    assert levels == list(range(10))  # 1x1 up to 512 px: ceil(log2(512)) + 1 levels
    with Image.open(out / "z_files" / "0" / "0_0.jpg") as img:
        assert img.size == (1, 1)
    # The full-resolution top-left tile is the image's corner (254 px + 1 px overlap).
    with Image.open(out / "z_files" / "9" / "0_0.jpg") as img:
        assert img.size == (255, 255)
        corner = np.asarray(img, np.float64)
    assert np.abs(corner - _expected(photo_canvas, 255, 255)).mean() < 3
    page = (out / "z.html").read_text()
    assert '"Url": "z_files/"' in page and '"Width": "500", "Height": "512"' in page


def test_deepzoom_to_s3(s3_fs, s3_options, photo_canvas):
    s3_fs.mkdir("zoom")
    write_canvas("s3://zoom/a/z.dzi", photo_canvas, 512, 500, storage_options=s3_options)
    assert sorted(s3_fs.ls("zoom/a")) == ["zoom/a/z.dzi", "zoom/a/z.html", "zoom/a/z_files"]
    assert s3_fs.exists("zoom/a/z_files/9/1_1.jpg")
