"""Make ``docs/controls.jpg``: the creative controls on the project's sample images.

Top row: the content (scikit-image's ``chelsea.png``), style A (the painted strokes of
``jobs/samples.py``), style B (scikit-image's ``hubble_deep_field.jpg``, NASA, public domain)
and the plain result with style A. Bottom row: ``--preserve-color`` with style A,
``--style-weights 0.5,0.5``, the mask (dark: value 0 picks A, light: value 1 picks B) and ``--mask`` with A and B.
Every picture is the engine's exact tiled mode at tile 128 (several tiles, same result as the
whole image).

Usage: ``python scripts/controls_figure.py [--weights URI]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import skimage
from PIL import Image, ImageDraw

from jobs.samples import write_samples
from pipeline.engine.controls import mask_canvas, style_levels
from pipeline.engine.models import load_model_set
from pipeline.engine.runner import load_style
from pipeline.engine.tiled import canvas_from_array, read_rgb, stylize_exact
from pipeline.imaging.imageio import read_image

DOCS = Path(__file__).resolve().parents[1] / "docs"
CELL_HEIGHT = 200
TILE = 128


def _cell(rgb: np.ndarray, caption: str) -> Image.Image:
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
    img = img.resize((round(img.width * CELL_HEIGHT / img.height), CELL_HEIGHT), Image.LANCZOS)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, CELL_HEIGHT - 18, img.width, CELL_HEIGHT), fill="white")
    draw.text((4, CELL_HEIGHT - 15), caption, fill="black")
    return img


def _grid(rows: list[list[Image.Image]], gap: int = 6) -> Image.Image:
    width = max(sum(c.width for c in row) + gap * (len(row) - 1) for row in rows)
    out = Image.new("RGB", (width, len(rows) * (CELL_HEIGHT + gap) - gap), "white")
    for r, row in enumerate(rows):
        x = 0
        for cell in row:
            out.paste(cell, (x, r * (CELL_HEIGHT + gap)))
            x += cell.width + gap
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    models = load_model_set(args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        content_dir, style_dir = write_samples(tmp)
        rgb = read_image(str(content_dir / "chelsea.png")).rgb
        style_uris = [str(style_dir / "strokes.png"), str(Path(skimage.__file__).parent / "data" /
                                                          "hubble_deep_field.jpg")]
        styles = [load_style(uri, models, style_size=512) for uri in style_uris]
        style_pixels = [read_image(uri).rgb for uri in style_uris]
    h, w = rgb.shape[:2]
    y, x = np.mgrid[:h, :w]
    labels = (x > w * 0.35 + 0.4 * y).astype(np.int64)

    def run(levels, **controls) -> np.ndarray:
        canvas = canvas_from_array(rgb, workdir=None)
        return read_rgb(stylize_exact(canvas, levels, models, tile=TILE, **controls), h, w)

    mask = mask_canvas(labels, styles=2, workdir=None)
    top = [_cell(rgb, "content"), _cell(style_pixels[0], "style A"), _cell(style_pixels[1], "style B"),
           _cell(run(styles[0]), "A")]
    bottom = [
        _cell(run(styles[0], preserve_color=True), "A, --preserve-color"),
        _cell(run(style_levels(styles, weights=(0.5, 0.5))), "--style-weights 0.5,0.5"),
        _cell(np.repeat(0.25 + 0.5 * labels[..., None], 3, axis=2), "mask (0: A, 1: B)"),
        _cell(run(style_levels(styles, masked=True), mask=mask), "--mask (A | B)"),
    ]
    DOCS.mkdir(exist_ok=True)
    _grid([top, bottom]).save(DOCS / "controls.jpg", quality=85, optimize=True)


if __name__ == "__main__":
    main()
