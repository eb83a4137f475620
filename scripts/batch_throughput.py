"""Ray's overhead: the batch job against the in-process engine on the same images and CPUs.

    python -m scripts.batch_throughput [--image PATH | --size WxH] [--copies N] [--tile 512] [--workers 2]
        [--mode exact] [--batch-images 4] [--repeats 2]

Both sides run the cascade in ``--mode`` with the same tile: A, the in-process engine
(``pipeline.engine.runner.stylize_file``, images one after another, file to file) with
``--workers`` torch threads; B, the batch job on a local Ray with ``--workers`` CPU actors of one
thread each (images of one tile go ``--batch-images`` to a call). They alternate (A B A B ...) so
that load from other users of the machine falls on both alike; the script prints every run, the
medians and the ratios. Without ``--image`` the content is a 3840x2160 picture made from
scikit-image's public-domain astronaut sample, or with ``--size`` a photo of that size
(:func:`jobs.bench.photo_file`), and the style is the project's painted sample style, so it
needs no download but the weights (``--weights`` or ``$ULTRASTYLE_WEIGHTS``).

For B, "pair" is the manifest's wall seconds of a pair (cut, levels, write), and "job" is
the span from the first pair's start to the last pair's end (Ray's start and the actors'
weight loading excluded, as A excludes model loading). The object store's peak use is
sampled during B and given per pixel in flight.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
import torch
from PIL import Image

from jobs.bench import photo_file
from jobs.samples import paint_style
from jobs.stylize import main as stylize_main
from pipeline.batch.manifest import read_manifest
from pipeline.engine.models import load_model_set
from pipeline.engine.runner import load_style, stylize_file


def _content(path: Path, size: tuple[int, int]) -> None:
    """A ``size`` (width, height) JPEG from scikit-image's astronaut, resized (public domain)."""
    import skimage.data

    Image.fromarray(skimage.data.astronaut()).resize(size, Image.Resampling.BICUBIC).save(path, quality=95)


def _in_process(images: list[Path], style: Path, out: Path, args: argparse.Namespace) -> float:
    """Seconds for the engine to read, stylize and write every image (models already loaded)."""
    torch.set_num_threads(args.workers)
    models = load_model_set(args.weights)
    stats = load_style(str(style), models)
    start = time.perf_counter()
    for i, image in enumerate(images):
        stylize_file(str(image), str(out / f"local{i}{image.suffix}"), stats, models, mode=args.mode, tile=args.tile)
    return time.perf_counter() - start


def _bench(args: argparse.Namespace) -> float:
    """MP/s of ``ultrastyle bench`` at ``--size`` in a fresh process with ``--workers`` threads (the cascade alone)."""
    command = [sys.executable, "-m", "jobs.bench", "--size", args.size, "--threads", str(args.workers), "--mode",
               args.mode, "--tile", str(args.tile), "--no-psnr", "--json"]
    if args.weights:
        command += ["--weights", args.weights]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["mp_per_s"])


def _store_used() -> int:
    """Bytes in the local object store now (plasma), from Ray's memory summary."""
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    for line in text.splitlines():
        if "Plasma memory usage" in line:
            return int(float(line.split("Plasma memory usage")[1].split("MiB")[0]) * 1024**2)
    return 0


def _batch(folder: Path, style: Path, out: Path, args: argparse.Namespace) -> tuple[float, float, int]:
    """(mean pair seconds, job seconds, peak object-store bytes) of one batch run."""
    argv = ["--input", str(folder), "--style", str(style), "--output", str(out), "--mode", args.mode,
            "--tile", str(args.tile), "--workers", str(args.workers), "--cpus-per-worker", "1",
            "--max-in-flight", str(max(2, args.copies)), "--batch-images", str(args.batch_images),
            "--progress-seconds", "30"]
    if args.weights:
        argv += ["--weights", args.weights]
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            peak[0] = max(peak[0], _store_used())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        if stylize_main(argv) != 0:
            raise SystemExit("the batch job failed; see its log above")
    finally:
        stop.set()
        sampler.join()
    rows = read_manifest(str(out)).to_pylist()
    ends = [r["finished_at"].timestamp() for r in rows]
    starts = [end - r["seconds"] for end, r in zip(ends, rows, strict=True)]
    return statistics.mean(r["seconds"] for r in rows), max(ends) - min(starts), peak[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", help="content image (default: a generated 3840x2160 JPEG)")
    p.add_argument("--size", default=None, help="WxH of a generated photo instead (e.g. 640x480)")
    p.add_argument("--mode", default="exact", help="cascade mode of both sides (default exact)")
    p.add_argument("--batch-images", type=int, default=4, help="B: images of one tile per actor call")
    p.add_argument("--weights", default=None, help="weights URI (default: $ULTRASTYLE_WEIGHTS or the official files)")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--workers", type=int, default=2, help="CPU actors, and the in-process engine's threads")
    p.add_argument("--copies", type=int, default=1, help="images in the batch (several in flight)")
    p.add_argument("--repeats", type=int, default=2, help="A B rounds (medians are reported)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ultrastyle-throughput-"))
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False)
    try:
        folder = work / "in"
        folder.mkdir()
        image = folder / ("content" + (Path(args.image).suffix if args.image else ".jpg"))
        if args.image:
            shutil.copyfile(args.image, image)
        elif args.size:
            width, height = (int(v) for v in args.size.lower().split("x"))
            photo_file(str(image), width, height)
        else:
            _content(image, (3840, 2160))
        images = [image]
        for i in range(1, args.copies):
            images.append(folder / f"copy{i}{image.suffix}")
            shutil.copyfile(image, images[-1])
        style = work / "style.png"
        paint_style().save(style)
        with Image.open(image) as img:
            megapixels = img.width * img.height / 1e6
        print(f"content {img.width}x{img.height} ({megapixels:.2f} MP) x {args.copies}, tile {args.tile}, "
              f"{args.workers} workers")
        a_runs, pair_runs, job_runs, peaks, bench_rates = [], [], [], [], []
        for r in range(args.repeats):
            local = work / f"local{r}"
            local.mkdir()
            a_runs.append(_in_process(images, style, local, args))
            print(f"A{r + 1} in-process: {a_runs[-1]:.1f} s -> {megapixels * args.copies / a_runs[-1]:.3f} MP/s",
                  flush=True)
            if args.size:
                bench_rates.append(_bench(args))
                print(f"C{r + 1} ultrastyle bench --size {args.size}: {bench_rates[-1]:.3f} MP/s", flush=True)
            pair, job, peak = _batch(folder, style, work / f"out{r}", args)
            pair_runs.append(pair)
            job_runs.append(job)
            peaks.append(peak)
            print(f"B{r + 1} batch: pair {pair:.1f} s, job {job:.1f} s -> {megapixels * args.copies / job:.3f} MP/s; "
                  f"object store peak {peak / 2**20:.0f} MiB", flush=True)
        a, pair, job = statistics.median(a_runs), statistics.median(pair_runs), statistics.median(job_runs)
        total_mp = megapixels * args.copies
        print(f"median A {a:.1f} s ({total_mp / a:.3f} MP/s); B pair {pair:.1f} s, job {job:.1f} s "
              f"({total_mp / job:.3f} MP/s)")
        print(f"B/A: job rate {100 * a / job:.1f} % of in-process; pair time {100 * pair / (a / args.copies):.1f} % "
              f"of one in-process image")
        if bench_rates:
            bench = statistics.median(bench_rates)
            print(f"B/C: job rate {100 * total_mp / job / bench:.1f} % of ultrastyle bench ({bench:.3f} MP/s)")
        print(f"object store peak: {max(peaks) / 2**20:.0f} MiB = {max(peaks) / (total_mp * 1e6):.1f} bytes "
              f"per pixel of the {args.copies} image(s)")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
