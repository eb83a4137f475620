"""The encoders and decoders of one weight set, loaded once and moved to one device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from models import Decoder, Encoder, WeightsError, WeightSet, resolve_weights, small_decoder, small_encoder
from pipeline.engine.device import resolve_device
from pipeline.engine.precision import DEFAULT_PRECISION, Precision, apply_precision, model_dtype
from pipeline.options import OptionError, StyleOptions

__all__ = ["CASCADE", "DEFAULT_TILE_BATCH", "ModelSet", "check_cascade_levels", "load_model_set", "load_models"]

# Levels in the order the cascade applies them (coarse style first, as in WCT).
CASCADE = (5, 4, 3, 2, 1)
# Equal-size tile regions per network call, by device type, when the caller does not say.
# On the CPU one tile already fills the cores and batching measured no faster (docs/benchmarks.md); on a GPU
# one tile of the small networks leaves most of it idle.
DEFAULT_TILE_BATCH = {"cpu": 1, "cuda": 4}


@dataclass
class ModelSet:
    """Encoder and decoder per level, in eval mode on ``device``, weights in ``precision``'s dtype.

    Attributes:
        tile_batch: most equal-size tile regions the tiled executors put through a network in
            one call (:func:`pipeline.engine.tiled.map_batched`).
    """

    encoders: dict[int, Encoder]
    decoders: dict[int, Decoder]
    model_id: str
    device: torch.device
    precision: Precision = DEFAULT_PRECISION
    tile_batch: int = 1

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
    precision: Precision = DEFAULT_PRECISION,
    tile_batch: int | None = None,
) -> ModelSet:
    """Resolve ``weights`` (see :func:`models.resolve_weights`) and load every level's pair.

    Args:
        weights: a ``--weights`` URI, a resolved :class:`~models.WeightSet`, or ``None`` for
            ``$ULTRASTYLE_WEIGHTS`` or the embedded CD 16x files.
        levels: which levels to load; must all be in the weight set. By default all of
            :data:`CASCADE`, which the stylize cascade needs: a weight set without them is
            refused rather than quietly stylizing with fewer levels.
        device: where the modules live: ``auto`` (CUDA when torch sees a GPU), ``cpu``,
            ``cuda``, ``cuda:N`` or a :class:`torch.device`, resolved by
            :func:`~pipeline.engine.device.resolve_device`.
        storage_options: passed to the weights' filesystem.
        precision: one of :data:`~pipeline.engine.precision.PRECISIONS` (``--precision``): the
            modules are cast to its dtype, and this process's TF32 switches are set for it
            (:func:`~pipeline.engine.precision.apply_precision`), since they belong to the process.
        tile_batch: tile regions per network call in the tiled executors; ``None``:
            :data:`DEFAULT_TILE_BATCH` for the device. Memory grows with it.

    Raises:
        WeightsError: ``levels`` is not given and the weight set lacks some of levels 1-5.
        OptionError: ``precision`` is not a known mode, ``tile_batch`` is less than 1, or
            ``device`` is not a device form or asks for CUDA where there is none.
    """
    dtype = model_dtype(precision)
    device = torch.device(resolve_device(device))
    tile_batch = DEFAULT_TILE_BATCH.get(device.type, 1) if tile_batch is None else tile_batch
    if tile_batch < 1:
        raise OptionError("tile_batch", f"must be at least 1, got {tile_batch}")
    wset = weights if isinstance(weights, WeightSet) else resolve_weights(weights, storage_options)
    if levels is None:
        check_cascade_levels(wset, weights if isinstance(weights, str) else wset.model_id)
    levels = tuple(k for k in CASCADE if k in (levels or wset.levels))
    encoders = {k: small_encoder(k, weights=wset, storage_options=storage_options) for k in levels}
    decoders = {k: small_decoder(k, weights=wset, storage_options=storage_options) for k in levels}
    for module in (*encoders.values(), *decoders.values()):
        # channels_last: oneDNN's and cuDNN's fast layout for 3x3 convs (1.5-2x on CPU here).
        module.to(device, dtype, memory_format=torch.channels_last).requires_grad_(False)
    apply_precision(precision)
    return ModelSet(encoders, decoders, wset.model_id, device, precision, tile_batch)


def load_models(options: StyleOptions) -> ModelSet:
    """The model set ``options`` asks for: its weights, device, precision and tile batch
    (see :func:`load_model_set`)."""
    return load_model_set(options.weights, device=options.device, storage_options=options.storage_options,
                          precision=options.precision, tile_batch=options.tile_batch)
