"""The run folder's figures (loss curves, held-out PSNR curves, reconstructions) as PNG bytes, drawn with Pillow."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["render_loss_curves", "render_psnr_curves", "render_reconstructions"]

_PANEL = (360, 220)
_MARGIN = 36


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _draw_curve(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, values: Sequence[float]) -> None:
    """One panel: the per-step values (light) and their moving average (dark), log-scaled."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(160, 160, 160))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    if len(finite) < 2:
        return
    lo, hi = math.log10(min(finite)), math.log10(max(finite))
    span = hi - lo or 1.0

    def points(series: Sequence[float]) -> list[tuple[float, float]]:
        n = len(series) - 1
        return [(x0 + (x1 - x0) * i / n, y1 - (y1 - y0) * (math.log10(v) - lo) / span) for i, v in enumerate(series)]

    draw.line(points(finite), fill=(174, 199, 232), width=1)
    draw.line(points(_moving_average(finite, max(1, len(finite) // 20))), fill=(31, 119, 180), width=2)
    draw.text((x0 + 4, y0 + 2), f"{10**hi:.4g}", fill=(90, 90, 90))
    draw.text((x0 + 4, y1 - 12), f"{10**lo:.4g}", fill=(90, 90, 90))
    draw.text((x1 - 70, y1 + 2), f"{len(values)} steps", fill=(90, 90, 90))


def _draw_psnr(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, points: Sequence) -> None:
    """One panel: held-out PSNR (dB, linear scale) against the step, the start marked."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(160, 160, 160))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    finite = [(float(s), float(v)) for s, v in points if math.isfinite(v)]
    if len(finite) < 2:
        return
    lo, hi = min(v for _, v in finite), max(v for _, v in finite)
    span, last = (hi - lo) or 1.0, finite[-1][0] or 1.0
    xy = [(x0 + (x1 - x0) * s / last, y1 - (y1 - y0) * (v - lo) / span) for s, v in finite]
    draw.line(xy, fill=(44, 160, 44), width=2)
    for x, y in xy:
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(44, 160, 44))
    draw.text((x0 + 4, y0 + 2), f"{hi:.2f} dB", fill=(90, 90, 90))
    draw.text((x0 + 4, y1 - 12), f"{lo:.2f} dB", fill=(90, 90, 90))
    draw.text((x1 - 70, y1 + 2), f"{int(last)} steps", fill=(90, 90, 90))


def _panels(items: Mapping[str, Sequence], draw_panel, columns: int) -> bytes:
    rows = max(1, math.ceil(len(items) / columns))
    w, h = _PANEL
    img = Image.new("RGB", (columns * w, rows * h), "white")
    draw = ImageDraw.Draw(img)
    for i, (title, values) in enumerate(items.items()):
        left, top = (i % columns) * w, (i // columns) * h
        draw_panel(draw, (left + _MARGIN, top + _MARGIN, left + w - 12, top + h - _MARGIN), title, values)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def render_loss_curves(curves: Mapping[str, Sequence[float]], *, columns: int = 3) -> bytes:
    """A PNG with one panel per stage: its total loss per step (and moving average), log scale.

    Args:
        curves: stage title -> loss per step, in stage order.
    """
    return _panels(curves, _draw_curve, columns)


def render_psnr_curves(curves: Mapping[str, Sequence[Sequence[float]]], *, columns: int = 2) -> bytes:
    """A PNG with one panel per stage: its held-out PSNR at its start and every evaluation.

    Args:
        curves: stage title -> ``[step, dB]`` pairs, in stage order.
    """
    return _panels(curves, _draw_psnr, columns)


def render_reconstructions(rows: Mapping[str, Sequence[tuple[str, torch.Tensor]]]) -> bytes:
    """A PNG grid: one row per model (e.g. teacher, student), one labelled tile per column.

    Args:
        rows: row label -> ``(column label, (1, 3, H, W) float32 in [0, 1])`` pairs, all the
            same size.
    """
    tiles = [t for row in rows.values() for _, t in row]
    th, tw = tiles[0].shape[-2:]
    ncols = max(len(r) for r in rows.values())
    label_h = 14
    img = Image.new("RGB", (ncols * tw, len(rows) * (th + label_h)), "white")
    draw = ImageDraw.Draw(img)
    for r, (row_label, row) in enumerate(rows.items()):
        for c, (label, tile) in enumerate(row):
            arr = (tile[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            top = r * (th + label_h)
            img.paste(Image.fromarray(arr), (c * tw, top + label_h))
            draw.text((c * tw + 2, top + 1), f"{row_label} {label}", fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
