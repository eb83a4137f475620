"""Creative controls on real photos with the official weights: each keeps tiled == whole, and the
degenerate settings (weights 1,0, a one-value mask) give exactly the single-style picture."""

import numpy as np
import pytest
import torch

from pipeline.engine.cascade import stylize_whole
from pipeline.engine.controls import (
    join_styles,
    keep_chroma,
    level_transform,
    mask_canvas,
    mask_for,
    read_mask,
    sample_labels,
    split_styles,
    style_levels,
    style_stem,
)
from pipeline.engine.runner import load_style, stylize_image, to_tensor
from pipeline.engine.stats import feature_stats, label_stats, merge_tile_stats
from pipeline.engine.tiled import canvas_from_array, read_rgb, stylize_exact, stylize_thumbnail
from pipeline.engine.wct import blend_colorings, coloring, whitening_coloring
from pipeline.imaging.imageio import IMAGE_EXTENSIONS, ImageError, LoadedImage, read_image
from pipeline.imaging.tiles import Rect, plan_tiles

HEIGHT, WIDTH, TILE = 200, 264, 96  # sides not multiples of 16, 3 x 3 tiles


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    return psnr(np.round(np.clip(a, 0, 1) * 255), np.round(np.clip(b, 0, 1) * 255))


def _images(folder):
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


@pytest.fixture(scope="module")
def content(content_dir):
    rgb = read_image(str(_images(content_dir)[0])).rgb
    return np.ascontiguousarray(rgb[:HEIGHT, :WIDTH])


@pytest.fixture(scope="module")
def styles(model_set, style_dir, one_torch_thread):
    return [load_style(str(p), model_set, style_size=256) for p in _images(style_dir)[:2]]


@pytest.fixture(scope="module")
def swapped_style(model_set, style_dir, tmp_path_factory, one_torch_thread):
    """The first style with its colour channels reversed: the same strokes in another palette."""
    from PIL import Image

    path = tmp_path_factory.mktemp("styles") / "swapped.png"
    rgb = np.asarray(Image.open(_images(style_dir)[0]).convert("RGB"))
    Image.fromarray(np.ascontiguousarray(rgb[..., ::-1])).save(path)
    return load_style(str(path), model_set, style_size=256)


@pytest.fixture(scope="module")
def labels():
    """Two regions with boundaries on no 16-px grid: a disc and a diagonal band."""
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    disc = (y - 83) ** 2 + (x - 101) ** 2 < 61**2
    return (disc | (np.abs(x - y - 150) < 9)).astype(np.int64)


def _whole(content, levels, model_set, *, mask=None, preserve_color=False):
    padded = None if mask is None else torch.from_numpy(mask.read(Rect(0, 0, mask.height, mask.width))[0])
    out = stylize_whole(to_tensor(content), levels, model_set, mask=padded, preserve_color=preserve_color)
    return out[0].permute(1, 2, 0).numpy()


def _tiled(content, levels, model_set, tmp_path, *, mask=None, preserve_color=False):
    canvas = canvas_from_array(content, workdir=str(tmp_path))
    out = stylize_exact(canvas, levels, model_set, tile=TILE, workdir=str(tmp_path), mask=mask,
                        preserve_color=preserve_color)
    return read_rgb(out, HEIGHT, WIDTH)


def _report(what: str, value: float) -> None:
    print(f"\n{what}: {value:.2f} dB")


# -- tiled == whole, each control ----------------------------------------------------------------


def test_blend_tiled_equals_whole(model_set, styles, content, tmp_path, one_torch_thread):
    levels = style_levels(styles, weights=(0.7, 0.3))
    whole = _whole(content, levels, model_set)
    tiled = _tiled(content, levels, model_set, tmp_path)
    _report("blend 0.7,0.3 tiled vs whole", psnr8(tiled, whole))
    assert len(plan_tiles(HEIGHT, WIDTH, tile=TILE)) > 1
    assert psnr8(tiled, whole) >= 50
    # the blend is neither style alone
    for single in styles:
        assert psnr8(whole, _whole(content, single, model_set)) < 40


def test_mask_tiled_equals_whole(model_set, styles, swapped_style, content, labels, tmp_path, one_torch_thread):
    levels = style_levels(styles, masked=True)
    mask = mask_canvas(labels, styles=2, workdir=None)
    whole = _whole(content, levels, model_set, mask=mask)
    tiled = _tiled(content, levels, model_set, tmp_path, mask=mask)
    _report("mask tiled vs whole", psnr8(tiled, whole))
    assert psnr8(tiled, whole) >= 50
    # each region takes its own style: with two styles of other palettes (the first style and its
    # channels reversed), each region's mean colour is nearer its own style's picture than the other's
    contrast = [styles[0], swapped_style]
    masked = _whole(content, style_levels(contrast, masked=True), model_set, mask=mask)
    only0, only1 = (_whole(content, style, model_set) for style in contrast)
    inside = labels == 1
    for region, own, other in ((inside, only1, only0), (~inside, only0, only1)):
        mean = masked[region].mean(0)
        assert 1.5 * np.abs(mean - own[region].mean(0)).sum() < np.abs(mean - other[region].mean(0)).sum()


def test_preserve_color_tiled_equals_whole(model_set, styles, content, tmp_path, one_torch_thread):
    whole = _whole(content, styles[0], model_set, preserve_color=True)
    tiled = _tiled(content, styles[0], model_set, tmp_path, preserve_color=True)
    _report("preserve-color tiled vs whole", psnr8(tiled, whole))
    assert psnr8(tiled, whole) >= 50


def test_all_controls_together_in_thumbnail_mode_run(model_set, styles, content, labels, tmp_path, one_torch_thread):
    """Thumbnail mode takes a mask and colour preservation; with the thumbnail at full size its
    statistics are the whole image's, so it matches the whole-image run."""
    levels = style_levels(styles, masked=True)
    mask = mask_canvas(labels, styles=2, workdir=None)
    canvas = canvas_from_array(content, workdir=None)
    out = stylize_thumbnail(canvas, HEIGHT, WIDTH, levels, model_set, tile=TILE, thumbnail_size=WIDTH, mask=mask,
                            preserve_color=True)
    whole = _whole(content, levels, model_set, mask=mask, preserve_color=True)
    _report("thumbnail (full-size thumbnail) with mask and preserve-color vs whole", psnr8(read_rgb(out, HEIGHT,
                                                                                                    WIDTH), whole))
    assert psnr8(read_rgb(out, HEIGHT, WIDTH), whole) >= 50


# -- degenerate controls give exactly the single style ----------------------------------------------


def test_weights_one_zero_equal_the_single_style(model_set, styles, content, tmp_path, one_torch_thread):
    for weights, single in (((1, 0), styles[0]), ((0, 2.5), styles[1])):
        levels = style_levels(styles, weights=weights)
        whole = _whole(content, levels, model_set)
        reference = _whole(content, single, model_set)
        _report(f"weights {weights} vs single style (whole)", psnr8(whole, reference))
        assert np.array_equal(whole, reference)
    tiled = _tiled(content, style_levels(styles, weights=(1, 0)), model_set, tmp_path)
    reference = _tiled(content, styles[0], model_set, tmp_path)
    _report("weights (1, 0) vs single style (tiled)", psnr8(tiled, reference))
    assert np.array_equal(tiled, reference)


def test_one_value_mask_equals_the_single_style(model_set, styles, content, tmp_path, one_torch_thread):
    levels = style_levels(styles, masked=True)
    for value in (0, 1):
        mask = mask_canvas(np.full((HEIGHT, WIDTH), value), styles=2, workdir=None)
        whole = _whole(content, levels, model_set, mask=mask)
        reference = _whole(content, styles[value], model_set)
        _report(f"one-value mask {value} vs single style (whole)", psnr8(whole, reference))
        assert psnr8(whole, reference) >= 50
    tiled = _tiled(content, levels, model_set, tmp_path, mask=mask)
    reference = _tiled(content, styles[1], model_set, tmp_path)
    _report("one-value mask 1 vs single style (tiled)", psnr8(tiled, reference))
    assert psnr8(tiled, reference) >= 50


def test_preserve_color_keeps_the_content_chroma(model_set, styles, content, one_torch_thread):
    def ycbcr(rgb):
        u8 = np.round(np.clip(rgb, 0, 1) * 255)
        r, g, b = u8[..., 0], u8[..., 1], u8[..., 2]
        y = 0.299 * r + 0.587 * g + 0.114 * b
        return y, 128 - 0.168736 * r - 0.331264 * g + 0.5 * b, 128 + 0.5 * r - 0.418688 * g - 0.081312 * b

    out = _whole(content, styles[0], model_set, preserve_color=True)
    plain = _whole(content, styles[0], model_set)
    (y_out, *chroma_out), (y_in, *chroma_in) = ycbcr(out), ycbcr(content)
    chroma = psnr(np.stack(chroma_out), np.stack(chroma_in))
    _report("preserve-color Cb/Cr vs content", chroma)
    _report("preserve-color Y vs content", psnr(y_out, y_in))
    _report("plain stylize Cb/Cr vs content", psnr(np.stack(ycbcr(plain)[1:]), np.stack(chroma_in)))
    assert chroma >= 35
    assert psnr(y_out, y_in) < 25  # the luminance is the stylized one, not the content's
    assert psnr(y_out, ycbcr(plain)[0]) > 30  # ... and it is the plain stylization's, up to gamut clipping


# -- the pieces ---------------------------------------------------------------------------------------


def test_label_statistics_merged_over_tiles_equal_the_regions(labels):
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(size=(5, 40, 64)))
    lab = torch.from_numpy(labels[:40, :64])
    tiles = [(slice(0, 16), slice(0, 32)), (slice(0, 16), slice(32, 64)), (slice(16, 40), slice(0, 64))]
    merged = merge_tile_stats([label_stats(features[:, ys, xs], lab[ys, xs], 3) for ys, xs in tiles])
    for i in range(3):
        picked = features.reshape(5, -1)[:, lab.reshape(-1) == i].numpy()
        assert merged[i].count == picked.shape[1]
        if picked.shape[1] > 1:
            np.testing.assert_allclose(merged[i].mean, picked.mean(axis=1), rtol=1e-10)
            np.testing.assert_allclose(merged[i].covariance, np.cov(picked), rtol=1e-9, atol=1e-12)
    assert merged[2].count == 0  # a label with no pixel: empty, not an error
    one = label_stats(features, torch.zeros(40, 64, dtype=torch.int64), 2)
    whole = feature_stats(features)
    assert np.array_equal(one[0].scatter, whole.scatter) and one[1].count == 0


def test_labels_are_sampled_by_a_local_rule():
    """A tile's cells get the labels the whole image's cells get (16-aligned origins)."""
    labels = np.random.default_rng(1).integers(0, 3, size=(64, 96))
    for scale in (1, 2, 4, 8, 16):
        whole = sample_labels(labels, scale)
        tile = sample_labels(labels[16:48, 32:96], scale)
        assert torch.equal(tile, whole[16 // scale : 48 // scale, 32 // scale : 96 // scale])


def test_blend_is_the_interpolation_of_the_transformed_features():
    rng = np.random.default_rng(2)

    def stats(shift):
        return feature_stats(torch.from_numpy(rng.normal(size=(4, 30, 30)) * (1 + shift) + shift))

    content, a, b = stats(0.0), stats(1.0), stats(2.0)
    f = rng.normal(size=(4, 50))
    blended = whitening_coloring(content, blend_colorings([coloring(a), coloring(b)], [3, 1]))
    ta, tb = whitening_coloring(content, a), whitening_coloring(content, b)
    expected = 0.75 * (ta.matrix @ f + ta.bias[:, None]) + 0.25 * (tb.matrix @ f + tb.bias[:, None])
    np.testing.assert_allclose(blended.matrix @ f + blended.bias[:, None], expected, rtol=1e-10, atol=1e-10)
    exact = whitening_coloring(content, blend_colorings([coloring(a), coloring(b)], [1, 0]))
    assert np.array_equal(exact.matrix, ta.matrix) and np.array_equal(exact.bias, ta.bias)


def test_masked_levels_need_statistics_per_label(styles):
    levels = style_levels(styles, masked=True)
    with pytest.raises(ValueError, match="per label"):
        level_transform(styles[0][5], levels[5], alpha=1.0)
    with pytest.raises(ValueError, match="--mask"):
        style_levels(styles, masked=True, weights=(1, 1))
    with pytest.raises(ValueError, match="--style-weights or --mask"):
        style_levels(styles)


def test_keep_chroma_is_per_pixel_and_clamps():
    rng = np.random.default_rng(3)
    styled, content = rng.uniform(-0.2, 1.2, size=(3, 8, 8)), rng.uniform(size=(3, 8, 8))
    out = keep_chroma(styled, content)
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out[:, 2:5, 3:7], keep_chroma(styled[:, 2:5, 3:7], content[:, 2:5, 3:7]))
    torch_out = keep_chroma(torch.from_numpy(styled), torch.from_numpy(content)).numpy()
    np.testing.assert_allclose(torch_out, out, atol=1e-12)


def test_bad_masks_are_refused_before_stylizing(tmp_path, labels):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(labels.astype(np.uint8)).save(good)
    tiff = tmp_path / "good.tif"
    Image.fromarray(labels.astype(np.uint8)).save(tiff)
    for path in (good, tiff):  # decoded whole, and streamed segment by segment
        canvas = read_mask(str(path), height=HEIGHT, width=WIDTH, styles=2, workdir=str(tmp_path))
        padded = np.pad(labels, ((0, canvas.height - HEIGHT), (0, canvas.width - WIDTH)), mode="reflect")
        assert np.array_equal(canvas.read(Rect(0, 0, canvas.height, canvas.width))[0], padded)
        canvas.close()
    with pytest.raises(ImageError, match=r"--mask .* is 264x200, the content image is 200x200"):
        read_mask(str(good), height=HEIGHT, width=HEIGHT, styles=2, workdir=None)
    with pytest.raises(ImageError, match=r"has value 1 but only 1 --style given"):
        read_mask(str(good), height=HEIGHT, width=WIDTH, styles=1, workdir=None)


def test_stylize_image_takes_the_controls_in_every_mode(model_set, styles, content, labels, one_torch_thread):
    levels = style_levels(styles, masked=True)
    mask = mask_canvas(labels, styles=2, workdir=None)
    results = {}
    for mode in ("whole", "exact"):
        canvas, report = stylize_image(LoadedImage(content), levels, model_set, mode=mode, tile=TILE, mask=mask,
                                       preserve_color=True)
        results[mode] = read_rgb(canvas, HEIGHT, WIDTH)
        assert report.mode == mode
    assert psnr8(results["whole"], results["exact"]) >= 50


def test_batch_naming_of_masks_and_joined_styles():
    assert mask_for("s3://b/in/2026/cat.jpg", input_uri="s3://b/in/", mask_uri="s3://b/masks") == (
        "s3://b/masks/2026/cat.png")
    assert mask_for("/data/in/cat.tif", input_uri="/data/in", mask_uri="/data/masks/") == "/data/masks/cat.png"
    joined = join_styles(["s3://b/styles/a.jpg", "s3://b/other/b.png"])
    assert split_styles(joined) == ["s3://b/styles/a.jpg", "s3://b/other/b.png"]
    assert style_stem(joined) == "a+b" and style_stem("s3://b/styles/a.jpg") == "a"
