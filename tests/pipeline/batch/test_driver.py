"""The Ray batch job end to end: a real local Ray cluster and moto's S3 server on loopback.

One Ray instance (2 CPUs) serves the whole module; ``run_batch`` joins it. Images are small
and the tile is 128 px, so one image still spans several tiles (and, at level 5, a halo
wider than a tile) while the module stays within a couple of minutes on two cores.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("moto.server")
ray = pytest.importorskip("ray")

from jobs.stylize import main  # noqa: E402
from models.bundle import weight_name, write_bundle, write_latest  # noqa: E402
from models.family import CD16X  # noqa: E402
from pipeline.batch import driver as batch  # noqa: E402
from pipeline.batch.manifest import SCHEMA, read_manifest  # noqa: E402
from pipeline.engine.runner import load_style, stylize_file  # noqa: E402

TILE = 128
STYLE_SIZE = 128
MAX_PIXELS = 100_000


def _encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _args(input_uri: str, output_uri: str, styles: list[str], weights_dir: Path, *extra: str) -> list[str]:
    argv = ["--input", input_uri, "--output", output_uri, "--weights", str(weights_dir), "--tile", str(TILE),
            "--style-size", str(STYLE_SIZE), "--workers", "2", "--progress-seconds", "0.5"]
    for style in styles:
        argv += ["--style", style]
    return argv + list(extra)


@pytest.fixture(scope="module")
def bucket(s3_options, s3_fs, content_dir, style_dir):
    """``s3://photos/in/`` with good images of three formats and sizes, and bad inputs of each kind."""
    fs = s3_fs
    fs.mkdir("photos")
    fs.mkdir("styles")
    gate = Image.open(content_dir / "astronaut_512.jpg").convert("RGB")
    portrait = Image.open(content_dir / "rocket_420.jpg").convert("RGB")
    files = {
        # fits in one tile, with alpha: one actor call
        "in/small.png": _encode(portrait.resize((96, 80)).convert("RGBA"), "PNG"),
        # 6 tiles of 128 px in a subfolder, kept in the output's layout
        "in/sub/mid.jpg": _encode(gate.resize((300, 200)), "JPEG", quality=95),
        # 2 x 2 tiles with alpha, streamed from and written back as a tiled TIFF
        "in/tall.tif": _encode(portrait.resize((160, 240)).convert("RGBA"), "TIFF"),
        "in/corrupt.jpg": _encode(gate.resize((300, 200)), "JPEG")[:700],
        "in/notes.txt": b"not an image\n",
        "in/huge.png": _encode(gate.resize((400, 300)), "PNG"),  # over --max-pixels
        "in/../evil.png": _encode(gate.resize((64, 64)), "PNG"),  # a key that climbs out of the prefix
    }
    for key, data in files.items():
        fs.pipe_file(f"photos/{key}", data)
    raw = {  # keys another S3 client may write: put as they are (s3fs would normalise them)
        "in/folder/": b"",  # a folder marker: not a file, no row
        "in//twice.png": _encode(gate.resize((64, 64)), "PNG"),  # an empty segment: not read as in/twice.png
        "in/" + "long" * 62 + ".png": _encode(gate.resize((64, 64)), "PNG"),  # output name over 255 bytes
    }
    for key, data in raw.items():
        fs.call_s3("put_object", Bucket="photos", Key=key, Body=data)
    style = Image.open(style_dir / "strokes_512.jpg").convert("RGB").resize((256, 256))  # under --max-pixels
    fs.pipe_file("styles/brush.jpg", _encode(style, "JPEG", quality=95))
    return {"input": "s3://photos/in", "styles": ["s3://styles/brush.jpg", "s3://styles/missing.jpg"]}


def _reference(uri: str, style_uri: str, tmp_path: Path, model_set, options) -> np.ndarray:
    """The in-process engine's output for the same input, decoded."""
    style = load_style(style_uri, model_set, style_size=STYLE_SIZE, storage_options=options)
    out = tmp_path / ("ref" + Path(uri).suffix)
    stylize_file(uri, str(out), style, model_set, mode="auto", tile=TILE, storage_options=options)
    return _decode(out.read_bytes())


def test_batch_on_s3_end_to_end_and_resume(
    ray_cluster, s3_options, s3_fs, bucket, weights_dir, model_set, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="ultrastyle")
    opts = ["--storage-options", json.dumps(s3_options), "--max-pixels", str(MAX_PIXELS)]
    argv = _args(bucket["input"], "s3://photos/out", bucket["styles"], weights_dir, *opts)

    assert main(argv) == 1  # some pairs failed, the others finished

    fs = s3_fs
    table = read_manifest("s3://photos/out", s3_options)
    assert table.schema.equals(SCHEMA)
    rows = {(Path(r["content_uri"]).name, Path(r["style_uri"]).name): r for r in table.to_pylist()}
    assert len(rows) == 9 * 2 and not [k for k in rows if k[0] == "folder"]  # the folder marker is no pair
    ok = {k for k, r in rows.items() if r["status"] == "ok"}
    assert ok == {("small.png", "brush.jpg"), ("mid.jpg", "brush.jpg"), ("tall.tif", "brush.jpg")}
    for key, row in rows.items():
        if key in ok:
            assert row["error"] == "" and row["model_id"] and row["worker"].startswith("model-")
            assert row["seconds"] > 0 and row["compute_seconds"] > 0 and row["read_seconds"] > 0
        else:
            assert row["status"] == "failed" and row["error"] and "\n" not in row["error"]
        if key[1] == "missing.jpg" and key[0] not in ("evil.png", "twice.png") and not key[0].startswith("long"):
            assert row["error"].startswith("style image failed: no such file: s3://styles/missing.jpg")
    errors = {k[0]: rows[k]["error"] for k in rows if k[1] == "brush.jpg"}
    assert "corrupt" in errors["corrupt.jpg"] or "not a readable image" in errors["corrupt.jpg"]
    assert "not an image" in errors["notes.txt"] or "not a readable image" in errors["notes.txt"]
    assert "over --max-pixels 100,000" in errors["huge.png"]
    assert "'../evil.png' has an empty, '.' or '..' path segment" in errors["evil.png"]
    assert rows[("twice.png", "brush.jpg")]["content_uri"] == "s3://photos/in//twice.png"
    assert "'/twice.png' has an empty, '.' or '..' path segment" in errors["twice.png"]
    long_name = next(name for name in errors if name.startswith("long"))
    assert "output file name would be 259 bytes, over the 255" in errors[long_name]
    assert rows[("mid.jpg", "brush.jpg")]["tiles"] == 6 and rows[("mid.jpg", "brush.jpg")]["mode"] == "tiled"
    assert rows[("small.png", "brush.jpg")]["mode"] == "whole"

    expected = {
        "photos/out/small__brush.png": ("s3://photos/in/small.png", (80, 96, 4)),
        "photos/out/sub/mid__brush.jpg": ("s3://photos/in/sub/mid.jpg", (200, 300, 3)),
        "photos/out/tall__brush.tif": ("s3://photos/in/tall.tif", (240, 160, 4)),
    }
    outputs = {p for p in fs.find("photos/out") if "/_manifest/" not in p}
    assert outputs == set(expected)  # nothing escaped the prefix, nothing half-written left behind
    for path, (content, shape) in expected.items():
        got = _decode(fs.cat_file(path))
        assert got.shape == shape
        want = _reference(content, "s3://styles/brush.jpg", tmp_path, model_set, s3_options)
        assert _psnr(got, want) >= 50, path
    stamps = {p: fs.info(p)["LastModified"] for p in expected}
    assert len(fs.find("photos/out/_manifest")) <= 2  # a run's rows compacted into few files

    assert "done: 18 pairs: 3 ok, 0 skipped, 15 failed" in caplog.text
    assert "6 to run: 6 new: corrupt.jpg x brush, huge.png x brush, notes.txt x brush, small.png x brush" in caplog.text
    assert "12 refused: content key '../evil.png' has an empty" in caplog.text
    caplog.clear()

    # A rerun skips the finished pairs, redoes none of them and adds no row for them; the bad ones fail again.
    assert main(argv) == 1
    fs.invalidate_cache()
    rerun = read_manifest("s3://photos/out", s3_options)
    first_run = {r["run_id"] for r in table.to_pylist() if r["status"] == "ok"}
    assert {r["run_id"] for r in rerun.to_pylist() if r["status"] == "ok"} == first_run
    assert rerun.num_rows == 18 and len(set(rerun["run_id"].to_pylist())) == 2
    assert {p: fs.info(p)["LastModified"] for p in expected} == stamps
    assert "done: 18 pairs: 0 ok, 3 skipped, 15 failed" in caplog.text
    assert len(fs.find("photos/out/_manifest")) <= 3


def test_missing_bucket_is_one_clear_error(s3_options, weights_dir, tmp_path, capsys):
    argv = _args("s3://no-such-bucket/in", str(tmp_path / "out"), ["s3://styles/brush.jpg"], weights_dir,
                 "--storage-options", json.dumps(s3_options))
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ultrastyle stylize: error: input s3://no-such-bucket/in does not exist")


def test_unreachable_endpoint_is_one_clear_error(weights_dir, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
               "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    argv = _args("s3://photos/in", str(tmp_path / "out"), ["s3://styles/brush.jpg"], weights_dir,
                 "--storage-options", json.dumps(options))
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ultrastyle stylize: error: cannot list input s3://photos/in: EndpointConnectionError")


def _kill_model_0() -> str:
    """Kill the first model actor (Ray restarts it); returns its name."""
    name = next(n for n in ray.util.list_named_actors() if n.endswith("-model-0"))
    ray.kill(ray.get_actor(name), no_restart=False)
    return name


def test_killed_actor_is_restarted_and_its_tiles_retried(ray_cluster, content_dir, style_dir, weights_dir,
                                                         model_set, tmp_path, on_tile_progress):
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    Image.open(content_dir / "astronaut_512.jpg").convert("RGB").resize((400, 300)).save(source / "gate.png")
    style = str(style_dir / "strokes_512.jpg")
    killer = on_tile_progress(_kill_model_0, after=10)
    assert main(_args(str(source), str(out), [style], weights_dir, "--progress-seconds", "0.2")) == 0
    assert killer.done, "the job finished before an actor could be killed"

    row = read_manifest(str(out)).to_pylist()[0]
    assert row["status"] == "ok" and row["tiles"] == 12
    got = _decode((out / "gate__strokes_512.png").read_bytes())
    want = _reference(str(source / "gate.png"), style, tmp_path, model_set, None)
    assert _psnr(got, want) >= 50


def test_whole_mode_runs_each_image_in_one_actor_call(ray_cluster, content_dir, style_dir, weights_dir, model_set,
                                                      tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    Image.open(content_dir / "rocket_420.jpg").convert("RGB").resize((200, 150)).save(source / "face.png")
    style = str(style_dir / "strokes_512.jpg")
    assert main(_args(str(source), str(out), [style], weights_dir, "--mode", "whole")) == 0
    [row] = read_manifest(str(out)).to_pylist()
    assert (row["status"], row["mode"], row["tiles"], row["width"], row["height"]) == ("ok", "whole", 1, 200, 150)
    assert row["read_seconds"] > 0 and row["write_seconds"] > 0 and row["worker"].startswith("model-")
    got = _decode((out / "face__strokes_512.png").read_bytes())
    style_stats = load_style(style, model_set, style_size=STYLE_SIZE)
    stylize_file(str(source / "face.png"), str(tmp_path / "ref.png"), style_stats, model_set, mode="whole")
    assert _psnr(got, _decode((tmp_path / "ref.png").read_bytes())) >= 50


def test_tile_batch_reaches_the_actors_and_keeps_the_pixels(ray_cluster, content_dir, style_dir, weights_dir,
                                                            model_set, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ultrastyle")
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    Image.open(content_dir / "astronaut_512.jpg").convert("RGB").resize((400, 300)).save(source / "gate.png")
    style = str(style_dir / "strokes_512.jpg")
    assert main(_args(str(source), str(out), [style], weights_dir, "--tile-batch", "3")) == 0
    assert len(re.findall(r"ready: model \S+ on cpu, 3 tile\(s\) per network call", caplog.text)) == 2
    got = _decode((out / "gate__strokes_512.png").read_bytes())
    want = _reference(str(source / "gate.png"), style, tmp_path, model_set, None)
    assert _psnr(got, want) >= 50


def test_actors_load_the_bundle_the_driver_checked(ray_cluster, content_dir, style_dir, model_set, tmp_path,
                                                  monkeypatch, caplog):
    """A ``<publish>/latest`` promoted after the driver's checks does not reach the actors."""
    caplog.set_level(logging.INFO, logger="ultrastyle")
    publish, source, out = tmp_path / "publish", tmp_path / "in", tmp_path / "out"
    states = {weight_name(k, kind): module.state_dict() for k in model_set.levels
              for kind, module in (("SE", model_set.encoders[k]), ("SD", model_set.decoders[k]))}
    card = {"widths": list(CD16X.widths), "level1_width": CD16X.level1_width, "embed_widths": list(CD16X.embed_widths)}
    for run_id in ("run-1", "run-2"):
        write_bundle(str(publish), run_id, states, card)
    write_latest(str(publish), "run-1")
    checked = batch.check_batch

    def check_then_promote(args, **kwargs):
        found = checked(args, **kwargs)
        write_latest(str(publish), "run-2")
        return found

    monkeypatch.setattr(batch, "check_batch", check_then_promote)
    source.mkdir()
    Image.open(content_dir / "rocket_420.jpg").convert("RGB").resize((64, 64)).save(source / "face.png")
    assert main(_args(str(source), str(out), [str(style_dir / "strokes_512.jpg")], publish / "latest")) == 0
    assert re.findall(r"ready: model (\S+) on", caplog.text) == ["bundle:run-1", "bundle:run-1"]
    assert [r["model_id"] for r in read_manifest(str(out)).to_pylist()] == ["bundle:run-1"]


def test_admission_keeps_the_megapixels_in_flight_within_the_budget(ray_cluster, content_dir, style_dir, weights_dir,
                                                                   tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ultrastyle")
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    gate = Image.open(content_dir / "astronaut_512.jpg").convert("RGB")
    for name in ("a", "b"):
        gate.resize((300, 200)).save(source / f"{name}.png")  # 0.06 MP each: two do not fit in 0.1 MP
    argv = _args(str(source), str(out), [str(style_dir / "strokes_512.jpg")], weights_dir,
                 "--max-in-flight-mp", "0.1", "--progress-seconds", "0.2")
    assert main(argv) == 0
    in_flight = [int(n) for n in re.findall(r"(\d+) in flight \| tiles", caplog.text)]
    assert in_flight and max(in_flight) == 1
    assert [r["status"] for r in read_manifest(str(out)).to_pylist()] == ["ok", "ok"]


def test_weights_that_cannot_load_stop_the_job_with_one_line(ray_cluster, content_dir, style_dir, tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    Image.open(content_dir / "rocket_420.jpg").convert("RGB").resize((64, 64)).save(source / "face.png")
    argv = _args(str(source), str(tmp_path / "out"), [str(style_dir / "strokes_512.jpg")], tmp_path / "no-weights")
    assert main(argv) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]  # checked on the driver, before any actor starts
    assert line.startswith("ultrastyle stylize: error: weights location") and "no-weights" in line


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--tile", "100", "--tile must be a positive multiple of 16"), ("--max-in-flight", "0", "--max-in-flight"),
     ("--alpha", "1.5", "--alpha must be in [0, 1]"), ("--retries", "-1", "cannot be negative"),
     ("--max-in-flight-mp", "0", "--max-in-flight-mp must be positive"),
     ("--tile-batch", "0", "--tile-batch must be at least 1")],
)
def test_bad_flags_are_refused_before_anything_runs(flag, value, message, tmp_path, weights_dir, capsys):
    (tmp_path / "in").mkdir()
    argv = [*_args(str(tmp_path / "in"), str(tmp_path / "out"), ["s.jpg"], weights_dir), flag, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
