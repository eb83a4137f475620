"""Make ``docs/strokes.jpg``: one 96-megapixel output, plain and with ``--stroke-scale auto``.

Left column: ``ultrastyle stylize --tile 512`` as it is; right column: the same with
``--stroke-scale auto``. Top row: the whole 12000x8000 picture shrunk to the width of a
column (Lanczos), as it is seen on a screen, with the 1:1 crop's place outlined; bottom row:
that crop at full resolution. The input is the photo :func:`jobs.bench.photo_file` makes
(scikit-image's coffee, upscaled with fine grain), the style the project's painted sample
(:func:`jobs.samples.paint_style`). Only the views and the crop are decoded from the outputs.

Usage: ``python scripts/strokes_figure.py [--plain OUT --auto OUT] [--workdir DIR]``: with
``--plain`` and ``--auto`` (outputs of ``scripts/stroke_table.py --keep DIR``, ``out-plain.jpg``
and ``out-auto.jpg``) it only draws; without, it makes the photo and both outputs first (two
runs of several minutes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from jobs.bench import photo_file
from jobs.samples import paint_style
from pipeline.imaging.imageio import image_size, read_crops, read_view
from pipeline.imaging.tiles import Rect

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIZE = (12000, 8000)
COLUMN = 720  # px: the width of each column, and of the 1:1 crop
CROP_HEIGHT = 480
CAPTION = 22


def _outputs(workdir: str) -> tuple[str, str]:
    """Make the photo and stylize it plain and with ``--stroke-scale auto``."""
    photo, style = os.path.join(workdir, "photo.jpg"), os.path.join(workdir, "strokes.png")
    photo_file(photo, *SIZE)
    paint_style().save(style)
    outputs = []
    for name, flags in (("plain", ["--stroke-scale", "1"]), ("auto", ["--stroke-scale", "auto"])):
        out = os.path.join(workdir, f"out-{name}.jpg")
        subprocess.run([sys.executable, "-m", "jobs.cli", "stylize", photo, "--style", style, "--output", out,
                        "--tile", "512", *flags], check=True, env={**os.environ, "TMPDIR": workdir})
        outputs.append(out)
    return outputs[0], outputs[1]


def _image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))


def _captioned(img: Image.Image, caption: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + CAPTION), "white")
    out.paste(img, (0, CAPTION))
    ImageDraw.Draw(out).text((4, 5), caption, fill="black")
    return out


def _column(uri: str, label: str, crop: Rect) -> list[Image.Image]:
    width, height = image_size(uri)
    view = _image(read_view(uri, COLUMN))
    scale = view.width / width
    ImageDraw.Draw(view).rectangle((crop.x0 * scale, crop.y0 * scale, crop.x1 * scale, crop.y1 * scale),
                                   outline="white", width=2)
    [pixels] = read_crops(uri, [crop])
    return [_captioned(view, f"{label}: the whole {width}x{height} picture, shrunk to {view.width} px wide"),
            _captioned(_image(pixels), f"{label}: the outlined {crop.width}x{crop.height} px at 1:1")]


def draw(plain: str, auto: str, output: str) -> None:
    width, height = image_size(plain)
    y0, x0 = round(height * 0.45) - CROP_HEIGHT // 2, round(width * 0.55) - COLUMN // 2
    crop = Rect(y0, x0, y0 + CROP_HEIGHT, x0 + COLUMN)
    columns = [_column(plain, "plain", crop), _column(auto, "--stroke-scale auto", crop)]
    gap = 8
    heights = [max(col[r].height for col in columns) for r in range(2)]
    figure = Image.new("RGB", (2 * COLUMN + gap, sum(heights) + gap), "white")
    for c, col in enumerate(columns):
        y = 0
        for r, cell in enumerate(col):
            figure.paste(cell, (c * (COLUMN + gap), y))
            y += heights[r] + gap
    figure.save(output, quality=70, optimize=True)  # small enough for the README (< 400 KB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plain", default=None, help="the plain 12000x8000 output (made when not given)")
    parser.add_argument("--auto", default=None, help="the --stroke-scale auto output (made when not given)")
    parser.add_argument("--workdir", default=None, help="folder for the photo, outputs and canvases")
    parser.add_argument("--output", default=str(DOCS / "strokes.jpg"))
    args = parser.parse_args()
    if (args.plain is None) != (args.auto is None):
        parser.error("give both --plain and --auto, or neither")
    if args.plain is not None:
        draw(args.plain, args.auto, args.output)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="strokes-figure-") as folder:
        draw(*_outputs(folder), args.output)


if __name__ == "__main__":
    main()
