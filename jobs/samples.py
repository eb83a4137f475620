"""Sample images the project makes itself, for the embedded default run and the documentation.

Content photos are public-domain images that scikit-image ships in its package; the style is
painted here from a fixed seed (thick strokes of a warm-cool palette, softened), so the demo
needs no download and no third-party artwork.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["CONTENT_SAMPLES", "paint_style", "skimage_photo", "write_samples"]

CONTENT_SAMPLES = ("chelsea.png", "coffee.png", "astronaut.png")
_PALETTE = [(214, 69, 65), (242, 169, 59), (39, 90, 145), (242, 228, 196), (31, 46, 66), (102, 160, 155)]


def paint_style(size: int = 512, *, height: int | None = None, seed: int = 7) -> Image.Image:
    """A deterministic brush-stroke painting ``size`` pixels wide and ``height`` (default ``size``) high."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, height or size), _PALETTE[3])
    draw = ImageDraw.Draw(img)
    for _ in range(900):
        x, y = rng.uniform(0, 1, 2) * img.size
        angle = rng.normal(0.6, 0.5)
        length = rng.uniform(size / 40, size / 8)
        dx, dy = length * np.cos(angle), length * np.sin(angle)
        colour = _PALETTE[rng.integers(len(_PALETTE))]
        jitter = rng.integers(-18, 19, 3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter, strict=True))
        draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=fill, width=int(rng.uniform(3, size / 40)))
    return img.filter(ImageFilter.SMOOTH_MORE)


def skimage_photo(name: str) -> Path:
    """Path of a photo that scikit-image ships in its package (``skimage/data/<name>``), no download."""
    import skimage

    path = Path(skimage.__file__).parent / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"scikit-image ships no {name} in {path.parent}")
    return path


def write_samples(root: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<root>/content/*.png`` and ``<root>/style/strokes.png``; returns both folders."""
    content, style = Path(root) / "content", Path(root) / "style"
    content.mkdir(parents=True, exist_ok=True)
    style.mkdir(parents=True, exist_ok=True)
    for name in CONTENT_SAMPLES:
        shutil.copyfile(skimage_photo(name), content / name)
    paint_style().save(style / "strokes.png")
    return content, style
