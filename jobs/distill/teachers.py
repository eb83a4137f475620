"""Where the distillation teacher comes from: torchvision's VGG-19, the embedded CD 16x weights, or any
``--weights`` location."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from models import (
    VGG19,
    CD16xWeights,
    Decoder,
    Encoder,
    FamilySpec,
    WeightSet,
    resolve_weights,
    small_decoder,
    small_encoder,
)
from models.vgg import vgg19_decoder, vgg19_encoder

__all__ = ["EMBEDDED_TEACHER", "VGG19_TEACHER", "Teacher"]

VGG19_TEACHER = "torchvision-vgg19"
EMBEDDED_TEACHER = "cd16x"  # the CD 16x weights embedded in the package: no download


@dataclass(frozen=True)
class Teacher:
    """Where the teacher comes from: ``torchvision-vgg19[:random]``, ``cd16x`` or a weights URI.

    Args:
        source: ``torchvision-vgg19`` (ImageNet weights, downloaded by torchvision),
            ``torchvision-vgg19:random`` (untrained, for tests; built from ``seed`` so every
            worker holds the same one), ``cd16x`` (the CD 16x weights embedded in the
            package, with their decoders) or any ``--weights`` location.
        storage_options: for a weights URI.
        seed: initialisation seed of the random VGG-19.
    """

    source: str
    storage_options: dict[str, Any] | None = None
    seed: int = 0

    @property
    def is_vgg19(self) -> bool:
        return self.source == VGG19_TEACHER or self.source.startswith(f"{VGG19_TEACHER}:")

    @property
    def is_named(self) -> bool:
        """Whether ``source`` names a teacher rather than a location (not a path to resolve)."""
        return self.is_vgg19 or self.source == EMBEDDED_TEACHER

    @cached_property
    def weight_set(self) -> WeightSet | None:
        """The resolved weights of a URI teacher (``None`` for VGG-19), resolved once."""
        if self.is_vgg19:
            return None
        if self.source == EMBEDDED_TEACHER:
            return CD16xWeights.EMBEDDED.value
        return resolve_weights(self.source, self.storage_options)

    def family(self) -> FamilySpec:
        """Channel widths of the teacher."""
        return VGG19 if self.weight_set is None else self.weight_set.family

    def encoder(self, level: int) -> Encoder:
        """The teacher's encoder of ``level`` (frozen use: eval mode)."""
        if not self.is_vgg19:
            return small_encoder(level, weights=self.weight_set, storage_options=self.storage_options)
        variant = self.source.partition(":")[2]
        if variant not in ("", "random"):
            raise ValueError(f"teacher {self.source!r}: expected {VGG19_TEACHER} or {VGG19_TEACHER}:random")
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return vgg19_encoder(level, weights=None if variant == "random" else "DEFAULT", progress=False)

    def has_decoder(self, level: int) -> bool:
        """Whether the teacher comes with a decoder of ``level`` (else ``distill`` trains one)."""
        return self.weight_set is not None and f"{level}SD" in self.weight_set.files

    def decoder(self, level: int) -> Decoder | None:
        """The teacher's decoder of ``level``, or ``None`` when it must be trained first."""
        if not self.has_decoder(level):
            return None
        return small_decoder(level, weights=self.weight_set, storage_options=self.storage_options)

    def blank_decoder(self, level: int) -> Decoder:
        """A randomly initialised decoder of the teacher's widths, to train."""
        return vgg19_decoder(level) if self.is_vgg19 else Decoder(level, self.family())
