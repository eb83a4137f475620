"""``ultrastyle bench``: megapixels per second, peak memory and fidelity of the cascade.

Runs the engine on a generated photo-like image of the requested size (made band by band, so
the generator itself never holds a float copy), or on ``--content``, against the project's
painted sample style, on ``--device`` in ``--precision``, and reports seconds per level
(the device synchronized at each level's end), megapixels per second, the peak resident memory
of the process tree (sampled every 50 ms, and the kernel's own high-water mark of this
process), on CUDA the peak GPU memory allocated, and the PSNR of the result against the fp32
whole-image result on the same input (computed after the timed run; ``--no-psnr`` skips it).
Run each configuration in a fresh process: the peak is per process. ``--warmup N`` runs the
cascade N times untimed first: a GPU's first calls load kernels and create library handles,
which would otherwise be counted in a run that takes milliseconds.

That measures the cascade alone. From encoded file to encoded file, :func:`photo_file` makes
an input of any size from a real photo and ``scripts/bench_table.py --files`` runs
``ultrastyle stylize`` on it under ``/usr/bin/time -v``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from dataclasses import replace

import numpy as np
import psutil
import pyvips
import torch

from jobs.flags import default, flag_message, options_from
from pipeline.engine.device import resolve_device
from pipeline.engine.models import load_models
from pipeline.engine.runner import LoadedImage, stylize_image, to_tensor
from pipeline.engine.tiled import read_rgb
from pipeline.errors import one_line_error
from pipeline.imaging.canvas import Canvas
from pipeline.imaging.imageio import MIN_SIDE, read_image
from pipeline.options import MODES, PRECISIONS, OptionError, StyleOptions

__all__ = ["LevelClock", "PeakMemory", "build_parser", "main", "photo_file", "psnr8", "synthetic_image"]

PROG = "ultrastyle bench"


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two ``(H, W, 3)`` images in [0, 1] after rounding both to 8 bits (``inf`` when equal)."""
    qa, qb = np.round(np.clip(a, 0, 1) * 255), np.round(np.clip(b, 0, 1) * 255)
    mse = float(((qa - qb) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def photo_file(path: str, width: int, height: int, *, seed: int = 0) -> None:
    """Write a ``width`` x ``height`` JPEG (quality 92) or PNG (by ``path``'s extension) of a real photo.

    scikit-image's coffee photo, resized by libvips with a cubic kernel, plus fine Gaussian
    grain (sigma 6 levels) so the file compresses like a photo rather than a smooth blow-up
    (a 12000x8000 JPEG is about 33 MB, the PNG about 260 MB). libvips streams the resize into
    the encoder, so a gigapixel file is made in constant memory.
    """
    from skimage import data

    photo = pyvips.Image.new_from_array(np.ascontiguousarray(data.coffee())).copy(interpretation="srgb")
    big = photo.resize(width / photo.width, vscale=height / photo.height, kernel="cubic")
    grain = pyvips.Image.gaussnoise(width, height, sigma=6, mean=0, seed=seed)
    image = (big + grain.bandjoin([grain, grain])).cast("uchar").copy(interpretation="srgb")
    if path.lower().endswith(".png"):
        image.pngsave(path, compression=3)
    else:
        image.jpegsave(path, Q=92)


def synthetic_image(height: int, width: int, *, seed: int = 0, band: int = 512) -> np.ndarray:
    """A deterministic ``(H, W, 3)`` uint8 image with smooth gradients, edges and texture."""
    rng = np.random.default_rng(seed)
    freqs = rng.uniform(0.5, 6.0, (3, 4)) * 2 * np.pi
    phases = rng.uniform(0, 2 * np.pi, (3, 4))
    out = np.empty((height, width, 3), np.uint8)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    for y0 in range(0, height, band):
        y = np.linspace(y0 / height, min(y0 + band, height) / height, min(band, height - y0), dtype=np.float32)
        y = y[:, None]
        for c in range(3):
            v = 0.5 + 0.12 * sum(np.sin(freqs[c, i] * (x + (i % 2) * y) + phases[c, i]) for i in range(4))
            v = v + 0.15 * (np.sin(40 * x * (1 + c)) * np.cos(37 * y) > 0.6)
            v = v + rng.normal(0, 0.03, v.shape).astype(np.float32)
            out[y0 : y0 + y.shape[0], :, c] = np.clip(v * 255, 0, 255).astype(np.uint8)
    return out


class PeakMemory:
    """Samples the resident memory of this process and its children in a background thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        kernel_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = max(self.peak, kernel_peak)


class LevelClock:
    """An ``on_level`` callback that times each level itself, after waiting for ``device``.

    CUDA kernels run asynchronously, so the engine's own per-level seconds would count only
    the launch; synchronizing at each level's end makes the interval the level's device time.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[int, float] = {}
        self._last = time.perf_counter()

    def start(self) -> None:
        self._last = time.perf_counter()

    def __call__(self, level: int, _seconds: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[level] = round(now - self._last, 3)
        self._last = now


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="3840x2160", help="WxH of the generated content image")
    p.add_argument("--content", default=None, help="bench this image instead of a generated one (--size ignored)")
    p.add_argument("--mode", choices=MODES, default="exact")
    p.add_argument("--tile", type=int, default=default(StyleOptions, "tile"))
    p.add_argument("--weights", default=default(StyleOptions, "weights"),
                   help="weights location (default: $ULTRASTYLE_WEIGHTS or embedded)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--device", default=default(StyleOptions, "device"), metavar="auto|cpu|cuda[:N]",
                   help="where the networks run (default auto: CUDA when torch sees a GPU, else the CPU)")
    p.add_argument("--precision", choices=PRECISIONS, default=default(StyleOptions, "precision"),
                   help="arithmetic of the networks (see ultrastyle stylize --help; default fp32)")
    p.add_argument("--tile-batch", type=int, default=default(StyleOptions, "tile_batch"),
                   help="equal-size tile regions per network call (default: 1 on cpu, 4 on cuda)")
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed runs of the cascade before the timed one (default 0; 1 on a GPU, whose first "
                   "calls load kernels)")
    p.add_argument("--no-psnr", dest="psnr", action="store_false",
                   help="skip the fp32 whole-image reference run (it needs the whole image's activations in memory)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def _check(args: argparse.Namespace) -> tuple[StyleOptions, int, int]:
    """The options (device resolved) and the image size to generate.

    Raises:
        OptionError: a bad option flag, or ``--device cuda`` without a GPU.
        ValueError: a bad ``--size`` or ``--warmup``.
    """
    if args.warmup < 0:
        raise ValueError(f"--warmup cannot be negative, got {args.warmup}")
    options = options_from(StyleOptions, args)
    options = replace(options, device=resolve_device(options.device))
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"--size must be WxH in pixels, e.g. 3840x2160, got {args.size!r}") from e
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"--size must be at least {MIN_SIDE} px a side, got {args.size!r}")
    return options, width, height


def _result(image: LoadedImage, canvas: Canvas) -> np.ndarray:
    """The image part of a result canvas, ``(H, W, 3)`` float32; closes the canvas."""
    out = read_rgb(canvas, image.height, image.width)
    canvas.close()
    return out


def main(argv: list[str] | None = None) -> int:
    from jobs.samples import paint_style
    from pipeline.engine.cascade import style_statistics

    args = build_parser().parse_args(argv)
    try:
        options, width, height = _check(args)
    except ValueError as e:
        print(f"{PROG}: error: {flag_message(e) if isinstance(e, OptionError) else e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.content:
        try:
            image = read_image(args.content)
        except (OSError, ValueError) as e:
            print(f"{PROG}: error: --content {args.content}: {one_line_error(e)}", file=sys.stderr)
            return 1
        width, height = image.width, image.height
    else:
        image = LoadedImage(synthetic_image(height, width))
    style_rgb = to_tensor(np.asarray(paint_style(), np.float32) / 255.0)
    models = load_models(options)
    device = models.device
    style = style_statistics(style_rgb, models)
    for _ in range(args.warmup):
        with tempfile.TemporaryDirectory(prefix="ultrastyle-bench-") as workdir:
            canvas, _ = stylize_image(image, style, models, mode=options.mode, tile=options.tile, workdir=workdir)
            canvas.close()
    clock = LevelClock(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with PeakMemory() as memory, tempfile.TemporaryDirectory(prefix="ultrastyle-bench-") as workdir:
        start = time.perf_counter()
        clock.start()
        canvas, report = stylize_image(image, style, models, mode=options.mode, tile=options.tile, workdir=workdir,
                                       on_level=clock)
        wall = time.perf_counter() - start
        result = _result(image, canvas) if args.psnr else None
    gpu_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    psnr = None
    if args.psnr:
        # The yardstick: fp32 (TF32 off) on the whole image, same device, same input and style.
        reference_models = load_models(replace(options, precision="fp32"))
        reference_style = style_statistics(style_rgb, reference_models)
        with tempfile.TemporaryDirectory(prefix="ultrastyle-bench-") as workdir:
            canvas, _ = stylize_image(image, reference_style, reference_models, mode="whole", workdir=workdir)
            psnr = psnr8(result, _result(image, canvas))
    summary = {
        "size": f"{width}x{height}",
        "megapixels": round(width * height / 1e6, 2),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": options.precision,
        "mode": report.mode,
        "tile": None if report.mode == "whole" else options.tile,
        "tiles": report.tiles,
        "tile_batch": models.tile_batch,
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "seconds": round(wall, 3),
        "mp_per_s": float(f"{width * height / 1e6 / wall:.4g}"),
        "level_seconds": clock.seconds,
        "peak_rss_gib": round(memory.peak / 2**30, 2),
        "peak_gpu_gib": None if gpu_peak is None else round(gpu_peak / 2**30, 3),
        "psnr_vs_fp32_whole": None if psnr is None else (round(psnr, 2) if np.isfinite(psnr) else "inf"),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        gpu = "" if gpu_peak is None else f", peak GPU {summary['peak_gpu_gib']} GiB"
        print(
            f"{summary['size']} {summary['mode']} {summary['precision']} on {summary['device']} "
            f"tile={summary['tile']} tiles={summary['tiles']}: {summary['seconds']} s, {summary['mp_per_s']} MP/s, "
            f"peak RSS {summary['peak_rss_gib']} GiB{gpu}, PSNR vs fp32 whole {summary['psnr_vs_fp32_whole']} dB, "
            f"per level {summary['level_seconds']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
