"""The distillation job end to end: a real local Ray cluster (2 CPUs), 2 Ray Train workers
sized by the job itself, the CD 16x models as teacher, the shared images, checkpoints on a local
folder and on moto's S3 server on loopback; a worker killed mid-run; the published bundle
stylizing an image; settings that would hang refused at start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

pytest.importorskip("moto.server")
ray = pytest.importorskip("ray")

from jobs.distill import build_parser, main  # noqa: E402
from jobs.distill.data import load_eval_images  # noqa: E402
from jobs.distill.train import Stage, plan_stages  # noqa: E402
from models import bundle, resolve_weights  # noqa: E402
from pipeline.engine.cascade import style_statistics, stylize_whole  # noqa: E402
from pipeline.engine.models import load_model_set  # noqa: E402

# Small enough for CI on two cores: 64 px crops, 4 per worker per step. No --cpus-per-worker:
# the job sizes it (0.5 on the 2-CPU test cluster, leaving one CPU to Ray Data).
FAST = [
    "--width", "0.125", "--image-size", "64", "--batch-size", "4", "--crops-per-image", "4",
    "--workers", "2", "--eval-size", "96", "--eval-every", "6", "--log-every", "6", "--warmup-steps", "4",
]  # fmt: skip


def _summary(fs, run_uri: str) -> dict:
    fs.invalidate_cache()  # the listing polled during the run is stale
    with fs.open(f"{run_uri}/summary.json", "r") as f:
        return json.load(f)


def _check_bundle(bundle_uri: str, options, style_dir: Path, content_dir: Path) -> None:
    """The bundle loads as ``--weights`` does and stylizes an image through every level it has."""
    weights = resolve_weights(bundle_uri, options)
    models = load_model_set(weights, levels=weights.levels[::-1], storage_options=options)
    assert models.model_id.startswith("bundle:")
    (content,) = load_eval_images([str(content_dir / "rocket_420.jpg")], side=64)
    (style,) = load_eval_images([str(style_dir / "strokes_570.jpg")], side=64)
    out = stylize_whole(content, style_statistics(style, models), models)
    assert out.shape == content.shape and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


# ------------------------------------------------------------------------------- no Ray


def test_stages_train_missing_teacher_decoders_first():
    stages = plan_stages([1, 3], {3})
    assert [s.key for s in stages] == ["1SE", "1SD", "3TD", "3SE", "3SD"]
    assert Stage(3, "TD").title == "L3 teacher decoder"


def test_parser_defaults_and_errors(weights_dir, content_dir, capsys):
    args = build_parser().parse_args(["--data", "d", "--storage", "s", "--levels", "3,1"])
    assert args.levels == [1, 3] and args.teacher == "torchvision-vgg19" and args.width == 0.25
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data", "d", "--storage", "s", "--levels", "0,6"])
    wide = ["--teacher", str(weights_dir), "--data", str(content_dir), "--storage", "unused", "--width", "0.5"]
    assert main(wide) == 2
    assert "at most as wide" in capsys.readouterr().err
    for bad in ("../escape", "latest", "s3://b/run"):
        with pytest.raises(SystemExit):
            main(["--data", str(content_dir), "--storage", "unused", "--run-id", bad])
        assert "--run-id: run id" in capsys.readouterr().err


def test_nightly_manifests_run_the_cli_with_the_configmap_settings():
    import shlex
    import string

    import yaml

    infra = Path(__file__).resolve().parents[3] / "infra"
    settings = next(
        d for d in yaml.safe_load_all((infra / "distill-cronjob.yaml").read_text()) if d["kind"] == "ConfigMap"
    )
    rayjob = yaml.safe_load((infra / "distill-rayjob.yaml").read_text())
    entrypoint = rayjob["spec"]["entrypoint"].replace("$(date -u +%Y%m%d)", "20260101")
    argv = shlex.split(string.Template(entrypoint).substitute(settings["data"]))
    assert argv[:3] == ["python", "-m", "jobs.distill"]
    args = build_parser().parse_args(argv[3:])
    assert args.data == settings["data"]["DISTILL_DATA"] and args.storage == settings["data"]["DISTILL_STORAGE"]
    assert args.gpu and args.levels == [1, 2, 3, 4, 5] and args.run_id == "nightly-20260101"
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert args.workers == workers["replicas"]


# ---------------------------------------------------------------------------- Ray Train


@pytest.mark.slow
def test_cd16x_teacher_half_width_student_all_levels(ray_cluster, weights_dir, content_dir, style_dir, tmp_path):
    storage, publish = tmp_path / "runs", tmp_path / "bundles"
    argv = [
        "--teacher", str(weights_dir), "--data", str(content_dir.parent), "--storage", str(storage),
        "--publish", str(publish), "--levels", "1,2,3,4,5", "--steps", "12", "--checkpoint-every", "6",
        "--run-id", "local", "--promote-first", *FAST,
    ]  # fmt: skip
    assert main(argv) == 0

    run_dir = storage / "local"
    summary = json.loads((run_dir / "summary.json").read_text())
    stages = summary["metrics"]["stages"]
    assert list(stages) == [f"{k}{t}" for k in (1, 2, 3, 4, 5) for t in ("SE", "SD")]
    for key, stage in stages.items():
        assert stage["steps"] == 12 and len(summary["loss_curves"][key]) == 12, key
        assert stage["stopped"] == "steps"
        psnr = stage["psnr"]  # the same held-out crops at the start and every 6 steps
        assert [step for step, _ in psnr["curve"]] == [0, 6, 12]
        assert psnr["final"] == max(value for _, value in psnr["curve"]) >= psnr["start"]  # its best weights
    # The level-1 encoder starts from 12 of the teacher's 24 filters behind a scatter Q (11-13 dB
    # through the teacher decoder) and gains 3-7 dB in 12 steps.
    assert stages["1SE"]["psnr"]["final"] > stages["1SE"]["psnr"]["start"] + 1.5, stages["1SE"]["psnr"]
    student, teacher = summary["metrics"]["psnr"], summary["metrics"]["teacher_psnr"]
    assert student["1"] < teacher["1"] - 3  # 12 steps leave level 1 far from its teacher (19 vs 28 dB)
    for level in "12345":  # deeper, a decoder cut from the teacher's may match it on one small image
        assert 0 < student[level] < teacher[level] + 1.0, level
    assert summary["metrics"]["attempts"] == [[0, 0]]
    assert (run_dir / "losses.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "psnr.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"
    assert list(run_dir.glob("checkpoint_*/state.pt"))

    assert bundle.read_latest(str(publish)) == "local"
    assert summary["promotion"] == "promoted: no current bundle, and --promote-first was given"
    card = json.loads((publish / "local" / "card.json").read_text())
    assert card["widths"] == [8, 16, 32, 64, 64] and card["level1_width"] == 12
    assert card["embed_widths"] == [16, 32, 64, 128, 128] and card["level1_embed_width"] == 24
    assert card["teacher"] == str(weights_dir) and card["steps"] == 12 and card["code_version"]
    assert card["workers"] == 2 and card["cpus_per_worker"] == 0.5 and card["levels"] == [1, 2, 3, 4, 5]
    assert sorted(card["files"]) == sorted(f"{k}{t}" for k in range(1, 6) for t in ("SE", "SD"))
    state = torch.load(publish / "local" / "1SE.pth", weights_only=True)
    assert tuple(state["conv11.weight"].shape) == (12, 3, 3, 3)
    assert tuple(state["conv11_aux.weight"].shape) == (24, 12, 1, 1)
    _check_bundle(str(publish / "latest"), None, style_dir, content_dir)


def _registered_checkpoint(fs, run_path: str) -> bool:
    """Whether the Train controller has registered a checkpoint (a file in storage is not enough:
    a worker killed between uploading and the controller's next poll restarts from the one before)."""
    fs.invalidate_cache()
    try:
        snapshot = json.loads(fs.cat(f"{run_path}/checkpoint_manager_snapshot.json"))
    except FileNotFoundError:
        return False
    return snapshot.get("latest_checkpoint_result") is not None


def _kill_a_worker_after_first_checkpoint(fs, run_path: str, killed: list[int], timeout: float = 240) -> None:
    """Wait for a registered checkpoint, then SIGKILL one Ray Train worker process of this test."""
    deadline = time.monotonic() + timeout
    while not _registered_checkpoint(fs, run_path):
        if time.monotonic() > deadline:
            return
        time.sleep(0.5)
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
                return
        except psutil.Error:
            continue


@pytest.mark.slow
def test_s3_checkpoints_and_a_killed_worker_resumes(
    ray_cluster, s3_options, s3_fs, weights_dir, content_dir, style_dir
):
    fs = s3_fs
    fs.mkdir("distill")
    for name in ("rocket_420.jpg", "astronaut_512.jpg"):
        fs.put(str(content_dir / name), f"distill/images/{name}")
    fs.put(str(style_dir / "strokes_570.jpg"), "distill/images/strokes_570.jpg")
    argv = [
        "--teacher", str(weights_dir), "--data", "s3://distill/images", "--storage", "s3://distill/runs",
        "--publish", "s3://distill/bundles", "--levels", "1", "--steps", "20", "--checkpoint-every", "5",
        "--max-failures", "2", "--run-id", "s3run", "--storage-options", json.dumps(s3_options),
        "--promote-first", *FAST, "--crops-per-image", "8",
    ]  # fmt: skip
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(fs, "distill/runs/s3run", killed))
    killer.start()
    try:
        assert main(argv) == 0
    finally:
        killer.join()
    assert killed, "no Ray Train worker was found to kill"

    summary = _summary(fs, "distill/runs/s3run")
    first, second = summary["metrics"]["attempts"]
    assert first == [0, 0]
    assert second > [0, 0], "the restarted workers began again from step 0"
    assert second[1] % 5 == 0  # a checkpoint boundary
    assert all(s["steps"] == 20 for s in summary["metrics"]["stages"].values())
    assert fs.glob("distill/runs/s3run/checkpoint_*/state.pt")
    assert bundle.read_latest("s3://distill/bundles", s3_options) == "s3run"
    _check_bundle("s3://distill/bundles/latest", s3_options, style_dir, content_dir)


def test_a_stage_that_never_improves_fails_the_run_and_publishes_nothing(
    ray_cluster, weights_dir, content_dir, tmp_path, capsys
):
    """Steps a thousand times a layer's size wreck every stage; the first one, given 6 steps of
    patience, stops on its start weights and the run fails in one line, publishing nothing."""
    argv = [
        "--teacher", str(weights_dir), "--data", str(content_dir), "--storage", str(tmp_path / "runs"),
        "--publish", str(tmp_path / "bundles"), "--levels", "1,2", "--steps", "12", "--run-id", "broken",
        "--promote-first", *FAST, "--lr", "1000", "--eval-every", "3", "--patience", "6",
    ]  # fmt: skip
    assert main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ultrastyle distill: error")]
    assert len(errors) == 1 and "L1 student encoder did not improve its held-out PSNR in 6 steps" in errors[0]
    summary = json.loads((tmp_path / "runs" / "broken" / "summary.json").read_text())
    assert summary["failed"] in errors[0] and list(summary["metrics"]["stages"]) == ["1SE"]  # it stopped there
    stage = summary["metrics"]["stages"]["1SE"]
    assert stage["stopped"] == "plateau" and stage["steps"] == 6 and stage["psnr"]["best_step"] == 0
    assert stage["psnr"]["final"] == stage["psnr"]["start"] > max(v for _, v in stage["psnr"]["curve"][1:])
    assert (tmp_path / "runs" / "broken" / "psnr.png").exists()
    assert not (tmp_path / "bundles").exists()


def test_untrained_vgg19_teacher_gets_a_decoder_first(ray_cluster, content_dir, tmp_path):
    argv = [
        "--teacher", "torchvision-vgg19:random", "--data", str(content_dir), "--storage", str(tmp_path),
        "--levels", "1", "--steps", "3", "--checkpoint-every", "3", "--run-id", "vgg", *FAST,
    ]  # fmt: skip
    assert main(argv) == 0  # on 2 CPUs, 2 workers with the default --cpus-per-worker
    summary = json.loads((tmp_path / "vgg" / "summary.json").read_text())
    assert summary["cpus_per_worker"] == 0.5
    assert list(summary["metrics"]["stages"]) == ["1TD", "1SE", "1SD"]
    assert summary["widths"] == [8, 16, 32, 64, 64] and summary["embed_widths"] == [64, 128, 256, 512, 512]
    assert "1" in summary["metrics"]["teacher_psnr"]


def test_workers_that_leave_ray_data_no_cpu_are_refused_at_start(ray_cluster, weights_dir, content_dir, tmp_path):
    """``--workers 2 --cpus-per-worker 1`` on 2 CPUs used to wait forever for a CPU for Ray Data."""
    argv = [
        sys.executable, "-m", "jobs.distill", "--teacher", str(weights_dir), "--data", str(content_dir),
        "--storage", str(tmp_path), "--levels", "1", "--steps", "2", *FAST, "--cpus-per-worker", "1",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "--cpus-per-worker to at most 0.5" in errors[0]
    assert not list(tmp_path.iterdir())  # nothing started


@pytest.mark.slow
def test_fresh_clone_quick_start_prints_a_few_plain_lines_and_is_not_promoted(ray_cluster, tmp_path):
    """The quick start: the embedded weights as teacher, the project's own sample images (no
    --data, nothing beside the checkout), ten steps. Its console is the job's own lines without
    colour codes, and a first bundle this far below the embedded weights is not promoted."""
    root = Path(__file__).resolve().parents[3]
    argv = [
        sys.executable, "-m", "jobs.distill", "--teacher", "cd16x", "--storage", "runs", "--publish", "bundles",
        "--levels", "1", "--steps", "10", "--run-id", "quick", *FAST,
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(root)}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert sorted(p.name for p in (tmp_path / "ultrastyle-samples").rglob("*.png"))  # the samples it trained on
    assert "\x1b[" not in out  # not a terminal: no colour codes
    lines = out.splitlines()
    ray_chatter = ("Moving model", "training result", "worker group", "execution finished", "VIPS", "Checkpoint")
    assert not [line for line in lines if any(word in line for word in ray_chatter)], out
    reasons = [line for line in lines if "not promoted" in line]
    assert len(reasons) == 1 and "level 1 scores" in reasons[0] and "--promote-first" in reasons[0], out
    # Every line is the job's own but what Ray's system actors say about the test cluster (it
    # runs without a dashboard, so Ray Train's placement-group cleaner cannot query it).
    own = [line for line in lines if not line.startswith("(") or line.startswith("(RayTrainWorker")]
    assert len(own) <= 16, out
    assert not (tmp_path / "bundles" / "latest").exists()
    summary = json.loads((tmp_path / "runs" / "quick" / "summary.json").read_text())
    assert summary["promoted"] is False and summary["promotion"] in reasons[0]
    assert summary["reference_psnr"]["1"] - summary["metrics"]["psnr"]["1"] > 6  # the default margin
