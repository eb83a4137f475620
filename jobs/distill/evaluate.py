"""Held-out evaluation of the distillation job: reconstruction PSNR per level of any weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from models import Decoder, Encoder, WeightSet, small_decoder, small_encoder
from models.losses import reconstruction_psnr

__all__ = ["evaluate_levels", "reconstruction_rows", "weight_set_psnr"]


def evaluate_levels(
    encoders: Mapping[int, Encoder], decoders: Mapping[int, Decoder], images: Sequence[torch.Tensor]
) -> dict[int, float]:
    """Held-out reconstruction PSNR (dB) per level: ``mean_x PSNR(D_k(E_k(x)), x)``.

    Args:
        encoders, decoders: level -> module, the same levels in both.
        images: ``(1, 3, H, W)`` float32 in [0, 1], H and W multiples of 16.
    """
    return {k: reconstruction_psnr(encoders[k].eval(), decoders[k].eval(), images) for k in sorted(encoders)}


def weight_set_psnr(
    wset: WeightSet, images: Sequence[torch.Tensor], *, storage_options: dict[str, Any] | None = None
) -> dict[int, float]:
    """:func:`evaluate_levels` for every level of a published weight set (loaded hash-checked)."""
    encoders = {k: small_encoder(k, weights=wset, storage_options=storage_options) for k in wset.levels}
    decoders = {k: small_decoder(k, weights=wset, storage_options=storage_options) for k in wset.levels}
    return evaluate_levels(encoders, decoders, images)


def reconstruction_rows(
    pairs: Mapping[str, tuple[Mapping[int, Encoder], Mapping[int, Decoder]]], image: torch.Tensor
) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """Rows for :func:`jobs.distill.figures.render_reconstructions`: per model (row label ->
    encoders, decoders), the input then ``D_k(E_k(image))`` for each of its levels."""
    with torch.inference_mode():
        return {
            name: [("input", image)] + [(f"L{k}", decoders[k](encoders[k](image))) for k in sorted(encoders)]
            for name, (encoders, decoders) in pairs.items()
        }
