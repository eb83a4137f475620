"""``ultrastyle bench``: megapixels per second and peak memory of the cascade.

Runs the engine on a generated photo-like image of the requested size (made band by band, so
the generator itself never holds a float copy) against the project's painted sample style,
and reports wall seconds per level, megapixels per second and the peak resident memory of the
process tree (sampled every 50 ms, and the kernel's own high-water mark of this process).
Run each configuration in a fresh process: the peak is per process.

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

import numpy as np
import psutil
import pyvips
import torch

from pipeline.engine import MODES, LoadedImage, stylize_image, to_tensor
from pipeline.models import load_model_set

__all__ = ["PeakMemory", "build_parser", "main", "photo_file", "synthetic_image"]


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ultrastyle bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="3840x2160", help="WxH of the generated content image")
    p.add_argument("--mode", choices=MODES, default="exact")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--weights", default=None, help="weights location (default: $ULTRASTYLE_WEIGHTS or embedded)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def main(argv: list[str] | None = None) -> int:
    from jobs.samples import paint_style

    args = build_parser().parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    models = load_model_set(args.weights)
    from pipeline.cascade import style_statistics

    style = style_statistics(to_tensor(np.asarray(paint_style(), np.float32) / 255.0), models)
    image = LoadedImage(synthetic_image(height, width))
    levels: dict[int, float] = {}
    with PeakMemory() as memory, tempfile.TemporaryDirectory(prefix="ultrastyle-bench-") as workdir:
        start = time.perf_counter()
        _, report = stylize_image(
            image, style, models, mode=args.mode, tile=args.tile, workdir=workdir,
            on_level=lambda level, s: levels.__setitem__(level, round(s, 2)),
        )
        wall = time.perf_counter() - start
    result = {
        "size": f"{width}x{height}",
        "megapixels": round(width * height / 1e6, 2),
        "mode": report.mode,
        "tile": None if report.mode == "whole" else args.tile,
        "tiles": report.tiles,
        "threads": torch.get_num_threads(),
        "seconds": round(wall, 2),
        "mp_per_s": round(width * height / 1e6 / wall, 3),
        "level_seconds": levels,
        "peak_rss_gib": round(memory.peak / 2**30, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['size']} {result['mode']} tile={result['tile']} tiles={result['tiles']}: "
            f"{result['seconds']} s, {result['mp_per_s']} MP/s, peak RSS {result['peak_rss_gib']} GiB, "
            f"per level {levels}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
