"""One distillation run, driver side: resolve the inputs, train, evaluate, write, publish.

:func:`prepare` checks everything that can be checked before Ray work starts (teacher, widths,
images, held-out split); :func:`run` trains (:mod:`jobs.distill.train`), measures held-out
PSNR per level for student and teacher (:mod:`jobs.distill.evaluate`), writes ``losses.png``,
``psnr.png``, ``reconstructions.png`` and ``summary.json`` into ``<storage>/<run id>/`` and,
with ``--publish``, writes a bundle and maybe promotes it (:mod:`jobs.distill.publish`). A
run in which a stage did not improve writes its figures and summary, publishes nothing and
raises :class:`StageFailedError`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from jobs.distill.data import list_images, load_eval_images, split_holdout, training_dataset
from jobs.distill.evaluate import evaluate_levels, reconstruction_rows
from jobs.distill.figures import render_loss_curves, render_psnr_curves, render_reconstructions
from jobs.distill.publish import publish
from jobs.distill.teachers import Teacher
from jobs.distill.train import (
    STUDENT_DECODER,
    STUDENT_ENCODER,
    Stage,
    TrainState,
    final_models,
    fit,
    plan_stages,
    stage_summary,
)
from models import FamilySpec
from models.pruning import student_family
from pipeline.imaging.imageio import write_bytes
from pipeline.version import code_version

__all__ = ["Setup", "StageFailedError", "prepare", "run"]

log = logging.getLogger("ultrastyle.distill")


class StageFailedError(RuntimeError):
    """A stage ended no better than it started: the run publishes nothing."""


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


def _write_run_folder(
    run_uri: str,
    summary: dict[str, Any],
    state: TrainState,
    stages: list[Stage],
    reconstructions: bytes | None,
    storage_options: dict[str, Any] | None,
) -> list[str]:
    """Write the figures and ``summary.json`` into the run folder; the names written."""
    ran = [s for s in stages if s.key in state.history]
    figures = {
        "losses.png": render_loss_curves({s.title: [row[0] for row in state.history[s.key]] for s in ran}),
        "psnr.png": render_psnr_curves({s.title: state.psnr[s.key] for s in ran}),
    }
    if reconstructions is not None:
        figures["reconstructions.png"] = reconstructions
    for name, data in figures.items():
        write_bytes(f"{run_uri}/{name}", data, storage_options)
    write_bytes(f"{run_uri}/summary.json", json.dumps(summary, indent=2).encode(), storage_options)
    return [*figures, "summary.json"]


def _recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The optimisation settings: what the workers train with and what the card records."""
    return {
        "lr": args.lr,
        "decoder_lr": args.decoder_lr,
        "warmup_steps": args.warmup_steps,
        "clip_grad": args.clip_grad,
        "beta": args.beta,
        "lambda_p": args.lambda_p,
        "eval_every": args.eval_every,
        "patience": args.patience,
    }


def _train_config(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    """The settings every Train worker's loop reads (plain data: it travels to the workers)."""
    return {
        "teacher": args.teacher,
        "storage_options": args.storage_options,
        "seed": args.seed,
        "family": asdict(setup.family),
        "stages": [asdict(s) for s in setup.stages],
        "steps": args.steps,
        "batch_size": args.batch_size,
        "eval_size": args.eval_size,
        "held_out": setup.held_uris,
        **_recipe(args),
        "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
        "threads": max(1, int(args.cpus_per_worker)),
    }


def run(args: argparse.Namespace, setup: Setup, resources_per_worker: dict[str, float]) -> dict[str, Any]:
    """Train, evaluate, write the run folder and (with ``--publish``) publish; return the summary.

    Args:
        args: the parsed command line, ``cpus_per_worker`` already sized.
        setup: what :func:`prepare` resolved.
        resources_per_worker: what each Train worker reserves (:func:`jobs.distill.resources.worker_resources`).

    Raises:
        ray.train.TrainingFailedError: training failed more than ``--max-failures`` times.
    """
    opts = args.storage_options
    teacher, family, stages = setup.teacher, setup.family, setup.stages
    log.info(
        "run %s: teacher %s, student widths %s (level 1: %d), %d stages of at most %d steps, %d training / %d "
        "held-out images, %d workers of %s",
        args.run_id,
        args.teacher,
        family.widths,
        family.level1_width,
        len(stages),
        args.steps,
        len(setup.train_uris),
        len(setup.held_uris),
        args.workers,
        resources_per_worker,
    )
    dataset = training_dataset(
        setup.train_uris, image_size=args.image_size, crops_per_image=args.crops_per_image, storage_options=opts
    )
    start = time.perf_counter()
    state = fit(
        _train_config(args, setup),
        dataset,
        run_id=args.run_id,
        storage=args.storage,
        workers=args.workers,
        resources_per_worker=resources_per_worker,
        gpu=args.gpu,
        max_failures=args.max_failures,
        storage_options=opts,
    )
    train_seconds = time.perf_counter() - start
    run_uri = f"{args.storage.rstrip('/')}/{args.run_id}"
    metrics: dict[str, Any] = {
        "stages": stage_summary(state, stages),
        "train_seconds": round(train_seconds, 1),
        "attempts": state.starts,
    }
    card = _card(args, setup, metrics)
    curves = {key: [round(row[0], 6) for row in rows] for key, rows in state.history.items()}
    summary = {"run_id": args.run_id, "run_uri": run_uri, **card, "loss_curves": curves}
    if state.failed:
        summary["failed"] = state.failed
        _write_run_folder(run_uri, summary, state, stages, None, opts)
        raise StageFailedError(f"{state.failed}; nothing published (see {run_uri}/summary.json)")

    models = final_models(state, teacher, family, args.levels)
    held = load_eval_images(setup.held_uris, side=args.eval_size, storage_options=opts)
    student_psnr = evaluate_levels(models["SE"], models["SD"], held)
    teacher_psnr = evaluate_levels(models["TE"], models["TD"], held)
    for level in args.levels:
        log.info(
            "level %d held-out PSNR: student %.2f dB, teacher %.2f dB", level, student_psnr[level], teacher_psnr[level]
        )
    metrics["psnr"] = {str(k): round(v, 3) for k, v in student_psnr.items()}
    metrics["teacher_psnr"] = {str(k): round(v, 3) for k, v in teacher_psnr.items()}
    rows = reconstruction_rows(
        {"teacher": (models["TE"], models["TD"]), "student": (models["SE"], models["SD"])}, held[0]
    )
    if args.publish:
        names = [f"{k}{kind}" for k in args.levels for kind in (STUDENT_ENCODER, STUDENT_DECODER)]
        states = {name: state.done[name] for name in names}
        summary |= publish(
            args.publish, args.run_id, states, card, student_psnr, held,
            promote_first=args.promote_first, margin=args.promotion_margin, storage_options=opts,
        )  # fmt: skip
    written = _write_run_folder(run_uri, summary, state, stages, render_reconstructions(rows), opts)
    log.info("run folder %s: %s", run_uri, ", ".join(written))
    return summary


def _card(args: argparse.Namespace, setup: Setup, metrics: dict[str, Any]) -> dict[str, Any]:
    """The bundle's ``card.json`` (also the head of ``summary.json``); ``metrics`` is filled in
    place as the run measures more."""
    family = setup.family
    return {
        "teacher": args.teacher,
        "width": args.width,
        "widths": list(family.widths),
        "level1_width": family.level1_width,
        "embed_widths": list(family.embed_widths) if family.embed_widths else None,
        "level1_embed_width": family.level1_embed_width,
        "levels": args.levels,
        "data": args.data,
        "held_out": setup.held_uris,
        "steps": args.steps,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "cpus_per_worker": args.cpus_per_worker,
        "recipe": _recipe(args),
        "metrics": metrics,
        "code_version": code_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
