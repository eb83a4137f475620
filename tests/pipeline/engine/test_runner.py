import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.engine.runner import choose_mode, load_style, stylize_file


def test_choose_mode():
    assert choose_mode("auto", 1000, 1024, 1024) == "whole"
    assert choose_mode("auto", 1025, 1000, 1024) == "exact"
    assert choose_mode("whole", 5000, 5000, 1024) == "whole"
    with pytest.raises(ValueError, match="mode must be one of"):
        choose_mode("fast", 10, 10, 1024)


def test_style_size_resizes_the_longer_side(model_set, style_dir):
    stats = load_style(str(style_dir / "strokes_591x800.jpg"), model_set, style_size=256)
    # 800 -> 256 and 591 -> 189; level 1 keeps full resolution.
    assert stats[1].count == 256 * 189


def test_streamed_tiff_in_exact_mode_equals_png_in_whole_mode(model_set, style_dir, content_dir, tmp_path):
    rgb = np.asarray(Image.open(content_dir / "rocket_420.jpg").convert("RGB"))[:400, :390]
    alpha = (np.arange(390)[None, :] * 255 // 389).repeat(400, 0).astype(np.uint8)
    rgba = np.dstack([rgb, alpha])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    tifffile.imwrite(tmp_path / "in.tif", rgba, tile=(64, 64), photometric="rgb", extrasamples=("unassalpha",))
    style = load_style(str(style_dir / "strokes_570.jpg"), model_set)
    whole = stylize_file(str(tmp_path / "in.png"), str(tmp_path / "whole.png"), style, model_set, mode="whole")
    exact = stylize_file(str(tmp_path / "in.tif"), str(tmp_path / "exact.tif"), style, model_set, tile=128)
    assert (whole.mode, exact.mode, exact.tiles) == ("whole", "exact", 16)
    a = np.asarray(Image.open(tmp_path / "whole.png")).astype(np.float64)
    b = tifffile.imread(tmp_path / "exact.tif").astype(np.float64)
    assert a.shape == b.shape == (400, 390, 4)
    np.testing.assert_array_equal(a[..., 3], alpha)
    np.testing.assert_array_equal(b[..., 3], alpha)
    mse = ((a[..., :3] - b[..., :3]) ** 2).mean()
    assert mse == 0 or 10 * np.log10(255**2 / mse) >= 50


def test_uint8_images_run_in_every_mode(model_set, style_dir):
    from jobs.bench import synthetic_image
    from pipeline.engine.runner import stylize_image
    from pipeline.engine.tiled import read_rgb
    from pipeline.imaging.imageio import LoadedImage

    style = load_style(str(style_dir / "strokes_512.jpg"), model_set)
    image = LoadedImage(synthetic_image(96, 112))
    results = {}
    for mode in ("whole", "exact"):
        canvas, report = stylize_image(image, style, model_set, mode=mode, tile=64)
        assert report.mode == mode
        results[mode] = read_rgb(canvas, 96, 112)
    np.testing.assert_allclose(results["whole"], results["exact"], atol=1e-4)


def test_rotated_jpeg_with_a_profile_exact_equals_whole_through_files(model_set, style_dir, tmp_path):
    """A JPEG with EXIF orientation 6 and a Display P3 profile, streamed 8-bit onto the canvas:
    the exact tiled run equals the whole-image run, file to file, and both keep the profile."""
    import pyvips
    from skimage import data

    from pipeline.imaging.imageio import read_image

    photo = np.ascontiguousarray(data.astronaut()[40:440, 60:400])  # 400 x 340, shown turned: 340 x 400
    p3 = pyvips.Image.black(1, 1, bands=3).copy(interpretation="srgb").icc_transform("p3", input_profile="srgb")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo).save(tmp_path / "in.jpg", quality=92, exif=exif, icc_profile=p3.get("icc-profile-data"))
    style = load_style(str(style_dir / "strokes_570.jpg"), model_set)
    whole = stylize_file(str(tmp_path / "in.jpg"), str(tmp_path / "whole.png"), style, model_set, mode="whole")
    exact = stylize_file(str(tmp_path / "in.jpg"), str(tmp_path / "exact.png"), style, model_set, tile=128)
    assert (whole.width, whole.height, exact.mode, exact.tiles) == (400, 340, "exact", 12)
    a, b = read_image(str(tmp_path / "whole.png")), read_image(str(tmp_path / "exact.png"))
    assert a.icc_profile == b.icc_profile == p3.get("icc-profile-data")
    assert a.rgb.shape == (340, 400, 3)
    mse = ((a.rgb - b.rgb) ** 2).mean()
    assert mse == 0 or 10 * np.log10(1 / mse) >= 50
