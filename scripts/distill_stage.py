"""One distillation stage in-process, for comparing recipe settings without Ray.

Trains one level's student encoder (``--stage se``: the collaboration objective) or student
decoder (``--stage sd``: pixel + perceptual, behind a student encoder saved by an ``se`` run)
of a half-width student of the embedded CD 16x weights, with the job's own pieces: the same
pruned start (:mod:`models.pruning`; a decoder's hidden channels ranked on the first training
batch, as in the job), objectives (:mod:`models.losses`), per-layer step sizes,
warm-up and cosine (:mod:`models.optim`), held-out split and crops (:mod:`jobs.distill.data`),
batches of 8 crops of 128 px. Every 100 steps it prints the held-out PSNR the job reports:
the stage's reconstruction of the whole held-out images at a 256 px short side.

    python scripts/distill_stage.py --data IMAGES --level 2 --stage se --save se2.pt
    python scripts/distill_stage.py --data IMAGES --level 2 --stage sd --load-se se2.pt
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from jobs.distill.data import decode_for_crops, list_images, load_eval_images, random_crops, split_holdout
from models import resolve_weights, small_decoder, small_encoder
from models.losses import DecoderObjective, DistillationObjective, psnr
from models.optim import layer_param_groups, lr_factor
from models.pruning import prune_decoder, prune_encoder, student_family

CROP, BATCH, EVAL_SIDE, CROPS_PER_IMAGE = 128, 8, 256, 8


def _batches(images: list[np.ndarray], seed: int) -> Iterator[torch.Tensor]:
    """Endless batches of random crops, every image cut ``CROPS_PER_IMAGE`` times per epoch."""
    rng = np.random.default_rng(seed)
    pool: list[np.ndarray] = []
    while True:
        if len(pool) < BATCH:
            for image in images:
                pool += list(random_crops(image, size=CROP, count=CROPS_PER_IMAGE, rng=rng))
            rng.shuffle(pool)
        yield torch.from_numpy(np.stack(pool[:BATCH]))
        pool = pool[BATCH:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of training images (one in five held out)")
    p.add_argument("--level", type=int, default=2)
    p.add_argument("--stage", choices=("se", "sd"), default="se")
    p.add_argument("--width", type=float, default=0.125, help="student width as a fraction of VGG-19's")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=None, help="relative step (default: the job's, 0.1 se / 0.05 sd)")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--beta", type=float, default=0.3)
    p.add_argument("--lambda-p", type=float, default=1.0)
    p.add_argument("--clip-grad", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the crops")
    p.add_argument("--save", type=Path, help="write the trained module's state dict here")
    p.add_argument("--load-se", type=Path, help="student encoder state dict for --stage sd")
    p.add_argument(
        "--l1-start",
        action="store_true",
        help="prune the decoder's hidden channels by filter L1 norm instead of by their energy on a training batch",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    train_uris, held_uris = split_holdout(list_images(args.data), every=5)
    images = [decode_for_crops(Path(u).read_bytes(), side=2 * CROP) for u in train_uris]
    held = load_eval_images(held_uris, side=EVAL_SIDE)
    weights = resolve_weights(None)
    family = student_family(weights.family, args.width)
    teacher, teacher_decoder = small_encoder(args.level, weights=weights), small_decoder(args.level, weights=weights)
    student, _ = prune_encoder(teacher, family)
    batches = _batches(images, args.seed)
    if args.stage == "se":
        objective = DistillationObjective(student, teacher, teacher_decoder, beta=args.beta, lambda_p=args.lambda_p)
        trainable = student
    else:
        if args.load_se is None:
            p.error("--stage sd needs --load-se (a state dict written by an se run's --save)")
        student.load_state_dict(torch.load(args.load_se, weights_only=True))
        with torch.no_grad():
            features = None if args.l1_start else student(next(batches))
        decoder = prune_decoder(teacher_decoder, family, getattr(student, f"{student.plan[-1]}_aux"), features)
        objective, trainable = DecoderObjective(decoder, student, teacher, lambda_p=args.lambda_p), decoder
    lr = args.lr if args.lr is not None else (0.1 if args.stage == "se" else 0.05)
    optimizer = torch.optim.Adam(layer_param_groups(trainable, lr))

    def held_out_psnr() -> float:
        with torch.no_grad():
            return sum(psnr(objective.reconstruct(x), x) for x in held) / len(held)

    print(f"level {args.level} {args.stage}: held-out {held_out_psnr():.2f} dB at the start", flush=True)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, args.steps, args.warmup_steps)
        terms = objective(next(batches))
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if args.clip_grad:
            torch.nn.utils.clip_grad_norm_(trainable.parameters(), args.clip_grad)
        optimizer.step()
        if step % 100 == 0 or step == args.steps:
            losses = " ".join(f"{k} {float(v.detach()):.4g}" for k, v in terms.items())
            elapsed = time.perf_counter() - start
            print(f"step {step}: held-out {held_out_psnr():.2f} dB, {losses} ({elapsed:.0f} s)", flush=True)
    if args.save:
        torch.save(trainable.state_dict(), args.save)


if __name__ == "__main__":
    main()
