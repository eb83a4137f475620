"""``ultrastyle stylize``: single files end to end, one-line errors for bad input, and the batch
job's resume by settings, its checks before starting and its refusal of actors that cannot fit."""

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.stylize import main
from pipeline.batch.manifest import read_manifest

ray = pytest.importorskip("ray")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message"
    return err[-1]


def test_stylize_a_real_photo_end_to_end(weights_dir, content_dir, style_dir, tmp_path, caplog):
    out = tmp_path / "out.png"
    rc = main([str(content_dir / "rocket_420.jpg"), "--style", str(style_dir / "strokes_512.jpg"),
               "--output", str(out), "--weights", str(weights_dir), "--alpha", "0.8"])
    assert rc == 0
    result = Image.open(out)
    assert result.size == (420, 420) and result.mode == "RGB"
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split()[1] for m in messages if m.startswith("level")] == ["5", "4", "3", "2", "1"]
    assert any("MP/s" in m for m in messages)
    if not torch.cuda.is_available():  # --device auto is the CPU here, with one tile per network call
        assert any(m.startswith("models cd16x loaded (on cpu, fp32, 1 tile(s) per network call)") for m in messages)
    # The result is a stylized image, not a copy of the content.
    content = np.asarray(Image.open(content_dir / "rocket_420.jpg").convert("RGB"), np.float64)
    assert np.abs(np.asarray(result, np.float64) - content).mean() > 10


def test_console_script_runs(weights_dir, content_dir, style_dir, tmp_path):
    exe = shutil.which("ultrastyle")
    if exe is None:
        pytest.skip("the ultrastyle console script is not installed (pip install -e .)")
    out = tmp_path / "o.jpg"
    # The script imports the installed package: point it at this checkout (an editable install
    # may name another one).
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [exe, "stylize", str(content_dir / "astronaut_512.jpg"), "--style", str(style_dir / "strokes_570.jpg"),
         "--output", str(out), "--weights", str(weights_dir), "--mode", "exact", "--tile", "256"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (512, 512)
    assert "exact mode, 4 tiles" in proc.stderr


@pytest.fixture
def bad_inputs(tmp_path, content_dir):
    data = (content_dir / "astronaut_512.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "notes.jpg").write_text("this is a text file, not a photo\n")
    return tmp_path


@pytest.mark.parametrize(
    ("content", "style", "expected"),
    [
        ("truncated.jpg", "good", "corrupt or truncated"),
        ("notes.jpg", "good", "not an image"),
        ("good", "missing.jpg", "no such file"),
        ("missing.png", "good", "no such file"),
    ],
)
def test_bad_inputs_exit_nonzero_with_one_line(bad_inputs, weights_dir, content_dir, style_dir, capsys,
                                               content, style, expected):
    content_uri = str(content_dir / "astronaut_512.jpg") if content == "good" else str(bad_inputs / content)
    style_uri = str(style_dir / "strokes_512.jpg") if style == "good" else str(bad_inputs / style)
    rc = main([content_uri, "--style", style_uri, "--output", str(bad_inputs / "o.png"),
               "--weights", str(weights_dir)])
    assert rc == 1
    line = _error_line(capsys)
    assert line.startswith("ultrastyle stylize: error:") and expected in line
    assert not (bad_inputs / "o.png").exists()


def test_wrong_weights_sha_exits_nonzero(weights_dir, content_dir, style_dir, tmp_path, capsys):
    copy = tmp_path / "weights"
    shutil.copytree(weights_dir, copy)
    blob = bytearray((copy / "3SD.safetensors").read_bytes())
    blob[-10] ^= 0xFF
    (copy / "3SD.safetensors").write_bytes(bytes(blob))
    rc = main([str(content_dir / "rocket_420.jpg"), "--style", str(style_dir / "strokes_512.jpg"),
               "--output", str(tmp_path / "o.png"), "--weights", str(copy)])
    assert rc == 1
    line = _error_line(capsys)
    assert "sha256 mismatch" in line and "3SD.safetensors" in line and "a69bea9a3961" in line


def test_too_many_pixels_is_refused(weights_dir, content_dir, style_dir, tmp_path, capsys):
    rc = main([str(content_dir / "rocket_420.jpg"), "--style", str(style_dir / "strokes_512.jpg"),
               "--output", str(tmp_path / "o.png"), "--weights", str(weights_dir), "--max-pixels", "100000"])
    assert rc == 1
    assert "over --max-pixels 100,000" in _error_line(capsys)


def test_help_lists_the_flags():
    proc = subprocess.run([sys.executable, "-m", "jobs.stylize", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--style", "--weights", "--alpha", "--style-size", "--mode", "--tile", "--max-pixels"):
        assert flag in proc.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--weights", ""], "--weights must be a URI or path, got ''"),
        (["--alpha", "1.5"], "--alpha must be in [0, 1], got 1.5"),
        (["--alpha", "nan"], "--alpha must be a finite number, got nan"),
        (["--style-size", "0"], "--style-size must be at least 1, got 0"),
        (["--mode", "fast"], "argument --mode: invalid choice: 'fast'"),
        (["--tile", "100"], "--tile must be a positive multiple of 16, got 100"),
        (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
        (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["--tile-batch", "0"], "--tile-batch must be at least 1, got 0"),
        (["--max-pixels", "0"], "--max-pixels must be at least 1, got 0"),
        (["--quality", "0"], "--quality must be in [1, 100], got 0"),
        (["--style-weights", "x"], "--style-weights must be comma-separated numbers, got 'x'"),
        (["--mask", ""], "--mask must be a URI or path, got ''"),
        (["--storage-options", "[1]"], "--storage-options must be a mapping of fsspec options, got list"),
        (["--format", "."], "--format must be an image extension such as png or jpg, got '.'"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--gpus-per-worker", "-1"], "--gpus-per-worker cannot be negative, got -1"),
        (["--cpus-per-worker", "0"], "--cpus-per-worker must be positive, got 0"),
        (["--io-cpus", "-1"], "--io-cpus cannot be negative, got -1"),
        (["--max-in-flight", "0"], "--max-in-flight must be at least 1, got 0"),
        (["--max-in-flight-mp", "0"], "--max-in-flight-mp must be positive, got 0"),
        (["--retries", "-1"], "--retries cannot be negative, got -1"),
        (["--progress-seconds", "0"], "--progress-seconds must be positive, got 0"),
    ],
)
def test_bad_flags_are_refused_before_loading_anything(content_dir, style_dir, tmp_path, capsys, flags, message):
    # No --weights: a check that ran after loading would fail on the download instead.
    argv = [str(content_dir / "rocket_420.jpg"), "--style", str(style_dir / "strokes_512.jpg"),
            "--output", str(tmp_path / "o.png"), *flags]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own refusals (a value outside --mode's or --precision's choices)
        rc = e.code
    assert rc == 2
    line = _error_line(capsys)
    assert line.startswith(f"ultrastyle stylize: error: {message}"), line
    assert not (tmp_path / "o.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_refused_in_one_line(content_dir, style_dir, tmp_path, capsys):
    rc = main([str(content_dir / "rocket_420.jpg"), "--style", str(style_dir / "strokes_512.jpg"),
               "--output", str(tmp_path / "o.png"), "--device", "cuda"])
    assert rc == 2
    assert _error_line(capsys) == "ultrastyle stylize: error: --device cuda: torch sees no CUDA GPU on this machine"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "cuda:1"], "--device cuda:1: Ray gives each model actor its GPU, so the batch job takes auto, "
         "cpu or cuda"),
        (["--device", "cpu", "--gpus-per-worker", "1"], "--device and --gpus-per-worker do not go together: CPU "
         "actors would leave their GPUs idle, got cpu and 1"),
        (["--device", "cuda", "--gpus-per-worker", "0"], "--device and --gpus-per-worker do not go together: CUDA "
         "actors need a GPU, got cuda and 0"),
    ],
)
def test_a_batch_refuses_a_device_its_actors_cannot_honour(small_batch, weights_dir, capsys, flags, message):
    source, style, out = small_batch
    assert main(_batch(source, style, out, weights_dir, *flags)) == 2
    assert _error_line(capsys) == f"ultrastyle stylize: error: {message}"
    assert not out.exists()


@pytest.mark.cuda
def test_stylize_uses_cuda_without_a_flag(weights_dir, content_dir, style_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ultrastyle")
    out = tmp_path / "out.png"
    assert main([str(content_dir / "rocket_420.jpg"), "--style", str(style_dir / "strokes_512.jpg"),
                 "--output", str(out), "--weights", str(weights_dir)]) == 0
    [loaded] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("models ")]
    assert "(on cuda, fp32, 4 tile(s) per network call)" in loaded
    assert Image.open(out).size == (420, 420)


def test_a_single_image_takes_one_style(content_dir, style_dir, tmp_path, capsys):
    style = str(style_dir / "strokes_512.jpg")
    rc = main([str(content_dir / "rocket_420.jpg"), "--style", style, "--style", style,
               "--output", str(tmp_path / "o.png")])
    assert rc == 2
    assert "a single image takes one --style" in _error_line(capsys)


# -- the batch job: resume by settings, fail fast, no hang ---------------------------------------

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_batch(tmp_path, content_dir, style_dir):
    """Two small photos and one style, so a batch run takes seconds."""
    source, styles = tmp_path / "in", tmp_path / "styles"
    source.mkdir()
    styles.mkdir()
    Image.open(content_dir / "rocket_420.jpg").convert("RGB").resize((64, 48)).save(source / "face.png")
    Image.open(content_dir / "astronaut_512.jpg").convert("RGB").resize((80, 64)).save(source / "gate.jpg")
    Image.open(style_dir / "strokes_512.jpg").convert("RGB").resize((96, 96)).save(styles / "s.jpg")
    return source, styles / "s.jpg", tmp_path / "out"


def _batch(source: Path, style: Path, out: Path, weights_dir: Path, *extra: str) -> list[str]:
    return ["--input", str(source), "--style", str(style), "--output", str(out), "--weights", str(weights_dir),
            "--tile", "64", "--style-size", "64", "--workers", "2", "--progress-seconds", "0.5", *extra]


def _stamps(out: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each output's inode, mtime and bytes (an atomic rewrite always gets a new inode)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if p.is_file()}


def _last_run(out: Path) -> list[dict]:
    rows = read_manifest(str(out)).to_pylist()
    last = max(rows, key=lambda r: r["finished_at"])["run_id"]
    return sorted((r for r in rows if r["run_id"] == last), key=lambda r: r["content_uri"])


def test_a_rerun_redoes_exactly_the_pairs_whose_settings_changed(ray_cluster, small_batch, weights_dir):
    source, style, out = small_batch
    argv = _batch(source, style, out, weights_dir)
    assert main(argv) == 0
    first = _stamps(out)
    assert sorted(first) == ["face__s.png", "gate__s.jpg"]
    rows = _last_run(out)

    # Another alpha: every output rewritten with new pixels, and each row says why.
    assert main([*argv, "--alpha", "0.5"]) == 0
    second = _stamps(out)
    for name, (inode, mtime, data) in second.items():
        assert inode != first[name][0] and mtime >= first[name][1] and data != first[name][2], name
    assert [r["reason"] for r in rows] == ["new", "new"]
    made_by = [r["fingerprint"] for r in rows]
    settings = json.loads(rows[0]["settings"])
    assert (settings["alpha"], settings["style_size"], settings["mode"], settings["model_id"]) == (1.0, 64, "auto",
                                                                                                   "cd16x")
    assert settings["style"].startswith("sha256:") and len(settings["weights"]) == 10
    assert [json.loads(r["settings"])["quality"] for r in rows] == [None, 95]  # quality counts for the JPEG only
    rows = _last_run(out)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [r["reason"] for r in rows] == ["settings changed: alpha 1.0 -> 0.5"] * 2
    made_by, before = [r["fingerprint"] for r in rows], made_by
    assert all(new != old for new, old in zip(made_by, before, strict=True))

    # The same command again: nothing rewritten, every pair skipped, and no row added for them.
    before = read_manifest(str(out))
    assert main([*argv, "--alpha", "0.5"]) == 0
    assert _stamps(out) == second
    assert read_manifest(str(out)).equals(before)
    assert [r["fingerprint"] for r in _last_run(out)] == made_by

    # A new picture under the style's old name redoes its pairs.
    Image.open(source / "gate.jpg").resize((96, 96)).save(style)
    assert main([*argv, "--alpha", "0.5"]) == 0
    third = _stamps(out)
    assert all(third[name][0] != second[name][0] for name in third)
    assert all(r["status"] == "ok" and r["reason"].startswith("settings changed: style sha256:")
               for r in _last_run(out))

    # --overwrite redoes everything, whatever the manifest says.
    assert main([*argv, "--alpha", "0.5", "--overwrite"]) == 0
    assert all(_stamps(out)[name][0] != third[name][0] for name in third)
    assert [(r["status"], r["reason"]) for r in _last_run(out)] == [("ok", "overwrite")] * 2


def _run_cli(*argv: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.stylize", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    ("case", "status", "expected"),
    [
        ("weights", 1, "weights location {tmp}/no-weights is not a folder"),
        ("style", 1, "style image failed: no such file: {tmp}/missing.jpg"),
        ("bucket", 1, "output s3://no-such-bucket/out is not writable: "),
        ("format", 2, "--format 'bmp': extension '.bmp' is not one of"),
    ],
)
def test_a_doomed_batch_fails_at_once_in_one_line(small_batch, weights_dir, s3_options, tmp_path, case, status,
                                                  expected):
    source, style, out = small_batch
    weights = tmp_path / "no-weights" if case == "weights" else weights_dir
    style = tmp_path / "missing.jpg" if case == "style" else style
    argv = _batch(source, style, out, weights)
    if case == "bucket":
        argv[argv.index("--output") + 1] = "s3://no-such-bucket/out"
        argv += ["--storage-options", json.dumps(s3_options)]
    if case == "format":
        argv += ["--format", "bmp"]
    proc = _run_cli(*argv)
    assert proc.returncode == status
    # One line and nothing else: no traceback, and nothing started (Ray would log its start).
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("ultrastyle stylize: error: " + expected.format(tmp=tmp_path))
    assert not out.exists()


@pytest.mark.parametrize(
    ("output", "status", "expected"),
    [
        ("o.bmp", 2, "--output cannot write {tmp}/o.bmp: extension '.bmp' is not one of"),
        ("taken/o.png", 1, "output {tmp}/taken/o.png is not writable: "),
    ],
)
def test_the_single_image_cli_checks_its_output_before_anything_else(content_dir, style_dir, tmp_path, output,
                                                                     status, expected):
    (tmp_path / "taken").write_text("a file where the output folder should be")
    # Missing weights: a check that ran after loading them would report those instead.
    proc = _run_cli(str(content_dir / "rocket_420.jpg"), "--style", str(style_dir / "strokes_512.jpg"),
                    "--output", str(tmp_path / output), "--weights", str(tmp_path / "no-weights"))
    assert proc.returncode == status
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith(f"ultrastyle stylize: error: {expected.format(tmp=tmp_path)}")


@pytest.mark.parametrize(
    ("case", "status", "expected"),
    [
        ("missing content", 1, "no such file: {tmp}/missing.jpg"),
        ("missing style", 1, "no such file: {tmp}/missing.jpg"),
        ("not an image", 1, "{tmp}/notes.jpg is not an image libvips can read"),
        ("folder into an image name", 2, "--output {tmp}/out.png names an image, but the input {tmp}/photos is a "
                                         "folder or prefix"),
    ],
)
def test_a_new_users_mistake_is_one_line_before_the_models_load(content_dir, style_dir, tmp_path, capsys, case,
                                                                 status, expected):
    (tmp_path / "notes.jpg").write_text("this is a text file, not a photo\n")
    (tmp_path / "photos").mkdir()
    shutil.copy(content_dir / "rocket_420.jpg", tmp_path / "photos")
    content = {"missing content": tmp_path / "missing.jpg", "not an image": tmp_path / "notes.jpg",
               "folder into an image name": tmp_path / "photos"}.get(case, content_dir / "rocket_420.jpg")
    style = tmp_path / "missing.jpg" if case == "missing style" else style_dir / "strokes_512.jpg"
    # Missing weights: a check that ran after loading them would report those instead.
    rc = main([str(content), "--style", str(style), "--output", str(tmp_path / "out.png"),
               "--weights", str(tmp_path / "no-weights")])
    assert rc == status
    assert _error_line(capsys).startswith(f"ultrastyle stylize: error: {expected.format(tmp=tmp_path)}")
    assert not (tmp_path / "out.png").exists()  # neither an image nor a batch's folder


def test_malformed_storage_options_are_refused_without_their_text(content_dir, style_dir, tmp_path, capsys):
    secret = '{"key": "AKIAEXAMPLE", "secret": "hunter2-do-not-print" '  # no closing brace
    with pytest.raises(SystemExit) as done:
        main([str(content_dir / "rocket_420.jpg"), "--style", str(style_dir / "strokes_512.jpg"),
              "--output", str(tmp_path / "o.png"), "--storage-options", secret])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["ultrastyle stylize: error: argument --storage-options: is not valid JSON "
                                "(Expecting ',' delimiter at line 1, column 57); its text is not shown, as it may "
                                "hold secrets (see --help)"], err
    assert "hunter2" not in err and "AKIA" not in err


def test_an_s3_image_without_credentials_is_one_line(s3_options, style_dir, tmp_path):
    """No key in the environment, no AWS files, no instance metadata: botocore finds no credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}
    env.update({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
                "AWS_EC2_METADATA_DISABLED": "true"})
    endpoint = {"client_kwargs": s3_options["client_kwargs"]}  # moto, so nothing leaves the machine
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.stylize", "s3://photos/cat.jpg", "--style", str(style_dir / "strokes_512.jpg"),
         "--output", str(tmp_path / "o.png"), "--storage-options", json.dumps(endpoint)],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["ultrastyle stylize: error: input s3://photos/cat.jpg cannot be read: "
                                        "NoCredentialsError: Unable to locate credentials"], proc.stderr


def test_a_bad_command_line_is_one_line_and_status_2():
    proc = _run_cli("--alpha", "much")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "ultrastyle stylize: error: argument --alpha: invalid float value: 'much' (see --help)"
    ]


def test_more_actors_than_the_cluster_holds_are_refused_at_once(ray_cluster, small_batch, weights_dir):
    source, style, out = small_batch
    argv = _batch(source, style, out, weights_dir)
    argv[argv.index("--workers") + 1] = "3"
    start = time.perf_counter()
    proc = _run_cli(*argv, "--cpus-per-worker", "1", timeout=180,
                    env={"RAY_ADDRESS": ray.get_runtime_context().gcs_address})
    assert proc.returncode == 2, proc.stderr
    assert time.perf_counter() - start < 120
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "ultrastyle stylize: error: --workers 3 model actors of 1 CPU and 0 GPU each cannot all be placed "
        "(at most 2 fit; the cluster has 2 CPUs and 0 GPUs on 1 node(s)): "
        "lower --workers, --cpus-per-worker or --gpus-per-worker"
    )
    assert not [p for p in out.rglob("*") if p.is_file()]  # no output, no manifest row


def test_help_groups_the_flags_and_ends_with_examples():
    from jobs.stylize import build_parser

    text = build_parser().format_help()
    groups = ["input and output:", "look:", "performance:", "cluster and batch:", "examples:"]
    at = [text.index("\n" + g + "\n") for g in groups]
    assert at == sorted(at), "groups out of order"
    sections = dict(zip(groups, (text[a:b] for a, b in zip(at, [*at[1:], len(text)], strict=True)), strict=True))
    for group, flags in {"input and output:": ["--input", "--style ", "--output"],
                         "look:": ["--alpha", "--style-size", "--style-weights", "--mask", "--preserve-color"],
                         "performance:": ["--mode", "--tile ", "--device", "--precision", "--tile-batch"],
                         "cluster and batch:": ["--workers", "--gpus-per-worker", "--max-in-flight"]}.items():
        assert all(flag in sections[group] for flag in flags), group
    assert "``" not in text and ":func:" not in text  # no reStructuredText
    assert text.rstrip().endswith("ultrastyle stylize")
    assert "    ultrastyle stylize photo.jpg --style painting.jpg --output photo-styled.png\n" in text
