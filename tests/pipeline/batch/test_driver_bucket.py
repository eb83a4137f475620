"""The batch job's bookkeeping end to end: ``--dry-run``, hundreds of small images and their
manifest, and a storage outage longer than the S3 client's own retries (moto behind a TCP proxy).

The job runs as ``python -m jobs.stylize`` in a subprocess, joined to this module's local Ray
(2 CPUs), so its exit status, stderr and last line are what a user sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("moto.server")

from jobs.stylize import main  # noqa: E402
from pipeline.batch.manifest import MANIFEST_DIR, read_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def _photos(folder: Path, content_dir: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` distinct crops of a real photo, ``size`` (width, height) each."""
    folder.mkdir(parents=True)
    photo = Image.open(content_dir / "photo_mosaic_1024.jpg").convert("RGB")
    paths = []
    for i in range(count):
        x, y = (i * 37) % (1024 - 2 * size[0]), (i * 53) % (1024 - 2 * size[1])
        paths.append(folder / f"{i // 100}/p{i:03d}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        photo.crop((x, y, x + 2 * size[0], y + 2 * size[1])).resize(size).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def style(style_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("style") / "brush.jpg"
    Image.open(style_dir / "strokes_512.jpg").convert("RGB").resize((96, 96)).save(path)
    return path


def _argv(source: str, out: str, style: Path, weights_dir: Path, *extra: str) -> list[str]:
    return ["--input", source, "--output", out, "--style", str(style), "--weights", str(weights_dir),
            "--tile", "64", "--style-size", "64", "--workers", "2", "--progress-seconds", "1", *extra]


def _job(argv: list[str], *, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The job in a fresh process, joined to this module's Ray."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return subprocess.run([sys.executable, "-m", "jobs.stylize", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT, env=env)


def _manifest_files(out: Path) -> list[Path]:
    return sorted((out / MANIFEST_DIR).rglob("*.parquet"))


def test_dry_run_reports_what_would_run_without_ray_and_writes_nothing(content_dir, style, weights_dir, tmp_path,
                                                                     caplog):
    assert not ray.is_initialized()
    _photos(tmp_path / "in", content_dir, 3, (40, 32))
    out = tmp_path / "out"
    assert main(_argv(str(tmp_path / "in"), str(out), style, weights_dir, "--dry-run")) == 0
    assert not ray.is_initialized() and not out.exists()
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("run ") and "3 pairs (3 to run, 0 already done, 0 refused)" in m for m in lines)
    assert "3 to run: 3 new: 0/p000.png, 0/p001.png, 0/p002.png" in lines
    assert lines[-1].startswith("dry run: nothing stylized or written, Ray not started")


def test_hundreds_of_small_images_leave_a_few_manifest_files_and_a_rerun_skips_them_all(
    ray_cluster, content_dir, style, weights_dir, tmp_path
):
    source, out = tmp_path / "in", tmp_path / "out"
    _photos(source, content_dir, 300, (32, 32))
    argv = _argv(str(source), str(out), style, weights_dir, "--batch-images", "8")
    first = _job(argv)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "done: 300 pairs: 300 ok, 0 skipped, 0 failed; 0.31 MP stylized in" in first.stderr.strip().splitlines()[-1]
    assert "Traceback" not in first.stderr
    assert [p.parent.parent.name for p in _manifest_files(out)] == ["runs"]  # the run compacted into one file
    table = read_manifest(str(out))
    assert table.num_rows == 300 and set(table["status"].to_pylist()) == {"ok"}
    assert {row["mode"] for row in table.to_pylist()} == {"whole"}
    assert len(list(out.rglob("*__brush.png"))) == 300

    # A dry run with another alpha says why all would run, naming the first few, and writes nothing.
    files = {p: p.stat().st_mtime_ns for p in _manifest_files(out)}
    dry = _job([*argv, "--alpha", "0.5", "--dry-run"])
    assert dry.returncode == 0 and "Started a local Ray" not in dry.stderr
    assert "300 to run: 300 settings changed (alpha 1.0 -> 0.5): 0/p000.png, 0/p001.png, 0/p002.png" in dry.stderr
    assert {p: p.stat().st_mtime_ns for p in _manifest_files(out)} == files

    # The same command again: everything skipped, no row added, the run's files folded into one state file.
    rerun = _job(argv)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "300 pairs (0 to run, 300 already done, 0 refused)" in rerun.stderr
    assert "done: 300 pairs: 0 ok, 300 skipped, 0 failed" in rerun.stderr.strip().splitlines()[-1]
    assert read_manifest(str(out)).equals(table)
    assert [p.parent.name for p in _manifest_files(out)] == ["state"]


def _first_object(fs, prefix: str, timeout: float) -> None:
    """Wait until something is written under ``prefix``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fs.invalidate_cache()
        if fs.exists(prefix) and fs.find(prefix):
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing written under {prefix} in {timeout} s")


def _behind(proxy, s3_options: dict) -> dict:
    """Storage options through ``proxy``, with the client's own retries short (an outage outlasts them)."""
    return {**s3_options, "client_kwargs": {"endpoint_url": proxy.address},
            "config_kwargs": {"connect_timeout": 1, "read_timeout": 3, "retries": {"max_attempts": 2}}}


def test_an_outage_longer_than_the_client_retries_loses_no_pair(ray_cluster, content_dir, style, weights_dir,
                                                               s3_options, s3_fs, s3_proxy, tmp_path):
    source = tmp_path / "in"
    _photos(source, content_dir, 16, (48, 40))
    s3_fs.mkdir("outage")
    options = _behind(s3_proxy, s3_options)
    argv = _argv(str(source), "s3://outage/out", style, weights_dir, "--storage-options", json.dumps(options),
                 "--retries", "4", "--batch-images", "2")

    def outage() -> None:  # once the first output is there: down for longer than the client retries
        _first_object(s3_fs, "outage/out", timeout=300)
        s3_proxy.down()
        time.sleep(12)
        s3_proxy.up()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    done = _job(argv)
    thread.join(timeout=5)
    assert s3_proxy.dropped, "the outage never hit the job"
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "manifest: storage fault writing" in done.stderr or "running the pair again" in done.stderr
    assert done.stderr.strip().splitlines()[-1].split(" ", 1)[1].startswith("done: 16 pairs: 16 ok, 0 skipped")
    s3_fs.invalidate_cache()
    table = read_manifest("s3://outage/out", s3_options)
    assert table.num_rows == 16 and set(table["status"].to_pylist()) == {"ok"}
    assert len([p for p in s3_fs.find("outage/out") if "/_manifest/" not in p]) == 16


def test_rows_that_storage_never_takes_are_saved_and_the_last_line_says_so(ray_cluster, content_dir, style,
                                                                          weights_dir, s3_options, s3_fs, s3_proxy,
                                                                          tmp_path):
    source = tmp_path / "in"
    _photos(source, content_dir, 6, (48, 40))
    s3_fs.mkdir("gone")
    options = _behind(s3_proxy, s3_options)
    argv = _argv(str(source), "s3://gone/out", style, weights_dir, "--storage-options", json.dumps(options),
                 "--retries", "0", "--batch-images", "1", "--manifest-wait", "2")

    def outage() -> None:  # from the first output on, the store never answers again
        _first_object(s3_fs, "gone/out", timeout=300)
        s3_proxy.down()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    done = _job(argv, cwd=tmp_path)
    thread.join(timeout=5)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "done: 6 pairs:" in last and "manifest rows could not be written to s3://gone/out/_manifest" in last
    [saved] = tmp_path.glob("ultrastyle-manifest-*.parquet")
    assert str(saved.name) in last
    s3_proxy.up()
    s3_fs.invalidate_cache()
    on_storage = read_manifest("s3://gone/out", s3_options)["content_uri"].to_pylist()
    held = pq.read_table(saved)["content_uri"].to_pylist()
    assert sorted(on_storage + held) == sorted(str(p) for p in source.rglob("*.png"))  # every pair, once
