"""PSNR of the tiled modes against the whole-image result on one photo.

Usage: ``python scripts/fidelity.py CONTENT STYLE [--weights URI] [--tile N] [--stroke-scale S]
[--modes exact,thumbnail]``. Prints 8-bit PSNR (dB) of each tiled mode against whole mode, at the
stroke scale given (1: the plain cascade).
"""

from __future__ import annotations

import argparse

import numpy as np

from pipeline.engine.models import load_model_set
from pipeline.engine.runner import load_style, stylize_image
from pipeline.engine.tiled import read_rgb
from pipeline.imaging.imageio import read_image
from pipeline.options import check_stroke_scale


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((np.round(a * 255) - np.round(b * 255)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("content")
    parser.add_argument("style")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--stroke-scale", default="1", help="an integer S or auto (default 1)")
    parser.add_argument("--modes", default="exact,thumbnail", help="tiled modes to compare (default exact,thumbnail)")
    args = parser.parse_args()
    scale = check_stroke_scale(args.stroke_scale)
    modes = args.modes.split(",")
    models = load_model_set(args.weights)
    style = load_style(args.style, models)
    image = read_image(args.content)
    results = {}
    for mode in ("whole", *modes):
        canvas, _ = stylize_image(image, style, models, mode=mode, tile=args.tile, stroke_scale=scale)
        results[mode] = read_rgb(canvas, image.height, image.width)
    for mode in modes:
        print(f"{mode} vs whole: {psnr8(results[mode], results['whole']):.1f} dB PSNR, "
              f"max abs difference {np.abs(results[mode] - results['whole']).max():.2e}")


if __name__ == "__main__":
    main()
