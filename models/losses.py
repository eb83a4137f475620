"""The distillation losses, as plain functions and as the modules a training step calls.

For level k, with teacher encoder E_t, teacher decoder D_t, student encoder E_s and its 1x1
embedding layers Q (``*_aux``), on a batch x:

- embed loss: ``sum_i e(Q_i F_s_i(x), F_t_i(x))`` over the ``relu{i}_1`` of blocks 1..k;
- collaboration loss: the teacher's decoder must rebuild x from the embedded student
  features, ``rec = D_t(Q_k F_s_k(x))``: ``e(rec, x) + lambda_p * perceptual(rec, x)``;
- decoder loss (teacher decoders without weights, and every student decoder):
  ``rec = D(E(x))``, ``e(rec, x) + lambda_p * perceptual(rec, x)``,

where ``perceptual(rec, x) = sum_i e(F_t_i(rec), F_t_i(x))`` uses the teacher encoder and
``e(a, b) = ||a - b||^2 / ||b||^2`` is the relative squared error (:func:`relative_error`).

Every term is relative to the energy of its target, so no term dominates by the scale of
what it compares: a plain mean squared error of the CD 16x teacher's ``relu2_1`` features is
~10^5 times the pixel error of the same reconstruction (their energies are 343 and 0.3), and
VGG-19's features have yet another scale. In relative form each term reads "this fraction of
the signal is wrong" at any level, for any teacher, crop size or batch size, ``beta = 1`` and
``lambda_p = 1`` weigh features and pixels alike, and every layer of a feature sum counts the
same however large its activations are.

The objectives are :class:`torch.nn.Module` s whose ``forward`` returns the loss terms, so a
data-parallel wrapper (DDP) sees the whole step as one forward call and synchronises the
gradients of exactly the trainable part: the frozen teacher parts have ``requires_grad``
off. Their ``reconstruct`` is the image the stage is judged by (held-out PSNR).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.family import Decoder, Encoder

__all__ = [
    "DecoderObjective",
    "DistillationObjective",
    "embed_loss",
    "feature_loss",
    "perceptual_loss",
    "pixel_loss",
    "psnr",
    "reconstruction_psnr",
    "relative_error",
]

_TINY = 1e-12  # guards the division for an all-zero target (a dead feature map)


def relative_error(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||value - target||^2 / ||target||^2`` over the whole batch: 0 is exact, 1 is as
    large as the target itself. The denominator is a constant (no gradient through it).

    Args:
        value, target: tensors of one shape; ``target`` is what ``value`` should equal.
    """
    return F.mse_loss(value, target) / target.detach().pow(2).mean().clamp_min(_TINY)


def pixel_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Relative squared error of a reconstruction against its input, both ``(N, 3, H, W)``."""
    return relative_error(rec, x)


def feature_loss(features: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the relative squared error between matching feature maps.

    Args:
        features, targets: one ``(N, C_i, H_i, W_i)`` tensor per layer, pairwise equal shapes.
    """
    if len(features) != len(targets) or not features:
        raise ValueError(f"need matching non-empty feature lists, got {len(features)} and {len(targets)}")
    return torch.stack([relative_error(f, t) for f, t in zip(features, targets, strict=True)]).sum()


def embed_loss(teacher_features: Sequence[torch.Tensor], embedded: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i ||F_t_i - Q_i F_s_i||^2``: the embedded student features against the teacher's.

    Args:
        teacher_features: ``E_t.forward_features(x)``, no gradient needed.
        embedded: ``E_s.embed(E_s.forward_features(x))``, the same shapes.
    """
    return feature_loss(embedded, [t.detach() for t in teacher_features])


def perceptual_loss(
    encoder: Encoder, rec: torch.Tensor, x: torch.Tensor, *, target: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """``sum_i ||F_i(rec) - F_i(x)||^2`` with the features of a fixed ``encoder``.

    Args:
        encoder: the teacher encoder (frozen; gradients flow through it to ``rec`` only).
        rec, x: ``(N, 3, H, W)`` reconstruction and input.
        target: ``encoder.forward_features(x)`` if the caller has it already.
    """
    if target is None:
        with torch.no_grad():
            target = encoder.forward_features(x)
    return feature_loss(encoder.forward_features(rec), [t.detach() for t in target])


def _freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


class DistillationObjective(nn.Module):
    """Student-encoder step: ``beta * embed + pixel + lambda_p * perceptual`` (the contract's L).

    The student (with its ``*_aux`` layers) is the trainable part, except ``conv0``, the fixed
    input normalisation the family keeps. Teacher encoder and decoder are frozen.

    Args:
        student: student encoder of level k with embedding layers.
        teacher: teacher encoder of level k.
        teacher_decoder: teacher decoder of level k.
        beta: weight of the embed loss.
        lambda_p: weight of the perceptual part of the collaboration loss.
    """

    def __init__(
        self, student: Encoder, teacher: Encoder, teacher_decoder: Decoder, *, beta: float, lambda_p: float
    ) -> None:
        super().__init__()
        if student.level != teacher.level or teacher_decoder.level != teacher.level:
            raise ValueError(
                f"levels differ: student {student.level}, teacher {teacher.level}, decoder {teacher_decoder.level}"
            )
        self.student = student
        self.student.conv0.requires_grad_(False)
        self.teacher = _freeze(teacher)
        self.teacher_decoder = _freeze(teacher_decoder)
        self.beta = beta
        self.lambda_p = lambda_p

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for a batch ``x`` ``(N, 3, H, W)`` in [0, 1]; ``"loss"`` is the total."""
        with torch.no_grad():
            target = self.teacher.forward_features(x)
        embedded = self.student.embed(self.student.forward_features(x))
        embed = embed_loss(target, embedded)
        rec = self.teacher_decoder(embedded[-1])
        pixel = pixel_loss(rec, x)
        perceptual = perceptual_loss(self.teacher, rec, x, target=target)
        loss = self.beta * embed + pixel + self.lambda_p * perceptual
        return {"loss": loss, "embed": embed, "pixel": pixel, "perceptual": perceptual}

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The collaboration reconstruction ``D_t(Q_k F_s_k(x))`` that the stage improves."""
        return self.teacher_decoder(self.student.embed(self.student.forward_features(x))[-1])


class DecoderObjective(nn.Module):
    """Decoder step: ``pixel + lambda_p * perceptual`` on ``D(E(x))``; only the decoder learns.

    Trains teacher decoders (``encoder`` is the teacher) and student decoders (``encoder`` is
    the trained student); the perceptual features always come from the teacher encoder.

    Args:
        decoder: the decoder to train, of the encoder's level.
        encoder: the encoder whose features it inverts (frozen).
        perceptual: the teacher encoder whose features the perceptual loss compares (frozen).
        lambda_p: weight of the perceptual loss.
    """

    def __init__(self, decoder: Decoder, encoder: Encoder, perceptual: Encoder, *, lambda_p: float) -> None:
        super().__init__()
        if decoder.level != encoder.level:
            raise ValueError(f"decoder level {decoder.level} does not match encoder level {encoder.level}")
        self.decoder = decoder
        self.encoder = _freeze(encoder)
        self.perceptual = _freeze(perceptual)
        self.lambda_p = lambda_p

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for a batch ``x`` ``(N, 3, H, W)`` in [0, 1]; ``"loss"`` is the total."""
        with torch.no_grad():
            features = self.encoder(x)
        rec = self.decoder(features)
        pixel = pixel_loss(rec, x)
        perceptual = perceptual_loss(self.perceptual, rec, x)
        return {"loss": pixel + self.lambda_p * perceptual, "pixel": pixel, "perceptual": perceptual}

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``D(E(x))``, the reconstruction the stage improves."""
        return self.decoder(self.encoder(x))


def psnr(rec: torch.Tensor, x: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of ``rec`` clamped to [0, 1] against ``x`` (peak 1).

    Returns ``inf`` for identical images.
    """
    mse = F.mse_loss(rec.clamp(0, 1).float(), x.float()).item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def reconstruction_psnr(encoder: Encoder, decoder: Decoder, images: Iterable[torch.Tensor]) -> float:
    """Mean PSNR of ``D(E(x))`` over ``images``: how much of an image a level's pair keeps.

    Args:
        encoder, decoder: one level's pair, on the CPU.
        images: ``(1, 3, H, W)`` float32 in [0, 1], H and W multiples of 16.
    """
    with torch.inference_mode():
        values = [psnr(decoder(encoder(x)), x) for x in images]
    if not values:
        raise ValueError("images is empty")
    return sum(values) / len(values)
