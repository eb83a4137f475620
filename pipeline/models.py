"""The encoders and decoders of one weight set, loaded once and moved to one device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from models import Decoder, Encoder, WeightsError, WeightSet, resolve_weights, small_decoder, small_encoder

__all__ = ["CASCADE", "ModelSet", "check_cascade_levels", "load_model_set"]

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


def check_cascade_levels(wset: WeightSet, name: str) -> None:
    """Refuse a weight set that lacks some of levels 1-5, which the stylize cascade needs.

    Raises:
        WeightsError: one line naming ``--weights`` and the levels the set has.
    """
    if set(wset.levels) != set(CASCADE):
        have = ",".join(map(str, wset.levels)) or "none"
        raise WeightsError(
            f"--weights {name} ({wset.model_id}) has levels {have}; the stylize cascade needs encoders and decoders "
            "for levels 1,2,3,4,5"
        )


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
        levels: which levels to load; must all be in the weight set. By default all of
            :data:`CASCADE`, which the stylize cascade needs: a weight set without them is
            refused rather than quietly stylizing with fewer levels.
        device: where the modules live.
        storage_options: passed to the weights' filesystem.

    Raises:
        WeightsError: ``levels`` is not given and the weight set lacks some of levels 1-5.
    """
    wset = weights if isinstance(weights, WeightSet) else resolve_weights(weights, storage_options)
    if levels is None:
        check_cascade_levels(wset, weights if isinstance(weights, str) else wset.model_id)
    levels = tuple(k for k in CASCADE if k in (levels or wset.levels))
    device = torch.device(device)
    encoders = {k: small_encoder(k, weights=wset, storage_options=storage_options) for k in levels}
    decoders = {k: small_decoder(k, weights=wset, storage_options=storage_options) for k in levels}
    for module in (*encoders.values(), *decoders.values()):
        # channels_last: oneDNN's and cuDNN's fast layout for 3x3 convs (1.5-2x on CPU here).
        module.to(device, memory_format=torch.channels_last).requires_grad_(False)
    return ModelSet(encoders, decoders, wset.model_id, device)
