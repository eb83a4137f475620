"""Make the pictures of the README and docs/design.md from the project's own sample images.

- ``docs/demo.jpg``: content, style and result for each sample photo, made with
  ``ultrastyle stylize`` defaults (whole image, alpha 1).
- ``docs/seams.jpg``: a crop across a tile boundary, from the exact tiled engine (left) and
  from a naive per-tile run (right: every tile stylized alone with its own statistics and no
  halo), at tile 256.

Usage: ``python scripts/make_figures.py [--weights URI]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from jobs.samples import write_samples
from pipeline.engine.cascade import pad_to_multiple, stylize_tile, stylize_whole
from pipeline.engine.models import load_model_set
from pipeline.engine.runner import load_style, to_tensor
from pipeline.engine.tiled import canvas_from_array, read_rgb, stylize_exact
from pipeline.imaging.imageio import read_image
from pipeline.imaging.tiles import plan_tiles

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _u8(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))


def naive_tiles(rgb: np.ndarray, style, models, tile: int) -> np.ndarray:
    """Each tile alone: own statistics, no halo (what tiling without the exact engine gives)."""
    h, w = rgb.shape[:2]
    out = np.zeros_like(rgb)
    for t in plan_tiles(h, w, tile=tile):
        crop = to_tensor(rgb[t.core.y0 : min(t.core.y1, h), t.core.x0 : min(t.core.x1, w)])
        ch, cw = crop.shape[-2:]
        image = pad_to_multiple(crop)
        for level in models.levels:
            image = stylize_tile(image, models.encoders[level], models.decoders[level], style[level], alpha=1.0)
        out[t.core.y0 : t.core.y0 + ch, t.core.x0 : t.core.x0 + cw] = image[0, :, :ch, :cw].permute(1, 2, 0).numpy()
    return np.clip(out, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    models = load_model_set(args.weights)
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        content_dir, style_dir = write_samples(tmp)
        style_uri = str(style_dir / "strokes.png")
        style = load_style(style_uri, models)
        style_img = Image.open(style_uri).convert("RGB")
        rows = []
        for path in sorted(content_dir.iterdir()):
            rgb = read_image(str(path)).rgb
            out = stylize_whole(to_tensor(rgb), style, models)[0].permute(1, 2, 0).numpy()
            h = 300
            cells = [_u8(rgb), style_img, _u8(out)]
            cells = [c.resize((round(c.width * h / c.height), h), Image.LANCZOS) for c in cells]
            row = Image.new("RGB", (sum(c.width for c in cells) + 20, h), "white")
            x = 0
            for c in cells:
                row.paste(c, (x, 0))
                x += c.width + 10
            rows.append(row)
        demo = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + 10 * len(rows)), "white")
        y = 0
        for r in rows:
            demo.paste(r, (0, y))
            y += r.height + 10
        demo.save(DOCS / "demo.jpg", quality=88)

        rgb = read_image(str(content_dir / "astronaut.png")).rgb
        exact = read_rgb(stylize_exact(canvas_from_array(rgb, workdir=None), style, models, tile=256), 512, 512)
        naive = naive_tiles(rgb, style, models, tile=256)
        crop = (128, 128, 384, 384)  # centred on the corner where four 256-px tiles meet
        panels = [_u8(a).crop(crop).resize((384, 384), Image.NEAREST) for a in (exact, naive)]
        seams = Image.new("RGB", (384 * 2 + 10, 384 + 24), "white")
        draw = ImageDraw.Draw(seams)
        labels = ("exact tiled (tile 256)", "naive per-tile (tile 256)")
        for i, (panel, label) in enumerate(zip(panels, labels, strict=True)):
            seams.paste(panel, (i * 394, 24))
            draw.text((i * 394 + 4, 5), label, fill="black")
        seams.save(DOCS / "seams.jpg", quality=90)
        whole = stylize_whole(to_tensor(rgb), style, models)[0].permute(1, 2, 0).numpy()
        for name, img in (("exact", exact), ("naive", naive)):
            mse = ((np.round(img * 255) - np.round(whole * 255)) ** 2).mean()
            print(f"{name} vs whole: {10 * np.log10(255**2 / max(mse, 1e-12)):.1f} dB PSNR")


if __name__ == "__main__":
    main()
