"""The Ray executor against the in-process one: the same level loop, the same pixels.

A real photo goes through :func:`pipeline.engine.tiled.run_levels` twice: tiles in this process on
canvases, and tiles on two Ray model actors (several tiles per call) over object refs. Both
run torch on one thread, so the floats are the same and so are the output's 8-bit pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from pipeline.batch.actors import CutImage, ModelActor, cut_image  # noqa: E402
from pipeline.batch.executor import ModelPool, RayExecutor, tiles_per_call  # noqa: E402
from pipeline.engine.controls import read_mask, style_levels  # noqa: E402
from pipeline.engine.runner import load_style  # noqa: E402
from pipeline.engine.strokes import run_strokes, stylize_strokes  # noqa: E402
from pipeline.engine.tiled import CanvasExecutor, canvas_from_array, cascade_geometry, run_levels  # noqa: E402
from pipeline.imaging.chunks import ChunkCanvas  # noqa: E402
from pipeline.imaging.imageio import ImageError, read_image  # noqa: E402
from pipeline.imaging.output import canvas_to_uint8  # noqa: E402
from pipeline.imaging.resample import BandSplit  # noqa: E402
from pipeline.imaging.tiles import canvas_size, plan_tiles  # noqa: E402

TILE = 128


@pytest.fixture(scope="module")
def pool(ray_cluster, weights_dir):
    actors = [
        ModelActor.options(num_cpus=1).remote(str(weights_dir), name=f"model-{i}", device="cpu", threads=1,
                                              storage_options=None)
        for i in range(2)
    ]
    yield ModelPool(actors, ray.get([a.describe.remote() for a in actors]))
    for actor in actors:
        ray.kill(actor)


@pytest.fixture(scope="module")
def photo(content_dir, tmp_path_factory):
    """A 300x260 crop of a real photo: 3 x 3 tiles of 128 px, edges not multiples of 16."""
    path = tmp_path_factory.mktemp("photo") / "gate.png"
    Image.open(content_dir / "astronaut_512.jpg").convert("RGB").crop((60, 40, 360, 300)).save(path)
    return path


def test_ray_executor_gives_the_in_process_pixels(pool, photo, model_set, style_dir, one_torch_thread):
    style = load_style(str(style_dir / "strokes_512.jpg"), model_set, style_size=128)
    rgb = read_image(str(photo)).rgb
    height, width = rgb.shape[:2]
    tiles = plan_tiles(height, width, tile=TILE)
    geometry = cascade_geometry({k: model_set.encoders[k].out_channels for k in model_set.levels})

    local = CanvasExecutor(canvas_from_array(rgb, workdir=None), model_set, workdir=None)
    run_levels(local, tiles, geometry, style, alpha=0.8)
    want = canvas_to_uint8(local.image, height, width)

    n = len(tiles)
    refs = cut_image.options(num_returns=1 + 2 * n, num_cpus=0).remote(
        str(photo), width=width, height=height, tile=TILE, max_pixels=10**7, storage_options=None
    )
    cores = ray.get(refs[1 : 1 + n])
    assert all(c.dtype == np.uint8 for c in cores), "an 8-bit input travels as uint8"
    assert ray.get(refs[1 + n :]) == [None] * n
    done = []
    per_call = tiles_per_call(n, TILE, 1)
    assert per_call > 1
    remote = RayExecutor(pool, refs[1 : 1 + n], tiles, canvas_size(height, width), tiles_per_call=per_call,
                         on_tile=done.append)
    run_levels(remote, tiles, geometry, style, alpha=0.8)
    assert sum(done) == 2 * n * len(geometry) and len(done) < len(geometry) * 2 * n
    assert remote.workers == {"model-0@" + ray.util.get_node_ip_address(), "model-1@" + ray.util.get_node_ip_address()}

    out = ChunkCanvas(3, *canvas_size(height, width), zip([t.core for t in tiles], ray.get(remote.image), strict=True))
    got = canvas_to_uint8(out, height, width)
    assert all(c.dtype == np.uint8 for c in ray.get(remote.image)), "the output level comes back as uint8"
    np.testing.assert_array_equal(got, want)
    assert np.abs(got.astype(int) - rgb.astype(np.float32) * 255).mean() > 10  # it did stylize


def test_round_a_returns_features_only_where_round_b_reads_them(pool, photo, model_set):
    rgb = read_image(str(photo)).rgb
    tiles = plan_tiles(*rgb.shape[:2], tile=TILE)
    canvas = canvas_from_array(rgb, workdir=None)
    size = (canvas.height, canvas.width)
    core = tiles[4].core
    cores = [t.core for t in tiles]
    chunks = [canvas.read(c) for c in cores]
    actor = pool.actors[0]
    for level in model_set.levels:
        [geo] = cascade_geometry({level: model_set.encoders[level].out_channels})
        returns = 2 if geo.cache_features else 1
        refs = actor.round_a.options(num_returns=returns).remote(level, [tiles[4]], size, cores, *chunks)
        values = ray.get(refs if returns > 1 else [refs])
        assert len(values[0].stats) == 1 and values[0].stats[0].count == core.area // geo.scale**2
        if geo.cache_features:
            assert values[1].shape == (model_set.encoders[level].out_channels, *[s // geo.scale for s in
                                                                                 (core.height, core.width)])
    assert [k for k in model_set.levels if cascade_geometry({k: model_set.encoders[k].out_channels})[0]
            .cache_features] == [5, 4, 3]


def test_a_failing_cut_reports_the_real_error_on_every_core(ray_cluster, photo, tmp_path):
    bad = tmp_path / "cut.jpg"
    data = (photo.parent / "gate.jpg")
    Image.open(photo).save(data, quality=90)
    bad.write_bytes(data.read_bytes()[:2000])
    refs = cut_image.options(num_returns=1 + 2 * 9, num_cpus=0).remote(
        str(bad), width=300, height=260, tile=TILE, max_pixels=10**7, storage_options=None
    )
    for ref in (refs[0], refs[5], refs[-1]):
        with pytest.raises(ImageError, match="corrupt or truncated"):
            ray.get(ref)


def test_ray_executor_gives_the_in_process_pixels_with_a_mask_colour_and_stroke_scale(
    pool, photo, model_set, style_dir, tmp_path, one_torch_thread
):
    """Masks, colour preservation and the stroke scale split over the actors like plain tiles."""
    styles = style_levels([load_style(str(style_dir / name), model_set, style_size=128)
                           for name in ("strokes_512.jpg", "strokes_570.jpg")], masked=True)
    rgb = read_image(str(photo)).rgb
    height, width = rgb.shape[:2]
    labels = np.zeros((height, width), np.uint8)
    labels[:, 140:] = 1
    labels[200:, :60] = 1
    mask_uri = str(tmp_path / "mask.png")
    Image.fromarray(labels).save(mask_uri)
    scale, split = 2, BandSplit(height, width, 2)
    tiles, coarse_tiles = plan_tiles(height, width, tile=TILE), plan_tiles(*split.coarse_size, tile=TILE)
    assert len(coarse_tiles) == 4
    geometry = cascade_geometry({k: model_set.encoders[k].out_channels for k in model_set.levels})

    mask = read_mask(mask_uri, height=height, width=width, styles=2, workdir=None)
    local, _ = stylize_strokes(canvas_from_array(rgb, workdir=None), height, width, styles, model_set, scale=scale,
                               tile=TILE, alpha=0.8, mask=mask, preserve_color=True)
    want = canvas_to_uint8(local, height, width)

    layout = CutImage(len(tiles), len(coarse_tiles), masked=True)
    parts = layout.parts(cut_image.options(num_returns=layout.returns, num_cpus=0).remote(
        str(photo), width=width, height=height, tile=TILE, max_pixels=10**7, storage_options=None, mask_uri=mask_uri,
        styles=2, stroke_scale=scale))
    assert all(m.dtype == np.float32 and m.shape[0] == 1 for m in ray.get(parts["mask"] + parts["coarse_mask"]))
    full = RayExecutor(pool, parts["image"], tiles, canvas_size(height, width), tiles_per_call=2, mask=parts["mask"],
                       labels=2, preserve_color=True)
    coarse = RayExecutor(pool, parts["coarse"], coarse_tiles, canvas_size(*split.coarse_size),
                         mask=parts["coarse_mask"], labels=2)
    run_strokes(full, coarse, tiles, coarse_tiles, geometry, styles, split=split, alpha=0.8)
    out = ChunkCanvas(3, *canvas_size(height, width), zip([t.core for t in tiles], ray.get(full.image), strict=True))
    got = canvas_to_uint8(out, height, width).astype(int)
    # The band split's matrix products may round in another order in another process: a level at most.
    assert np.abs(got - want).max() <= 1 and (got != want).mean() < 0.005
