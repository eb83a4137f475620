"""The batch job on a multi-node Ray (``ray.cluster_utils.Cluster``: a head and two worker
nodes of one CPU each, small object stores, all on this machine).

- A worker node that hosts a model actor is removed in the middle of a job: its actor is
  restarted elsewhere, what was lost is redone, every pair ends ``ok`` with the pixels of an
  undisturbed run, and no manifest row is lost.
- The driver is killed after its first pair is written; the same command run again redoes
  only the pairs that had not finished, and adds no row for the others.

Images are small (3 x 2 tiles of 128 px) so each test takes well under a minute or two.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from jobs.stylize import main  # noqa: E402
from pipeline.batch.manifest import read_manifest  # noqa: E402
from pipeline.engine.runner import load_style, stylize_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
TILE = 128
STYLE_SIZE = 128
STORE = 80 * 1024**2


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE,
                                                           "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=STORE)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def photos(content_dir, tmp_path_factory):
    """Four 300x200 photos (6 tiles each) from the real test images."""
    folder = tmp_path_factory.mktemp("photos")
    names = ["astronaut_512.jpg", "rocket_420.jpg", "photo_mosaic_1024.jpg", "astronaut_512.jpg"]
    for i, name in enumerate(names):
        img = Image.open(content_dir / name).convert("RGB")
        img.crop((i * 20, 0, i * 20 + 360, 240)).resize((300, 200)).save(folder / f"p{i}.png")
    return folder


def _argv(source: Path, out: Path, style: str, weights_dir: Path, *extra: str) -> list[str]:
    return ["--input", str(source), "--output", str(out), "--style", style, "--weights", str(weights_dir),
            "--tile", str(TILE), "--style-size", str(STYLE_SIZE), "--workers", "2", *extra]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _remove_a_model_node(cluster: Cluster) -> str:
    """Remove, without warning, a worker node that runs a model actor; returns its node id."""
    actors = [ray.get_actor(n) for n in ray.util.list_named_actors() if "-model-" in n]
    nodes = {ray.get(a.describe.remote()).node_id for a in actors}
    node = next(n for n in cluster.worker_nodes if n.node_id in nodes)
    cluster.remove_node(node, allow_graceful=False)
    return node.node_id


def test_a_node_removed_mid_job_loses_nothing(cluster, photos, style_dir, weights_dir, model_set, tmp_path,
                                              on_tile_progress):
    out = tmp_path / "out"
    style = str(style_dir / "strokes_512.jpg")
    remover = on_tile_progress(lambda: _remove_a_model_node(cluster), after=20)
    ray.init(address=cluster.address)
    try:
        argv = _argv(photos, out, style, weights_dir, "--max-in-flight", "2", "--progress-seconds", "0.2")
        assert main(argv) == 0
    finally:
        ray.shutdown()
        cluster.add_node(num_cpus=1, object_store_memory=STORE)  # back to three nodes for the next test
    assert remover.done, "the job finished before a node could be removed"

    rows = read_manifest(str(out)).to_pylist()
    assert sorted(Path(r["content_uri"]).name for r in rows) == [f"p{i}.png" for i in range(4)]
    assert all(r["status"] == "ok" and r["tiles"] == 6 for r in rows)
    stats = load_style(style, model_set, style_size=STYLE_SIZE)
    for i in range(4):
        ref = tmp_path / f"ref{i}.png"
        stylize_file(str(photos / f"p{i}.png"), str(ref), stats, model_set, mode="exact", tile=TILE)
        got = np.asarray(Image.open(out / f"p{i}__strokes_512.png"))
        assert _psnr(got, np.asarray(Image.open(ref))) >= 60, f"p{i}"


def test_a_killed_driver_rerun_redoes_only_unfinished_pairs(cluster, photos, style_dir, weights_dir, tmp_path):
    out = tmp_path / "out"
    argv = _argv(photos, out, str(style_dir / "strokes_512.jpg"), weights_dir, "--max-in-flight", "1")
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "jobs.stylize", *argv]
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "_manifest").is_dir() or not any((out / "_manifest").iterdir()):
        assert job.poll() is None, job.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no manifest row within two minutes"
        time.sleep(0.1)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    job.stderr.close()
    first = read_manifest(str(out)).to_pylist()
    finished = {r["content_uri"] for r in first if r["status"] == "ok"}
    assert 1 <= len(finished) < 4

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    table = read_manifest(str(out)).to_pylist()
    assert len(table) == 4 and {r["status"] for r in table} == {"ok"}
    second_run = max(r["run_id"] for r in table)
    second = {r["content_uri"] for r in table if r["run_id"] == second_run}
    assert second == {str(photos / f"p{i}.png") for i in range(4)} - finished  # the skipped ones keep their row
    assert len(list(out.glob("p*__strokes_512.png"))) == 4
