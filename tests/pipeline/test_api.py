"""The Python API gives the command line's pixels: arrays, PIL images, URIs and files alike.

The yardstick is ``ultrastyle stylize`` itself, run in a subprocess on the same PNG inputs;
PNG is lossless, so the decoded outputs must be identical. The content (200 x 150) is cut
into 2 x 2 tiles of 128 px, so the comparisons go through the exact tiled cascade.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import StyleOptions, Stylizer, stylize, stylize_file
from pipeline.imaging.imageio import ImageError
from pipeline.options import OptionError

ROOT = Path(__file__).resolve().parents[2]
LOOK = {"tile": 128, "style_size": 128}
LOOK_FLAGS = ["--tile", "128", "--style-size", "128"]


def _png(image: Image.Image, path: Path) -> Path:
    """Save ``image``'s RGB pixels alone (no ICC profile: PIL does not apply one, libvips does)."""
    Image.fromarray(np.asarray(image.convert("RGB"))).save(path)
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, content_dir, style_dir) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("api")
    return {
        "content": _png(Image.open(content_dir / "rocket_420.jpg").resize((200, 150)), folder / "rocket.png"),
        "style": _png(Image.open(style_dir / "strokes_512.jpg").resize((160, 160)), folder / "strokes.png"),
        "other": _png(Image.open(style_dir / "strokes_570.jpg").resize((144, 144)), folder / "other.png"),
    }


def _cli(*argv: str) -> None:
    """``ultrastyle stylize ...`` (the console script's function, ``jobs.cli:main``) in a subprocess, on one
    torch thread as the tests here run (a convolution's sums may be split, and so rounded, by thread)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "stylize", *argv], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def cli_pixels(pictures, weights_dir, tmp_path_factory) -> dict[str, np.ndarray]:
    """The command line's outputs, decoded: one style, and two styles blended 70/30."""
    folder = tmp_path_factory.mktemp("cli")
    common = ["--weights", str(weights_dir), *LOOK_FLAGS]
    _cli(str(pictures["content"]), "--style", str(pictures["style"]), "--output", str(folder / "one.png"), *common)
    _cli(str(pictures["content"]), "--style", str(pictures["style"]), "--style", str(pictures["other"]),
         "--style-weights", "0.7,0.3", "--output", str(folder / "blend.png"), *common)
    return {name: np.asarray(Image.open(folder / f"{name}.png")) for name in ("one", "blend")}


@pytest.fixture(scope="module")
def stylizer(weights_dir, one_torch_thread) -> Stylizer:
    return Stylizer(weights=str(weights_dir), **LOOK)


def test_import_pipeline_stays_cheap():
    probe = ("import sys, pipeline; heavy = [m for m in ('torch', 'ray', 'pyvips') if m in sys.modules]; "
             "from pipeline import Stylizer, stylize, stylize_file; print(heavy, Stylizer.__module__)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "pipeline.api"]


def test_an_array_gets_the_cli_pixels(stylizer, pictures, cli_pixels):
    content = np.asarray(Image.open(pictures["content"]))
    out = stylizer.stylize(content, str(pictures["style"]))
    assert out.dtype == np.uint8 and out.shape == (150, 200, 3)
    np.testing.assert_array_equal(out, cli_pixels["one"])
    # The style given as pixels has the statistics its file has.
    np.testing.assert_array_equal(stylizer.stylize(content, np.asarray(Image.open(pictures["style"]))), out)


def test_a_pil_image_gets_the_cli_pixels_and_keeps_its_alpha(stylizer, pictures, cli_pixels):
    content = Image.open(pictures["content"])
    out = stylizer.stylize(content, Image.open(pictures["style"]))
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (200, 150)
    np.testing.assert_array_equal(np.asarray(out), cli_pixels["one"])

    alpha = Image.linear_gradient("L").resize(content.size)
    with_alpha = content.copy()
    with_alpha.putalpha(alpha)
    out = stylizer.stylize(with_alpha, str(pictures["style"]))
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out)[..., :3], cli_pixels["one"])
    np.testing.assert_array_equal(np.asarray(out)[..., 3], np.asarray(alpha))


def test_a_uri_gets_the_cli_pixels_as_an_array(stylizer, pictures, cli_pixels):
    out = stylizer.stylize(str(pictures["content"]), pictures["style"])  # a str and a Path
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, cli_pixels["one"])


def test_a_float_array_comes_back_in_its_dtype(stylizer, pictures, cli_pixels):
    content = np.asarray(Image.open(pictures["content"])) / 255.0
    out = stylizer.stylize(content, str(pictures["style"]))
    assert out.dtype == np.float64 and out.shape == (150, 200, 3) and out.min() >= 0 and out.max() <= 1
    # The same float32 pixels as the 8-bit run, up to the last bit of the input's conversion.
    assert np.abs(out * 255 - cli_pixels["one"]).max() <= 0.51


def test_a_file_gets_the_cli_pixels(stylizer, pictures, cli_pixels, tmp_path):
    report = stylizer.stylize_file(pictures["content"], str(pictures["style"]), tmp_path / "out.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), cli_pixels["one"])
    assert (report.width, report.height, report.mode, report.tiles) == (200, 150, "exact", 4)
    assert set(report.seconds) == {"style", "read", "stylize", "write"}


def test_several_styles_blend_as_on_the_command_line(stylizer, pictures, cli_pixels, weights_dir, tmp_path):
    styles = [str(pictures["style"]), str(pictures["other"])]
    content = np.asarray(Image.open(pictures["content"]))
    np.testing.assert_array_equal(stylizer.stylize(content, styles, style_weights=(0.7, 0.3)), cli_pixels["blend"])
    stylize_file(pictures["content"], styles, tmp_path / "blend.png", weights=str(weights_dir),
                 style_weights=[7, 3], **LOOK)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "blend.png")), cli_pixels["blend"])
    with pytest.raises(ValueError, match=r"^2 styles for one picture need style_weights \(one blend\) or mask"):
        stylizer.stylize(content, styles)
    with pytest.raises(OptionError, match=r"^style_weights has 3 values \(1,1,1\) for 2 styles"):
        stylizer.stylize(content, styles, style_weights=(1, 1, 1))


def test_a_mask_in_memory_gives_the_file_run_pixels(stylizer, pictures, tmp_path):
    labels = np.zeros((150, 200), np.uint8)
    labels[:, 100:] = 1  # left half: the first style, right half: the second
    Image.fromarray(labels).save(tmp_path / "mask.png")
    styles = [str(pictures["style"]), str(pictures["other"])]
    report = stylizer.stylize_file(pictures["content"], styles, tmp_path / "out.png", mask=str(tmp_path / "mask.png"))
    assert report.mode == "exact"
    out = stylizer.stylize(np.asarray(Image.open(pictures["content"])), styles, mask=str(tmp_path / "mask.png"))
    np.testing.assert_array_equal(out, np.asarray(Image.open(tmp_path / "out.png")))


def test_the_module_function_takes_options_or_keywords(pictures, weights_dir, cli_pixels, one_torch_thread):
    content = np.asarray(Image.open(pictures["content"]))
    options = StyleOptions(weights=str(weights_dir), **LOOK)
    out = stylize(content, str(pictures["style"]), options=options, alpha=0.0)
    assert not np.array_equal(out, cli_pixels["one"])  # alpha 0: the content, through the decoders
    assert np.abs(out.astype(int) - content).mean() < np.abs(cli_pixels["one"].astype(int) - content).mean()


def test_style_statistics_are_cached_per_style_and_size(weights_dir, pictures, tmp_path, one_torch_thread):
    style = tmp_path / "style.png"
    style.write_bytes(pictures["style"].read_bytes())
    content = np.asarray(Image.open(pictures["content"]))[:64, :64]
    stylizer = Stylizer(weights=str(weights_dir), style_size=64)
    first = stylizer.stylize(content, str(style))
    style.unlink()  # cached: the style is not read again ...
    np.testing.assert_array_equal(stylizer.stylize(content, str(style)), first)
    with pytest.raises(ImageError, match="no such file"):  # ... but another size needs its pixels
        stylizer.stylize(content, str(style), style_size=96)


def test_an_unknown_option_names_itself_and_the_valid_ones(weights_dir):
    with pytest.raises(TypeError, match=r"^unknown option 'alpah'; the options are weights, alpha, style_size, "):
        Stylizer(alpah=0.5)
    with pytest.raises(TypeError, match=r"unknown option 'stlye_size'"):
        stylize(np.zeros((64, 64, 3), np.uint8), "style.png", stlye_size=256)
    with pytest.raises(OptionError, match=r"^alpha must be in \[0, 1\], got 1.5$"):
        Stylizer(alpha=1.5)
    with pytest.raises(TypeError, match="options must be a StyleOptions, got dict"):
        Stylizer({"alpha": 0.5})


def test_options_object_and_keywords_agree(weights_dir):
    by_object = Stylizer(StyleOptions(weights=str(weights_dir), alpha=0.5, tile=256))
    by_keywords = Stylizer(weights=str(weights_dir), alpha=0.5, tile=256)
    assert by_object.options == by_keywords.options
    assert Stylizer(by_object.options, alpha=0.25).options.alpha == 0.25


def test_the_models_options_are_fixed_per_stylizer(stylizer, pictures):
    with pytest.raises(TypeError, match=r"^device, precision cannot change per call"):
        stylizer.stylize(np.zeros((64, 64, 3), np.uint8), str(pictures["style"]), precision="bf16", device="cpu")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.zeros((64, 64), np.uint8), r"content must be an \(H, W, 3\) RGB array, got shape \(64, 64\)"),
        (np.zeros((64, 64, 3), np.int32), "content must be uint8, or float in \\[0, 1\\], got int32"),
        (np.full((64, 64, 3), 2.0), r"content must be uint8, or float in \[0, 1\], got float64 values in \[2, 2\]"),
        (np.full((64, 64, 3), np.nan, np.float32), r"got float32 values in \[nan, nan\]"),
    ],
)
def test_a_bad_picture_is_refused_by_name(stylizer, pictures, content, message):
    with pytest.raises(ValueError, match=message):
        stylizer.stylize(content, str(pictures["style"]))


def test_a_file_run_is_checked_before_the_models_load(pictures, tmp_path):
    # The weights do not exist: any check that ran after loading them would report them instead.
    missing = str(tmp_path / "no-weights")
    with pytest.raises(OptionError, match=r"^output_uri cannot write .*out\.bmp: extension '\.bmp' is not one of"):
        stylize_file(pictures["content"], pictures["style"], tmp_path / "out.bmp", weights=missing)
    with pytest.raises(ImageError, match="no such file"):
        stylize_file(pictures["content"], pictures["style"], tmp_path / "out.png", weights=missing,
                     mask=str(tmp_path / "mask.png"))
    with pytest.raises(TypeError, match="style must be an image"):
        stylize_file(pictures["content"], [], tmp_path / "out.png", weights=missing)
