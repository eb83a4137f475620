import io

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from pipeline.canvas import MemoryCanvas
from pipeline.output import TIFF_TILE, write_canvas


@pytest.fixture
def canvas():
    rng = np.random.default_rng(3)
    # Values outside [0, 1] must be clamped on the way out.
    return MemoryCanvas(rng.uniform(-0.2, 1.2, (3, 320, 560)).astype(np.float32))


def _expected(canvas, h, w):
    return (np.clip(canvas.array[:, :h, :w], 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)


def test_tiff_output_is_a_tiled_bigtiff_streamed_from_the_canvas(tmp_path, canvas):
    alpha = np.linspace(0, 1, 300 * 530, dtype=np.float32).reshape(300, 530)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path / "out" / "result.tif"
    write_canvas(str(path), canvas, 300, 530, alpha=alpha, icc_profile=icc)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled
        assert (page.tilelength, page.tilewidth) == (TIFF_TILE, TIFF_TILE)
        data = page.asarray()
        assert page.tags[34675].value == icc
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


def test_outputs_get_the_umask_mode_not_mkstemps_0600(tmp_path, canvas):
    import os
    import stat

    from pipeline.imageio import FILE_MODE

    for name in ("a.png", "a.tif"):
        write_canvas(str(tmp_path / name), canvas, 32, 32)
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == FILE_MODE != 0o600
