"""Megapixels per second of the Ray batch job against the in-process engine, on the same image.

    python -m scripts.batch_throughput [--image PATH] [--copies N] [--tile 1024] [--workers 2]

Both sides run the exact tiled cascade with the same tile on the same CPUs: the in-process
engine (``pipeline.engine.stylize_file``, mode ``exact``) with ``--workers`` torch threads, and
the batch job on a local Ray with ``--workers`` CPU actors of one thread each. Without
``--image`` the content is a 3840x2160 picture made from scikit-image's public-domain
astronaut sample, and the style is the project's painted sample style, so the script needs no
download but the weights (``--weights`` or ``$ULTRASTYLE_WEIGHTS``).

It prints both rates, Ray's overhead on the pair (the batch row's wall seconds against the
in-process read + stylize + write), the job's wall time including Ray's start and the actors'
weight loading, the per-stage split from the manifest, and how busy the actors were. Run it on
an otherwise idle machine: under CPU contention torch's intra-op threads (the in-process side)
slow down far more than single-threaded actors, which flatters the batch job.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from jobs.samples import paint_style
from jobs.stylize import main as stylize_main
from pipeline.engine import load_style, stylize_file
from pipeline.manifest import read_manifest
from pipeline.models import load_model_set

STAGES = ("read_seconds", "stylize_seconds", "compute_seconds", "reduce_seconds", "write_seconds")


def _content(path: Path, size: tuple[int, int]) -> None:
    """A ``size`` (width, height) JPEG from scikit-image's astronaut, resized (public domain)."""
    import skimage.data

    Image.fromarray(skimage.data.astronaut()).resize(size, Image.Resampling.BICUBIC).save(path, quality=95)


def _in_process(image: Path, style: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(args.workers)
    models = load_model_set(args.weights)
    stats = load_style(str(style), models)
    start = time.perf_counter()
    report = stylize_file(str(image), str(out), stats, models, mode="exact", tile=args.tile)
    return {"total": time.perf_counter() - start, **report.seconds}


def _batch(folder: Path, style: Path, out: Path, args: argparse.Namespace) -> float:
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False)
    try:
        start = time.perf_counter()
        argv = ["--input", str(folder), "--style", str(style), "--output", str(out), "--mode", "exact",
                "--tile", str(args.tile), "--workers", str(args.workers), "--cpus-per-worker", "1",
                "--max-in-flight", str(max(2, args.copies))]
        if args.weights:
            argv += ["--weights", args.weights]
        if stylize_main(argv) != 0:
            raise SystemExit("the batch job failed; see its log above")
        return time.perf_counter() - start
    finally:
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", help="content image (default: a generated 3840x2160 JPEG)")
    p.add_argument("--weights", default=None, help="weights URI (default: $ULTRASTYLE_WEIGHTS or the official files)")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--workers", type=int, default=2, help="CPU actors, and the in-process engine's threads")
    p.add_argument("--copies", type=int, default=1, help="copies of the image in the batch (several in flight)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ultrastyle-throughput-"))
    try:
        folder = work / "in"
        folder.mkdir()
        image = folder / ("content" + (Path(args.image).suffix if args.image else ".jpg"))
        if args.image:
            shutil.copyfile(args.image, image)
        else:
            _content(image, (3840, 2160))
        for i in range(1, args.copies):
            shutil.copyfile(image, folder / f"copy{i}{image.suffix}")
        style = work / "style.png"
        paint_style().save(style)
        with Image.open(image) as img:
            megapixels = img.width * img.height / 1e6
            print(f"content {img.width}x{img.height} ({megapixels:.2f} MP) x {args.copies}, tile {args.tile}, "
                  f"{args.workers} workers")

        local = _in_process(image, style, work / f"local{image.suffix}", args)
        print(f"in-process engine ({args.workers} threads): read {local['read']:.1f} s, stylize "
              f"{local['stylize']:.1f} s, write {local['write']:.1f} s, total {local['total']:.1f} s -> "
              f"{megapixels / local['total']:.3f} MP/s")

        wall = _batch(folder, style, work / "out", args)
        rows = read_manifest(str(work / "out")).to_pylist()
        pair = float(np.mean([r["seconds"] for r in rows]))
        print(f"batch job ({args.workers} CPU actors): pair {pair:.1f} s on average -> "
              f"{megapixels / pair:.3f} MP/s per image; {megapixels * len(rows) / wall:.3f} MP/s over the job's "
              f"{wall:.1f} s wall (Ray start and weight loading included)")
        print(f"Ray overhead on the pair: {100 * (pair / local['total'] - 1):+.1f} % of the in-process time")
        for row in rows:
            split = ", ".join(f"{k.removesuffix('_seconds')} {row[k]:.1f} s" for k in STAGES)
            busy = row["compute_seconds"] / (args.workers * row["stylize_seconds"])
            print(f"  {Path(row['content_uri']).name}: {row['tiles']} tiles, {row['seconds']:.1f} s: {split}; "
                  f"actors busy {100 * busy:.0f} % of the levels' wall time")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
