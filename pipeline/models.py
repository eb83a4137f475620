"""The encoders and decoders of one weight set, loaded once and moved to one device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from models import Decoder, Encoder, WeightSet, resolve_weights, small_decoder, small_encoder

__all__ = ["CASCADE", "ModelSet", "load_model_set"]

# Levels in the order the cascade applies them (coarse style first, as in WCT).
CASCADE = (5, 4, 3, 2, 1)


@dataclass
class ModelSet:
    """Encoder and decoder per level, in eval mode on ``device``."""

    encoders: dict[int, Encoder]
    decoders: dict[int, Decoder]
    model_id: str
    device: torch.device

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(k for k in CASCADE if k in self.encoders)


def load_model_set(
    weights: str | WeightSet | None = None,
    *,
    levels: tuple[int, ...] | None = None,
    device: str | torch.device = "cpu",
    storage_options: dict[str, Any] | None = None,
) -> ModelSet:
    """Resolve ``weights`` (see :func:`models.resolve_weights`) and load every level's pair.

    Args:
        weights: a ``--weights`` URI, a resolved :class:`~models.WeightSet`, or ``None`` for
            ``$ULTRASTYLE_WEIGHTS`` or the embedded CD 16x files.
        levels: which levels to load (default: every level the weight set has, so a bundle
            distilled for some levels stylizes with those); must all be in the weight set.
        device: where the modules live.
        storage_options: passed to the weights' filesystem.
    """
    wset = weights if isinstance(weights, WeightSet) else resolve_weights(weights, storage_options)
    levels = tuple(k for k in CASCADE if k in (levels or wset.levels))
    device = torch.device(device)
    encoders = {k: small_encoder(k, weights=wset, storage_options=storage_options) for k in levels}
    decoders = {k: small_decoder(k, weights=wset, storage_options=storage_options) for k in levels}
    for module in (*encoders.values(), *decoders.values()):
        # channels_last: oneDNN's and cuDNN's fast layout for 3x3 convs (1.5-2x on CPU here).
        module.to(device, memory_format=torch.channels_last).requires_grad_(False)
    return ModelSet(encoders, decoders, wset.model_id, device)
