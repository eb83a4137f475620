"""jobs/distill/figures.py: the run folder's PNGs."""

from __future__ import annotations

import io

import torch
from PIL import Image

from jobs.distill.figures import render_loss_curves, render_reconstructions


def test_figures_are_pngs():
    curves = {"L1 student encoder": [1.0, 0.5, 0.25], "L1 student decoder": [0.1, 0.1]}
    assert render_loss_curves(curves)[:4] == b"\x89PNG"
    tile = torch.rand(1, 3, 32, 48)
    png = render_reconstructions({"teacher": [("input", tile), ("L1", tile)], "student": [("input", tile)]})
    assert Image.open(io.BytesIO(png)).size == (96, 2 * (32 + 14))
