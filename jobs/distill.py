"""The nightly distillation job: a Ray Train run that makes the small encoders and decoders.

``python -m jobs.distill --teacher URI|torchvision-vgg19 --data URI --storage URI --width W``
(or ``ultrastyle distill ...``) runs, for every level asked, the stages

1. ``teacher decoder``: only for a teacher that comes without one (torchvision's VGG-19);
2. ``student encoder``: pruned from the teacher (:mod:`models.pruning`), trained with the
   embed and collaboration losses (:class:`models.losses.DistillationObjective`);
3. ``student decoder``: the teacher decoder behind the student's Q, pruned
   (:func:`models.pruning.prune_decoder`), trained with pixel + perceptual loss
   (:class:`models.losses.DecoderObjective`),

as one :class:`ray.train.torch.TorchTrainer` run with DDP over ``--workers``, crops from
``--data`` through Ray Data, and a checkpoint every ``--checkpoint-every`` steps in
``<storage>/<run id>/``; each stage's objective is also measured on a fixed batch of held-out
crops before and after it. A worker that dies costs the steps since the last checkpoint
(``FailureConfig``); running the job again with the same ``--run-id`` resumes a run whose
driver died. At the end the driver measures held-out reconstruction PSNR per level for the
student and the teacher, writes ``losses.png``, ``reconstructions.png`` and ``summary.json``
into the run folder and, with ``--publish``, writes a bundle that ``stylize --weights`` loads
and promotes it to ``<publish>/latest`` if it reconstructs no worse than the current one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from pyarrow.fs import FileSystem, FSSpecHandler, PyFileSystem
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, get_device, prepare_model

from models import LEVELS, Decoder, Encoder, FamilySpec, WeightsError
from models.losses import DecoderObjective, DistillationObjective
from models.pruning import prune_decoder, prune_encoder, student_family
from pipeline.distill_data import (
    Teacher,
    decode_for_crops,
    evaluate_levels,
    list_images,
    load_eval_images,
    promote,
    publish_bundle,
    random_crops,
    render_loss_curves,
    render_reconstructions,
    split_holdout,
)
from pipeline.imageio import write_bytes

__all__ = [
    "Setup",
    "Stage",
    "TrainState",
    "build_parser",
    "main",
    "plan_stages",
    "prepare",
    "run",
    "train_loop_per_worker",
]

log = logging.getLogger("ultrastyle.distill")

STATE_FILE = "state.pt"
TEACHER_DECODER, STUDENT_ENCODER, STUDENT_DECODER = "TD", "SE", "SD"
_KIND_TITLES = {
    TEACHER_DECODER: "teacher decoder",
    STUDENT_ENCODER: "student encoder",
    STUDENT_DECODER: "student decoder",
}


@dataclass(frozen=True)
class Stage:
    """One training stage: what is trained (``kind``: TD, SE or SD) for which level."""

    level: int
    kind: str

    @property
    def key(self) -> str:
        """File-style name of what the stage produces: ``2SE`` is the level-2 student encoder."""
        return f"{self.level}{self.kind}"

    @property
    def title(self) -> str:
        return f"L{self.level} {_KIND_TITLES[self.kind]}"


def plan_stages(levels: list[int], untrained_teacher_decoders: set[int]) -> list[Stage]:
    """Stages in run order: per level, the teacher decoder if missing, then student encoder, decoder."""
    stages = []
    for level in levels:
        if level in untrained_teacher_decoders:
            stages.append(Stage(level, TEACHER_DECODER))
        stages += [Stage(level, STUDENT_ENCODER), Stage(level, STUDENT_DECODER)]
    return stages


@dataclass
class TrainState:
    """Everything a checkpoint holds, so a restarted worker group picks up mid-stage.

    Attributes:
        stage: index of the stage in progress (``len(stages)`` when all are done).
        step: steps of that stage already taken.
        done: stage key -> state dict of every finished stage.
        module: state dict of the module being trained, mid-stage.
        optimizer: its optimizer's state, mid-stage.
        history: stage key -> one row of loss terms per step, in ``terms[key]`` order.
        terms: stage key -> names of the loss terms its rows hold.
        seconds: stage key -> wall seconds spent on its steps (over every attempt).
        held_out: stage key -> its loss terms on a fixed held-out batch at ``"start"`` and ``"end"``.
        starts: ``[stage, step]`` at which each attempt of the run started.
    """

    stage: int = 0
    step: int = 0
    done: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    module: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    history: dict[str, list[list[float]]] = field(default_factory=dict)
    terms: dict[str, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    held_out: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    starts: list[list[int]] = field(default_factory=list)

    @classmethod
    def load(cls, checkpoint: ray.train.Checkpoint | None) -> TrainState:
        """The state in ``checkpoint`` (a fresh one for ``None``); tensors only, no pickled code."""
        if checkpoint is None:
            return cls()
        with checkpoint.as_directory() as folder:
            return cls(**torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True))


# ------------------------------------------------------------------------------- the workers


def _teacher_decoder(level: int, teacher: Teacher, state: TrainState) -> Decoder:
    """The teacher's own decoder, or the one this run trained for it."""
    decoder = teacher.decoder(level)
    if decoder is None:
        decoder = Decoder(level, teacher.family())
        decoder.load_state_dict(state.done[f"{level}{TEACHER_DECODER}"])
    return decoder.eval()


def _stage_modules(
    stage: Stage, state: TrainState, teacher: Teacher, family: FamilySpec, config: dict[str, Any]
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(objective, the part of it that learns) for ``stage``, initialised as the stage starts."""
    level = stage.level
    t_enc = teacher.encoder(level)
    if stage.kind == TEACHER_DECODER:
        with torch.random.fork_rng():
            torch.manual_seed(config["seed"] + level)  # the same start on every rank
            decoder = teacher.blank_decoder(level)
        return DecoderObjective(decoder, t_enc, t_enc, lambda_p=config["lambda_p"]), decoder
    t_dec = _teacher_decoder(level, teacher, state)
    student, _ = prune_encoder(t_enc, family)
    if stage.kind == STUDENT_ENCODER:
        objective = DistillationObjective(student, t_enc, t_dec, beta=config["beta"], lambda_p=config["lambda_p"])
        return objective, student
    student.load_state_dict(state.done[f"{level}{STUDENT_ENCODER}"])
    decoder = prune_decoder(t_dec, family, getattr(student, f"{student.plan[-1]}_aux"))
    return DecoderObjective(decoder, student, t_enc, lambda_p=config["lambda_p"]), decoder


def _batches(shard: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """Endless ``(B, 3, S, S)`` batches from this worker's dataset shard, epoch after epoch."""
    while True:
        count = 0
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, local_shuffle_buffer_size=256):
            count += 1
            yield batch["image"]
        if count == 0:
            raise ValueError(
                f"an epoch gave this worker no full batch of --batch-size {batch_size}: "
                "raise --crops-per-image or lower --batch-size"
            )


def _report(state: TrainState, metrics: dict[str, Any], *, rank: int) -> None:
    """Report metrics from every rank (a barrier); rank 0 alone attaches the checkpoint."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(vars(state), Path(folder) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _probe_batch(uris: list[str], size: int, storage_options: dict[str, Any] | None) -> torch.Tensor:
    """A fixed batch of centre crops of the held-out images: ``(N, 3, size, size)`` in [0, 1].

    Training losses move with every random crop; the objective on the same held-out batch
    at the start and the end of a stage says whether the stage helped.
    """
    crops = []
    for image in load_eval_images(uris, side=size, storage_options=storage_options):
        h, w = image.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        crops.append(image[..., top : top + size, left : left + size])
    return torch.cat(crops)


def _held_out_terms(objective: torch.nn.Module, probe: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        return {k: round(float(v), 6) for k, v in objective(probe).items()}


def _train_stage(
    index: int,
    stage: Stage,
    state: TrainState,
    batches: Iterator[torch.Tensor],
    probe: torch.Tensor,
    modules: tuple[torch.nn.Module, torch.nn.Module],
    config: dict[str, Any],
) -> None:
    """Run (the rest of) one stage: Adam with a linear warm-up, rank 0 logging and checkpointing."""
    objective, trainable = modules
    if state.module is not None:
        trainable.load_state_dict(state.module)
    model = prepare_model(objective)  # moves the objective to the device, DDP-wraps it
    probe = probe.to(get_device())
    if state.step == 0:
        state.held_out[stage.key] = {"start": _held_out_terms(objective, probe)}
    optimizer = torch.optim.Adam([p for p in objective.parameters() if p.requires_grad], lr=config["lr"])
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    rank, steps = ray.train.get_context().get_world_rank(), config["steps"]
    rows = state.history.setdefault(stage.key, [])
    start, first = time.perf_counter(), state.step + 1
    for step in range(first, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = config["lr"] * min(1.0, step / config["warmup_steps"])
        terms = model(next(batches))
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        state.terms[stage.key] = list(terms)
        rows.append([float(v.detach()) for v in terms.values()])
        state.step = step
        if rank == 0 and (step % config["log_every"] == 0 or step in (1, steps)):
            text = " ".join(f"{k}={v:.4g}" for k, v in zip(terms, rows[-1], strict=True))
            rate = (step - first + 1) / (time.perf_counter() - start)
            log.info(
                "[%d/%d] %s step %d/%d %s (%.2f steps/s)",
                index + 1,
                len(config["stages"]),
                stage.title,
                step,
                steps,
                text,
                rate,
            )
        if step % config["checkpoint_every"] and step != steps:
            continue
        state.seconds[stage.key] = state.seconds.get(stage.key, 0.0) + time.perf_counter() - start
        if step == steps:
            state.held_out[stage.key]["end"] = _held_out_terms(objective, probe)
            state.done[stage.key] = {k: v.detach().cpu().clone() for k, v in trainable.state_dict().items()}
            state.stage, state.step, state.module, state.optimizer = index + 1, 0, None, None
        else:
            state.module, state.optimizer = trainable.state_dict(), optimizer.state_dict()
        metrics = {"stage": index, "level": stage.level, "kind": stage.kind, "step": step}
        _report(state, {**metrics, **dict(zip(state.terms[stage.key], rows[-1], strict=True))}, rank=rank)
        start, first = time.perf_counter(), step + 1


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: resume from the latest checkpoint, then run the remaining stages."""
    torch.set_num_threads(config["threads"])
    state = TrainState.load(ray.train.get_checkpoint())
    state.starts.append([state.stage, state.step])
    if ray.train.get_context().get_world_rank() == 0 and len(state.starts) > 1:
        log.info("resuming at stage %d step %d (attempt %d)", state.stage + 1, state.step, len(state.starts))
    teacher = Teacher(config["teacher"], config["storage_options"], config["seed"])
    family = FamilySpec(**config["family"])
    stages = [Stage(**s) for s in config["stages"]]
    batches = _batches(ray.train.get_dataset_shard("train"), config["batch_size"])
    probe = _probe_batch(config["held_out"], config["image_size"], config["storage_options"])
    for index in range(state.stage, len(stages)):
        modules = _stage_modules(stages[index], state, teacher, family, config)
        _train_stage(index, stages[index], state, batches, probe, modules, config)


# -------------------------------------------------------------------------------- the driver


def _arrow_fs(uri: str, storage_options: dict[str, Any] | None) -> tuple[str, FileSystem | None]:
    """(path, filesystem) for pyarrow users (Ray Train storage, Ray Data): local paths go as they
    are; any other fsspec URI goes through the same fsspec filesystem and options as everything else."""
    fs, path = url_to_fs(uri, **(storage_options or {}))
    if isinstance(fs, LocalFileSystem):
        return os.path.abspath(path), None
    return path, PyFileSystem(FSSpecHandler(fs))


def _decode_row(row: dict[str, Any], *, side: int) -> dict[str, Any]:
    return {"image": decode_for_crops(row["bytes"], side=side)}


def _crop_row(row: dict[str, Any], *, size: int, count: int) -> list[dict[str, Any]]:
    crops = random_crops(row["image"], size=size, count=count, rng=np.random.default_rng())
    return [{"image": crop} for crop in crops]


def _training_dataset(uris: list[str], args: argparse.Namespace) -> ray.data.Dataset:
    """Ray Data pipeline: read bytes, decode at twice the crop size, cut random crops."""
    paths = []
    arrow_fs = None
    for uri in uris:
        path, arrow_fs = _arrow_fs(uri, args.storage_options)
        paths.append(path)
    ds = ray.data.read_binary_files(paths, filesystem=arrow_fs)
    ds.context.print_on_execution_start = False  # this dataset's own context: no lines every epoch
    ds.context.enable_progress_bars = False
    ds = ds.map(partial(_decode_row, side=2 * args.image_size))
    return ds.flat_map(partial(_crop_row, size=args.image_size, count=args.crops_per_image))


def _code_version() -> str:
    """``$ULTRASTYLE_CODE_VERSION`` (set by the image build), else the git commit, else the package version."""
    if os.environ.get("ULTRASTYLE_CODE_VERSION"):
        return os.environ["ULTRASTYLE_CODE_VERSION"]
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
        )
        return f"git:{commit.stdout.strip()}"
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"ultrastyle {version('ultrastyle')}"
        except PackageNotFoundError:
            return "unknown"


def _final_models(
    state: TrainState, teacher: Teacher, family: FamilySpec, levels: list[int]
) -> dict[str, dict[int, torch.nn.Module]]:
    """Student and teacher encoders/decoders per level, as the finished run left them."""
    models: dict[str, dict[int, torch.nn.Module]] = {"SE": {}, "SD": {}, "TE": {}, "TD": {}}
    for level in levels:
        models["SE"][level] = Encoder(level, family)
        models["SE"][level].load_state_dict(state.done[f"{level}{STUDENT_ENCODER}"])
        models["SD"][level] = Decoder(level, family)
        models["SD"][level].load_state_dict(state.done[f"{level}{STUDENT_DECODER}"])
        models["TE"][level] = teacher.encoder(level)
        models["TD"][level] = _teacher_decoder(level, teacher, state)
    return models


def _stage_summary(state: TrainState, stages: list[Stage], window: int = 10) -> dict[str, dict[str, Any]]:
    """Per stage: steps/s, the mean of each loss term over its first and last ``window`` steps, and
    the terms on the held-out batch before and after the stage."""
    summary = {}
    for stage in stages:
        rows = np.asarray(state.history[stage.key], dtype=np.float64)
        names = state.terms[stage.key]
        summary[stage.key] = {
            "title": stage.title,
            "steps": len(rows),
            "steps_per_second": round(len(rows) / state.seconds[stage.key], 3)
            if state.seconds.get(stage.key)
            else None,
            "first_loss": dict(zip(names, rows[:window].mean(axis=0).round(6).tolist(), strict=True)),
            "final_loss": dict(zip(names, rows[-window:].mean(axis=0).round(6).tolist(), strict=True)),
            "held_out_loss": state.held_out.get(stage.key),
        }
    return summary


def _write_run_folder(
    run_uri: str,
    summary: dict[str, Any],
    state: TrainState,
    stages: list[Stage],
    reconstructions: bytes,
    storage_options: dict[str, Any] | None,
) -> None:
    curves = {s.title: [row[0] for row in state.history.get(s.key, [])] for s in stages}
    write_bytes(f"{run_uri}/losses.png", render_loss_curves(curves), storage_options)
    write_bytes(f"{run_uri}/reconstructions.png", reconstructions, storage_options)
    write_bytes(f"{run_uri}/summary.json", json.dumps(summary, indent=2).encode(), storage_options)


@dataclass(frozen=True)
class Setup:
    """What a run's arguments resolve to, checked before any Ray work starts."""

    teacher: Teacher
    family: FamilySpec
    stages: list[Stage]
    train_uris: list[str]
    held_uris: list[str]


def prepare(args: argparse.Namespace) -> Setup:
    """Resolve the teacher, the student's widths, the stages and the held-out split.

    Raises:
        ValueError: ``--width`` does not fit the teacher, or too few images to hold one out.
        FileNotFoundError: ``--data`` (or ``--eval-data``) holds no images.
        WeightsError: the teacher's weights cannot be read.
    """
    opts = args.storage_options
    teacher = Teacher(args.teacher, opts, args.seed)
    family = student_family(teacher.family(), args.width)
    stages = plan_stages(args.levels, {k for k in args.levels if not teacher.has_decoder(k)})
    images = list_images(args.data, opts)
    if args.eval_data:
        train_uris, held_uris = images, list_images(args.eval_data, opts)
    else:
        train_uris, held_uris = split_holdout(images, every=args.holdout_every)
    return Setup(teacher, family, stages, train_uris, held_uris)


def run(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    """Train, evaluate, write the run folder and (with ``--publish``) publish; return the summary.

    Raises:
        ray.train.TrainingFailedError: training failed more than ``--max-failures`` times.
    """
    opts = args.storage_options
    teacher, family, stages = setup.teacher, setup.family, setup.stages
    train_uris, held_uris = setup.train_uris, setup.held_uris
    log.info(
        "run %s: teacher %s, student widths %s (level 1: %d), %d stages x %d steps, %d training / %d held-out images",
        args.run_id,
        args.teacher,
        family.widths,
        family.level1_width,
        len(stages),
        args.steps,
        len(train_uris),
        len(held_uris),
    )
    if not ray.is_initialized():
        ray.init()
    config = {
        "teacher": args.teacher,
        "storage_options": opts,
        "seed": args.seed,
        "family": asdict(family),
        "stages": [asdict(s) for s in stages],
        "steps": args.steps,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "held_out": held_uris,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "beta": args.beta,
        "lambda_p": args.lambda_p,
        "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
        "threads": max(1, int(args.cpus_per_worker)),
    }
    storage_path, storage_fs = _arrow_fs(args.storage, opts)
    resources = {"CPU": args.cpus_per_worker, **({"GPU": 1} if args.gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=args.run_id,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=args.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": _training_dataset(train_uris, args)},
    )
    start = time.perf_counter()
    result = trainer.fit()
    train_seconds = time.perf_counter() - start
    state = TrainState.load(result.checkpoint)

    models = _final_models(state, teacher, family, args.levels)
    held = load_eval_images(held_uris, side=args.eval_size, storage_options=opts)
    student_psnr = evaluate_levels(models["SE"], models["SD"], held)
    teacher_psnr = evaluate_levels(models["TE"], models["TD"], held)
    for level in args.levels:
        log.info(
            "level %d held-out PSNR: student %.2f dB, teacher %.2f dB", level, student_psnr[level], teacher_psnr[level]
        )
    with torch.inference_mode():
        x = held[0]
        rows = {
            name: [("input", x)] + [(f"L{k}", models[d][k](models[e][k](x))) for k in args.levels]
            for name, e, d in (("teacher", "TE", "TD"), ("student", "SE", "SD"))
        }
    metrics = {
        "psnr": {str(k): round(v, 3) for k, v in student_psnr.items()},
        "teacher_psnr": {str(k): round(v, 3) for k, v in teacher_psnr.items()},
        "stages": _stage_summary(state, stages),
        "train_seconds": round(train_seconds, 1),
        "attempts": state.starts,
    }
    card = {
        "teacher": args.teacher,
        "width": args.width,
        "widths": list(family.widths),
        "level1_width": family.level1_width,
        "embed_widths": list(family.embed_widths) if family.embed_widths else None,
        "level1_embed_width": family.level1_embed_width,
        "levels": args.levels,
        "data": args.data,
        "held_out": held_uris,
        "steps": args.steps,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "metrics": metrics,
        "code_version": _code_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    run_uri = f"{args.storage.rstrip('/')}/{args.run_id}"
    curves = {s.key: [round(row[0], 6) for row in state.history.get(s.key, [])] for s in stages}
    summary = {"run_id": args.run_id, "run_uri": run_uri, **card, "loss_curves": curves}
    if args.publish:
        states = {
            f"{k}{kind}": state.done[f"{k}{kind}"] for k in args.levels for kind in (STUDENT_ENCODER, STUDENT_DECODER)
        }
        summary["bundle"] = publish_bundle(args.publish, args.run_id, states, card, storage_options=opts)
        summary["promoted"], current = promote(args.publish, args.run_id, student_psnr, held, storage_options=opts)
        summary["previous_psnr"] = None if current is None else {str(k): round(v, 3) for k, v in current.items()}
    _write_run_folder(run_uri, summary, state, stages, render_reconstructions(rows), opts)
    log.info("run folder %s: losses.png, reconstructions.png, summary.json", run_uri)
    return summary


# ------------------------------------------------------------------------------------- CLI


def _absolute(uri: str | None) -> str | None:
    """Local paths made absolute: Ray workers do not run in the driver's working directory."""
    if uri is None or "://" in uri or Teacher(uri).is_vgg19:
        return uri
    return os.path.abspath(uri)


def _levels(text: str) -> list[int]:
    try:
        levels = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated levels like 1,2,3, got {text!r}") from e
    if not levels or not set(levels) <= set(LEVELS):
        raise argparse.ArgumentTypeError(f"levels must be among {LEVELS}, got {text!r}")
    return levels


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``distill`` command line (``python -m jobs.distill`` and ``ultrastyle distill``)."""
    p = argparse.ArgumentParser(
        prog="ultrastyle distill",
        description="Distil small WCT encoders/decoders from a teacher on Ray Train and publish a bundle.",
    )
    p.add_argument(
        "--teacher",
        default="torchvision-vgg19",
        help="torchvision-vgg19 (ImageNet weights), torchvision-vgg19:random (untrained, for tests), "
        "or a weights URI (a folder of {k}SE/{k}SD.pth or a bundle)",
    )
    p.add_argument("--data", required=True, help="URI of training images (searched recursively)")
    p.add_argument("--storage", required=True, help="URI for checkpoints and the run folder: <storage>/<run id>/")
    p.add_argument(
        "--width",
        type=float,
        default=0.25,
        help="student width as a fraction of VGG-19's filters (0.25 is the CD 16x size)",
    )
    p.add_argument("--levels", type=_levels, default=list(LEVELS), help="levels to train, e.g. 1,2,3,4,5")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps per stage")
    p.add_argument("--batch-size", type=int, default=8, help="crops per worker per step")
    p.add_argument("--image-size", type=int, default=256, help="crop side in pixels (multiple of 16)")
    p.add_argument("--crops-per-image", type=int, default=8, help="random crops cut from each image per epoch")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP ranks)")
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="CPUs reserved per worker (leave some for Ray Data); also its torch threads",
    )
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--warmup-steps", type=int, default=20, help="steps of linear learning-rate warm-up per stage")
    p.add_argument("--beta", type=float, default=0.01, help="weight of the embed loss (feature MSE)")
    p.add_argument("--lambda-p", type=float, default=0.01, help="weight of the perceptual losses (feature MSE)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=25, help="steps between log lines")
    p.add_argument("--max-failures", type=int, default=3, help="worker-group restarts before the run fails")
    p.add_argument("--run-id", default=None, help="run folder and bundle name; reuse one to resume (default: time)")
    p.add_argument("--eval-data", default=None, help="held-out images (default: hold out part of --data)")
    p.add_argument("--holdout-every", type=int, default=5, help="hold out one in this many --data images")
    p.add_argument("--eval-size", type=int, default=256, help="short side of held-out images for PSNR")
    p.add_argument("--publish", default=None, help="bundle root: writes <publish>/<run id>/ and maybe <publish>/latest")
    p.add_argument(
        "--storage-options",
        type=_json_object,
        default=None,
        help='JSON fsspec options for every URI, e.g. {"endpoint_url": "http://minio:9000"}',
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random initialisations (untrained teacher/decoders)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the job; 0 on success, 2 on bad arguments, 1 when training or publishing fails."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image_size % 16:
        parser.error(f"--image-size must be a multiple of 16, got {args.image_size}")
    args.run_id = args.run_id or f"distill-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    for name in ("teacher", "data", "storage", "eval_data", "publish"):
        setattr(args, name, _absolute(getattr(args, name)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        setup = prepare(args)
    except (ValueError, FileNotFoundError, WeightsError) as e:
        print(f"ultrastyle distill: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    try:
        run(args, setup)
    except Exception:
        log.exception("distillation run %s failed", args.run_id)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
