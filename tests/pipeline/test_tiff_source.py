import numpy as np
import pytest
import tifffile

from pipeline.imageio import ImageError
from pipeline.tiff_source import read_tiff_canvas
from pipeline.tiles import Rect, canvas_size


def _padded(values: np.ndarray) -> np.ndarray:
    h, w = values.shape[:2]
    ch, cw = canvas_size(h, w)
    return np.pad(values, ((0, ch - h), (0, cw - w), (0, 0)), mode="reflect")


@pytest.mark.parametrize(
    ("dtype", "samples", "layout"),
    [(np.uint8, 4, {"tile": (64, 64)}), (np.uint16, 3, {"rowsperstrip": 40}), (np.uint8, 1, {"tile": (32, 48)})],
)
def test_segments_land_on_the_canvas(tmp_path, dtype, samples, layout):
    rng = np.random.default_rng(1)
    top = np.iinfo(dtype).max
    values = rng.integers(0, top, (150, 203, samples), dtype=dtype, endpoint=True)
    kwargs = {"photometric": "minisblack" if samples == 1 else "rgb"}
    if samples == 4:
        kwargs["extrasamples"] = ("unassalpha",)
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, values[..., 0] if samples == 1 else values, **kwargs, **layout)
    image = read_tiff_canvas(str(path), workdir=str(tmp_path))
    assert (image.height, image.width) == (150, 203)
    colour = values[..., :1].repeat(3, axis=2) if samples == 1 else values[..., :3]
    expected = _padded(colour.astype(np.float32) / top)
    got = image.canvas.read(Rect(0, 0, *canvas_size(150, 203))).transpose(1, 2, 0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    if samples == 4:
        np.testing.assert_allclose(image.alpha.read(Rect(0, 0, 150, 203))[0], values[..., 3] / top, atol=1e-7)
    else:
        assert image.alpha is None


def test_bad_tiffs_give_one_line_errors(tmp_path):
    fake = tmp_path / "fake.tif"
    fake.write_text("not a tiff at all")
    with pytest.raises(ImageError, match="not a readable TIFF"):
        read_tiff_canvas(str(fake), workdir=None)
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    with pytest.raises(ImageError, match="over --max-pixels 1,000"):
        read_tiff_canvas(str(big), workdir=None, max_pixels=1000)
    with pytest.raises(ImageError, match="no such file"):
        read_tiff_canvas(str(tmp_path / "missing.tif"), workdir=None)
