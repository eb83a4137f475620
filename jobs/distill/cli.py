"""The ``distill`` command line: ``python -m jobs.distill`` and ``ultrastyle distill``.

Exit status 0 when the run finished (promoted or not), 2 for arguments that cannot work
(checked before training starts, including resources the cluster cannot give), 1 when
training or publishing failed.
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

from jobs.distill.job import prepare, run
from jobs.distill.resources import worker_resources
from jobs.distill.teachers import Teacher
from models import LEVELS, WeightsError

__all__ = ["build_parser", "main"]

log = logging.getLogger("ultrastyle.distill")


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
        default=None,
        help="CPUs reserved per worker, also its torch threads (default: what the cluster has less one "
        "CPU for Ray Data, shared by the workers)",
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


def _fail(message: str) -> int:
    print(f"ultrastyle distill: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the job; 0 on success, 2 on bad arguments, 1 when training or publishing fails."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image_size % 16:
        parser.error(f"--image-size must be a multiple of 16, got {args.image_size}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.cpus_per_worker is not None and args.cpus_per_worker <= 0:
        parser.error(f"--cpus-per-worker must be positive, got {args.cpus_per_worker:g}")
    args.run_id = args.run_id or f"distill-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    for name in ("teacher", "data", "storage", "eval_data", "publish"):
        setattr(args, name, _absolute(getattr(args, name)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        setup = prepare(args)
    except (ValueError, FileNotFoundError, WeightsError) as e:
        return _fail(f"{type(e).__name__}: {e}")
    if not ray.is_initialized():
        ray.init()
    try:
        resources = worker_resources(
            workers=args.workers, cpus_per_worker=args.cpus_per_worker, gpu=args.gpu, cluster=ray.cluster_resources()
        )
    except ValueError as e:
        return _fail(str(e))
    args.cpus_per_worker = resources["CPU"]
    try:
        run(args, setup, resources)
    except Exception:
        log.exception("distillation run %s failed", args.run_id)
        return 1
    return 0
