"""The ``distill`` command line: ``python -m jobs.distill`` and ``ultrastyle distill``.

Exit status 0 when the run finished (promoted or not), 2 for arguments that cannot work
(checked before training starts, including resources the cluster cannot give), 1 when
training or publishing failed, or a stage did not improve (nothing published).

With no ``--data`` the job trains on the project's sample images (written to
``./ultrastyle-samples``, as ``ultrastyle stylize`` does), so a fresh clone can run
``ultrastyle distill --teacher cd16x --storage runs`` with nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any

import ray

from jobs.distill.console import configure_driver, ray_init_options
from jobs.distill.job import StageFailedError, prepare, run
from jobs.distill.publish import DEFAULT_MARGIN_DB
from jobs.distill.resources import worker_resources
from jobs.distill.teachers import Teacher
from models import LEVELS, WeightsError
from models.bundle import check_run_id

__all__ = ["build_parser", "main"]

log = logging.getLogger("ultrastyle.distill")

SAMPLES_DIR = "ultrastyle-samples"


def _absolute(uri: str | None) -> str | None:
    """Local paths made absolute: Ray workers do not run in the driver's working directory."""
    if uri is None or "://" in uri or Teacher(uri).is_named:
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
        "cd16x (the CD 16x weights embedded in the package), or a weights URI (a folder of "
        "{k}SE/{k}SD.pth or a bundle)",
    )
    p.add_argument(
        "--data",
        default=None,
        help=f"URI of training images, searched recursively (default: the project's sample images, "
        f"written to ./{SAMPLES_DIR})",
    )
    p.add_argument("--storage", required=True, help="URI for checkpoints and the run folder: <storage>/<run id>/")
    p.add_argument(
        "--width",
        type=float,
        default=0.25,
        help="student width as a fraction of VGG-19's filters (0.25 is the CD 16x size)",
    )
    p.add_argument("--levels", type=_levels, default=list(LEVELS), help="levels to train, e.g. 1,2,3,4,5")
    p.add_argument("--steps", type=int, default=2000, help="most optimiser steps per stage (see --patience)")
    p.add_argument("--batch-size", type=int, default=8, help="crops per worker per step")
    p.add_argument("--image-size", type=int, default=256, help="crop side in pixels (multiple of 16)")
    p.add_argument("--crops-per-image", type=int, default=8, help="random crops cut from each image per epoch")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP ranks)")
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="CPUs reserved per worker, also its torch threads (default: what the cluster has less one "
        "CPU for Ray Data, shared by the workers)",
    )
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument(
        "--lr",
        type=float,
        default=0.1,
        help="peak Adam step per layer, as a fraction of the RMS of the layer's weights, for student encoders "
        "(which start from a pruned teacher) and teacher decoders (from scratch)",
    )
    p.add_argument(
        "--decoder-lr",
        type=float,
        default=0.05,
        help="the same for student decoders, which start from the teacher's decoder",
    )
    p.add_argument(
        "--warmup-steps", type=int, default=20, help="steps of linear warm-up per stage, then a cosine decay to 0"
    )
    p.add_argument("--clip-grad", type=float, default=0.0, help="clip the gradient norm to this (0: no clipping)")
    p.add_argument("--beta", type=float, default=0.3, help="weight of the embed loss (relative feature error)")
    p.add_argument(
        "--lambda-p", type=float, default=1.0, help="weight of the perceptual losses (relative feature error)"
    )
    p.add_argument("--eval-every", type=int, default=50, help="steps between held-out PSNR measurements")
    p.add_argument(
        "--patience",
        type=int,
        default=400,
        help="end a stage once this many steps pass without a held-out PSNR gain of 0.05 dB (0: never); "
        "a stage ended so without ever beating its start fails the run",
    )
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=100, help="steps between progress lines (at held-out evaluations)")
    p.add_argument("--max-failures", type=int, default=3, help="worker-group restarts before the run fails")
    p.add_argument("--run-id", default=None, help="run folder and bundle name; reuse one to resume (default: time)")
    p.add_argument("--eval-data", default=None, help="held-out images (default: hold out part of --data)")
    p.add_argument("--holdout-every", type=int, default=5, help="hold out one in this many --data images")
    p.add_argument("--eval-size", type=int, default=256, help="short side of held-out images for PSNR")
    p.add_argument("--publish", default=None, help="bundle root: writes <publish>/<run id>/ and maybe <publish>/latest")
    p.add_argument(
        "--promote-first",
        action="store_true",
        help="with no <publish>/latest yet, promote this bundle whatever it scores (default: only within "
        "--promotion-margin of the embedded CD 16x weights on every level)",
    )
    p.add_argument(
        "--promotion-margin",
        type=float,
        default=DEFAULT_MARGIN_DB,
        help="dB a first bundle may score below the embedded CD 16x weights on each level and still be promoted",
    )
    p.add_argument(
        "--storage-options",
        type=_json_object,
        default=None,
        help='JSON fsspec options for every URI, e.g. {"endpoint_url": "http://minio:9000"}',
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random initialisations (untrained teacher/decoders)")
    return p


def _fail(message: str, status: int = 2) -> int:
    print(f"ultrastyle distill: error: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the job; 0 on success, 2 on bad arguments, 1 when training or publishing fails."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("image_size", "eval_every", "log_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.image_size % 16:
        parser.error(f"--image-size must be a multiple of 16, got {args.image_size}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.cpus_per_worker is not None and args.cpus_per_worker <= 0:
        parser.error(f"--cpus-per-worker must be positive, got {args.cpus_per_worker:g}")
    if min(args.lr, args.decoder_lr) <= 0 or min(args.clip_grad, args.patience, args.warmup_steps) < 0:
        parser.error("--lr and --decoder-lr must be positive; --clip-grad, --patience and --warmup-steps at least 0")
    if args.run_id is not None:
        try:
            check_run_id(args.run_id)
        except ValueError as e:
            parser.error(f"--run-id: {e}")
    configure_driver()
    args.run_id = args.run_id or f"distill-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    if args.data is None:
        from jobs.samples import write_samples

        args.data = str(write_samples(SAMPLES_DIR)[0].parent)
        log.info("no --data: training on the sample images in %s", args.data)
    for name in ("teacher", "data", "storage", "eval_data", "publish"):
        setattr(args, name, _absolute(getattr(args, name)))
    try:
        setup = prepare(args)
    except (ValueError, FileNotFoundError, WeightsError) as e:
        return _fail(f"{type(e).__name__}: {e}")
    if not ray.is_initialized():
        ray.init(**ray_init_options())
    try:
        resources = worker_resources(
            workers=args.workers, cpus_per_worker=args.cpus_per_worker, gpu=args.gpu, cluster=ray.cluster_resources()
        )
    except ValueError as e:
        return _fail(str(e))
    args.cpus_per_worker = resources["CPU"]
    try:
        run(args, setup, resources)
    except StageFailedError as e:
        return _fail(str(e), 1)
    except Exception:
        log.exception("distillation run %s failed", args.run_id)
        return 1
    return 0
