"""The distillation's training: the stages, the Ray Train worker loop and its launcher.

Per level the stages are

1. ``teacher decoder``: only for a teacher that comes without one (torchvision's VGG-19);
2. ``student encoder``: pruned from the teacher (:mod:`models.pruning`), trained with the
   embed and collaboration losses (:class:`models.losses.DistillationObjective`);
3. ``student decoder``: the teacher decoder behind the student's Q, pruned to the channels
   that carry the trained student's features of a training batch best
   (:func:`models.pruning.prune_decoder`), trained with pixel + perceptual loss
   (:class:`models.losses.DecoderObjective`),

all in one :class:`ray.train.torch.TorchTrainer` run with DDP, a checkpoint every
``checkpoint_every`` steps (rank 0 alone writes it) and a ``FailureConfig`` so a lost worker
resumes from the last checkpoint, mid-stage.

Every stage proves itself on held-out images: every ``eval_every`` steps it measures the
PSNR of the reconstruction it trains (``reconstruct`` of its objective) on a fixed batch of
held-out crops, keeps the best weights, and stops once ``patience`` steps have passed
without a gain of :data:`MIN_GAIN_DB`. It ends with its best weights, so it never ends worse
than it started; a stage stopped that way without ever beating its start (``patience`` steps
of training made it no better) fails the run, which then stops and publishes nothing. The
losses, the pruning and the step sizes live in ``models/``; this module only wires them to
Ray Train.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, get_device, prepare_model

from jobs.distill.data import arrow_fs, load_eval_images
from jobs.distill.teachers import Teacher
from models import Decoder, Encoder, FamilySpec
from models.losses import DecoderObjective, DistillationObjective, psnr
from models.optim import layer_param_groups, lr_factor
from models.pruning import prune_decoder, prune_encoder

__all__ = [
    "MIN_GAIN_DB",
    "STUDENT_DECODER",
    "STUDENT_ENCODER",
    "TEACHER_DECODER",
    "Stage",
    "TrainState",
    "final_models",
    "fit",
    "plan_stages",
    "stage_summary",
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
MIN_GAIN_DB = 0.05  # a held-out PSNR gain smaller than this is no improvement


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
        done: stage key -> state dict of every finished stage (its best weights).
        module: state dict of the module being trained, mid-stage.
        optimizer: its optimizer's state, mid-stage.
        best_module: state dict of the best weights so far of the stage in progress.
        history: stage key -> one row of loss terms per step, in ``terms[key]`` order.
        terms: stage key -> names of the loss terms its rows hold.
        seconds: stage key -> wall seconds spent on its steps (over every attempt).
        held_out: stage key -> its loss terms on the held-out batch at ``"start"`` and
            ``"end"`` (the weights it ends with).
        psnr: stage key -> ``[step, held-out PSNR in dB]`` at its start and every evaluation.
        best: stage key -> ``{"psnr": dB, "step": step}`` of its best weights.
        stopped: stage key -> why it ended: ``"steps"`` (all taken) or ``"plateau"``.
        failed: one line saying which stage did not improve, or ``None``.
        starts: ``[stage, step]`` at which each attempt of the run started.
    """

    stage: int = 0
    step: int = 0
    done: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    module: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    best_module: dict[str, torch.Tensor] | None = None
    history: dict[str, list[list[float]]] = field(default_factory=dict)
    terms: dict[str, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    held_out: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    psnr: dict[str, list[list[float]]] = field(default_factory=dict)
    best: dict[str, dict[str, float]] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    failed: str | None = None
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
    stage: Stage,
    state: TrainState,
    teacher: Teacher,
    family: FamilySpec,
    config: dict[str, Any],
    batches: Iterator[torch.Tensor],
) -> tuple[DistillationObjective | DecoderObjective, torch.nn.Module]:
    """(objective, the part of it that learns) for ``stage``, initialised as the stage starts:
    a student decoder is pruned keeping the channels that carry the trained student
    encoder's features of a training batch best (:func:`models.pruning.prune_decoder`)."""
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
    with torch.no_grad():
        features = student.eval()(next(batches))
    decoder = prune_decoder(t_dec, family, getattr(student, f"{student.plan[-1]}_aux"), features)
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


def _probe_batch(uris: list[str], side: int, storage_options: dict[str, Any] | None) -> torch.Tensor:
    """A fixed batch of the held-out images at the scale of the final evaluation: each resized
    to a ``side`` short side like :func:`jobs.distill.evaluate.evaluate_levels`'s, then its
    centre square (the largest every image has, a multiple of 16): ``(N, 3, S, S)`` in [0, 1].

    Training losses move with every random crop; the same held-out batch, measured through
    the stage, says whether and when the stage stops helping, and picks the weights it keeps
    at the scale at which the run reports its held-out PSNR.
    """
    images = load_eval_images(uris, side=side, storage_options=storage_options)
    size = min(min(image.shape[-2:]) for image in images)
    crops = []
    for image in images:
        h, w = image.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        crops.append(image[..., top : top + size, left : left + size])
    return torch.cat(crops)


def _held_out_terms(objective: torch.nn.Module, probe: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        return {k: round(float(v), 6) for k, v in objective(probe).items()}


def _held_out_psnr(objective: DistillationObjective | DecoderObjective, probe: torch.Tensor) -> float:
    """PSNR (dB) of the stage's reconstruction of the held-out batch, rank 0's value on every
    rank, so that every rank takes the same decision to stop."""
    with torch.no_grad():
        value = torch.tensor([psnr(objective.reconstruct(probe), probe)], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(value, src=0)
    return float(value)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _train_stage(
    index: int,
    stage: Stage,
    state: TrainState,
    batches: Iterator[torch.Tensor],
    probe: torch.Tensor,
    modules: tuple[DistillationObjective | DecoderObjective, torch.nn.Module],
    config: dict[str, Any],
) -> None:
    """Run (the rest of) one stage: Adam with per-layer step sizes (``decoder_lr`` for a student
    decoder, which starts from the teacher's decoder, ``lr`` for the rest, which start from a
    pruned copy or from scratch), warm-up and cosine decay, held-out PSNR every ``eval_every``
    steps, early stop, rank 0 logging and checkpointing."""
    objective, trainable = modules
    key, steps, rank = stage.key, config["steps"], ray.train.get_context().get_world_rank()
    if state.module is not None:
        trainable.load_state_dict(state.module)
    model = prepare_model(objective)  # moves the objective to the device, DDP-wraps it
    probe = probe.to(get_device())
    lr = config["decoder_lr"] if stage.kind == STUDENT_DECODER else config["lr"]
    optimizer = torch.optim.Adam(layer_param_groups(trainable, lr))
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    if state.step == 0:
        start_psnr = _held_out_psnr(objective, probe)
        state.held_out[key] = {"start": _held_out_terms(objective, probe)}
        state.psnr[key] = [[0, round(start_psnr, 3)]]
        state.best[key] = {"psnr": start_psnr, "step": 0}
        state.best_module = _snapshot(trainable)
        if rank == 0:
            log.info(
                "[%d/%d] %s: held-out %.2f dB at the start", index + 1, len(config["stages"]), stage.title, start_psnr
            )
    rows = state.history.setdefault(key, [])
    start, first = time.perf_counter(), state.step + 1
    for step in range(first, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, steps, config["warmup_steps"])
        terms = model(next(batches))
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if config["clip_grad"]:
            torch.nn.utils.clip_grad_norm_(trainable.parameters(), config["clip_grad"])
        optimizer.step()
        state.terms[key] = list(terms)
        rows.append([float(v.detach()) for v in terms.values()])
        state.step = step
        plateau = False
        if step % config["eval_every"] == 0 or step == steps:
            value, best = _held_out_psnr(objective, probe), state.best[key]
            state.psnr[key].append([step, round(value, 3)])
            if value >= best["psnr"] + MIN_GAIN_DB:
                state.best[key] = best = {"psnr": value, "step": step}
                state.best_module = _snapshot(trainable)
            plateau = bool(config["patience"]) and step - best["step"] >= config["patience"]
            if rank == 0 and (step % config["log_every"] == 0 or plateau or step == steps):
                rate = (step - first + 1) / (time.perf_counter() - start)
                log.info(
                    "[%d/%d] %s step %d/%d: held-out %.2f dB (best %.2f at step %d), loss %.4g, %.2f steps/s",
                    index + 1, len(config["stages"]), stage.title, step, steps, value, best["psnr"], best["step"],
                    rows[-1][0], rate,
                )  # fmt: skip
        last = plateau or step == steps
        if step % config["checkpoint_every"] and not last:
            continue
        state.seconds[key] = state.seconds.get(key, 0.0) + time.perf_counter() - start
        if last:
            _finish_stage(index, stage, state, modules, probe, config, "plateau" if plateau else "steps")
        else:
            state.module, state.optimizer = trainable.state_dict(), optimizer.state_dict()
        metrics = {"stage": index, "level": stage.level, "kind": stage.kind, "step": step}
        _report(state, {**metrics, **dict(zip(state.terms[key], rows[-1], strict=True))}, rank=rank)
        if last:
            return
        start, first = time.perf_counter(), step + 1


def _finish_stage(
    index: int,
    stage: Stage,
    state: TrainState,
    modules: tuple[torch.nn.Module, torch.nn.Module],
    probe: torch.Tensor,
    config: dict[str, Any],
    why: str,
) -> None:
    """End a stage on its best weights; mark the run failed if it stopped for lack of gain
    without ever beating its start."""
    (objective, trainable), key, best = modules, stage.key, state.best[stage.key]
    trainable.load_state_dict(state.best_module)
    state.held_out[key]["end"] = _held_out_terms(objective, probe)
    state.done[key] = state.best_module
    state.stopped[key] = why
    if why == "plateau" and best["step"] == 0:
        state.failed = (
            f"{stage.title} did not improve its held-out PSNR in {state.step} steps ({best['psnr']:.2f} dB at "
            f"its start, never {MIN_GAIN_DB} dB better)"
        )
    if ray.train.get_context().get_world_rank() == 0:
        log.info(
            "[%d/%d] %s done after %d steps%s: held-out %.2f -> %.2f dB (weights of step %d)",
            index + 1, len(config["stages"]), stage.title, state.step, ", no gain left" if why == "plateau" else "",
            state.psnr[key][0][1], best["psnr"], best["step"],
        )  # fmt: skip
    state.stage, state.step = index + 1, 0
    state.module = state.optimizer = state.best_module = None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: resume from the latest checkpoint, then run the remaining stages
    (or none once a stage has failed)."""
    torch.set_num_threads(config["threads"])
    logging.getLogger().setLevel(logging.WARNING)  # Ray Train's per-report INFO lines, libvips' thread pools
    logging.getLogger("ultrastyle").setLevel(logging.INFO)  # the job's own progress lines
    state = TrainState.load(ray.train.get_checkpoint())
    state.starts.append([state.stage, state.step])
    if ray.train.get_context().get_world_rank() == 0 and len(state.starts) > 1:
        log.info("resuming at stage %d step %d (attempt %d)", state.stage + 1, state.step, len(state.starts))
    teacher = Teacher(config["teacher"], config["storage_options"], config["seed"])
    family = FamilySpec(**config["family"])
    stages = [Stage(**s) for s in config["stages"]]
    batches = _batches(ray.train.get_dataset_shard("train"), config["batch_size"])
    probe = _probe_batch(config["held_out"], config["eval_size"], config["storage_options"])
    for index in range(state.stage, len(stages)):
        if state.failed:
            break
        modules = _stage_modules(stages[index], state, teacher, family, config, batches)
        _train_stage(index, stages[index], state, batches, probe, modules, config)


def final_models(
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


def stage_summary(state: TrainState, stages: list[Stage], window: int = 10) -> dict[str, dict[str, Any]]:
    """Per stage that ran: steps taken and why it stopped, steps/s, the mean of each loss term
    over its first and last ``window`` steps, its loss terms on the held-out batch at its start
    and end, and its held-out PSNR at the start, at its best step (the weights it keeps) and
    along the way."""
    summary = {}
    for stage in stages:
        if stage.key not in state.history:
            continue
        rows = np.asarray(state.history[stage.key], dtype=np.float64)
        names = state.terms[stage.key]
        best = state.best[stage.key]
        summary[stage.key] = {
            "title": stage.title,
            "steps": len(rows),
            "stopped": state.stopped.get(stage.key),
            "steps_per_second": round(len(rows) / state.seconds[stage.key], 3)
            if state.seconds.get(stage.key)
            else None,
            "first_loss": dict(zip(names, rows[:window].mean(axis=0).round(6).tolist(), strict=True)),
            "final_loss": dict(zip(names, rows[-window:].mean(axis=0).round(6).tolist(), strict=True)),
            "held_out_loss": state.held_out.get(stage.key),
            "psnr": {
                "start": state.psnr[stage.key][0][1],
                "final": round(best["psnr"], 3),
                "best_step": int(best["step"]),
                "curve": state.psnr[stage.key],
            },
        }
    return summary


# -------------------------------------------------------------------------------- the launcher


def fit(
    config: dict[str, Any],
    dataset: ray.data.Dataset,
    *,
    run_id: str,
    storage: str,
    workers: int,
    resources_per_worker: dict[str, float],
    gpu: bool,
    max_failures: int,
    storage_options: dict[str, Any] | None,
) -> TrainState:
    """Run :func:`train_loop_per_worker` on ``workers`` Ray Train workers; the final state.

    Args:
        config: the loop's settings (see :func:`train_loop_per_worker`).
        dataset: the training crops, sharded over the workers.
        run_id, storage: checkpoints go to ``<storage>/<run id>/``; an existing run resumes.
        resources_per_worker: Ray resources each worker reserves (``CPU``, ``GPU``).

    Raises:
        ray.train.TrainingFailedError: training failed more than ``max_failures`` times.
    """
    storage_path, storage_fs = arrow_fs(storage, storage_options)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=resources_per_worker),
        run_config=RunConfig(
            name=run_id,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),  # the job logs its own progress
        ),
        datasets={"train": dataset},
    )
    return TrainState.load(trainer.fit().checkpoint)
