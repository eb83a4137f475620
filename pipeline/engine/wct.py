"""The whitening-colouring transform (Li et al., 2017) on global feature statistics.

With content statistics (mu_c, Sigma_c) and style statistics (mu_s, Sigma_s) of one level,
``f' = Sigma_s^(1/2) Sigma_c^(-1/2) (f - mu_c) + mu_s`` and the output is
``alpha * f' + (1 - alpha) * f``. Both are affine in ``f``, so the transform is kept as one
matrix and one bias (:class:`ColorTransform`), built once per image and level in float64 and
applied to any tile of the feature map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.engine.stats import FeatureStats

__all__ = [
    "EIGEN_THRESHOLD",
    "ColorTransform",
    "Coloring",
    "TransformSet",
    "apply_transform",
    "apply_transforms",
    "blend_colorings",
    "coloring",
    "matrix_power_psd",
    "whitening_coloring",
]

# Eigenvalues at or below this are dropped. The CD 16x encoders have dead channels (all zero),
# which make the covariance exactly singular; the released code adds no identity to Sigma_c
# and keeps every eigenvalue above 1e-100. A symmetric eigen-decomposition returns the exact
# zeros as tiny values of either sign (|lambda| ~ 1e-16 * lambda_max), so the cut is relative:
# directions that rounding cannot tell from zero carry no content and are dropped.
EIGEN_THRESHOLD = 1e-12


@dataclass(frozen=True)
class ColorTransform:
    """``f -> matrix @ f + bias`` per pixel; ``matrix`` ``(C, C)`` and ``bias`` ``(C,)`` float64."""

    matrix: np.ndarray
    bias: np.ndarray


# A level's transform: one for the whole image, or one per mask label (index = label).
TransformSet = ColorTransform | tuple[ColorTransform, ...]


@dataclass(frozen=True)
class Coloring:
    """The style half of WCT at one level: ``matrix = Sigma_s^(1/2)`` ``(C, C)`` and the style
    ``mean`` ``(C,)``, float64. A weighted blend of styles is again one :class:`Coloring`."""

    matrix: np.ndarray
    mean: np.ndarray


def matrix_power_psd(cov: np.ndarray, power: float, *, rtol: float = EIGEN_THRESHOLD) -> np.ndarray:
    """``cov ** power`` for a symmetric PSD matrix, on its eigen-directions above ``rtol``.

    Eigenvalues ``<= rtol * max(lambda)`` (and non-positive ones) are dropped, so for a
    negative ``power`` the result is the pseudo-inverse power on the kept subspace.
    """
    values, vectors = np.linalg.eigh(cov)
    top = max(values.max(initial=0.0), 0.0)
    keep = values > rtol * top
    v = vectors[:, keep]
    return (v * values[keep] ** power) @ v.T


def coloring(style: FeatureStats) -> Coloring:
    """The colouring half of WCT for one style's statistics at one level."""
    return Coloring(matrix_power_psd(style.covariance, 0.5), style.mean)


def blend_colorings(colorings: Sequence[Coloring], weights: Sequence[float]) -> Coloring:
    """Style interpolation (Li et al., 2017): ``sum_i w_i (C_i W (f - mu_c) + mu_i)`` is the
    WCT map of one colouring ``(sum_i w_i C_i, sum_i w_i mu_i)``.

    Args:
        colorings: one per style, same channels.
        weights: one per style, non-negative with a positive sum; normalised here. A weight of
            exactly 1 with the others 0 gives that style's colouring bit for bit.
    """
    if len(weights) != len(colorings) or not colorings:
        raise ValueError(f"weights must have one value per style ({len(colorings)}), got {len(weights)}")
    total = float(sum(weights))
    if min(weights) < 0 or not total > 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    w = [float(x) / total for x in weights]
    matrix, mean = w[0] * colorings[0].matrix, w[0] * colorings[0].mean
    for wi, c in zip(w[1:], colorings[1:], strict=True):
        matrix, mean = matrix + wi * c.matrix, mean + wi * c.mean
    return Coloring(matrix, mean)


def whitening_coloring(
    content: FeatureStats, style: FeatureStats | Coloring, *, alpha: float = 1.0
) -> ColorTransform:
    """Build the WCT map from global content and style statistics of one level.

    Args:
        content: statistics of the content image's features at this level (or of one mask
            region's features). Fewer than 2 vectors have no covariance: their whitening is
            taken as zero, so they map to the style mean.
        style: statistics of the style image's features at the same level, or its
            :class:`Coloring` (e.g. a blend of styles, :func:`blend_colorings`).
        alpha: blend in [0, 1]; 0 returns the content features unchanged.

    Returns:
        A :class:`ColorTransform` equal to ``alpha * WCT(f) + (1 - alpha) * f``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colour = style if isinstance(style, Coloring) else coloring(style)
    if content.channels != colour.mean.shape[0]:
        raise ValueError(f"content has {content.channels} channels, style has {colour.mean.shape[0]}")
    if content.count < 2:
        whiten = np.zeros((content.channels, content.channels))
    else:
        whiten = matrix_power_psd(content.covariance, -0.5)
    wct = colour.matrix @ whiten
    eye = np.eye(content.channels)
    matrix = alpha * wct + (1.0 - alpha) * eye
    bias = alpha * (colour.mean - wct @ content.mean)
    return ColorTransform(matrix, bias)


def apply_transform(features: torch.Tensor, transform: ColorTransform) -> torch.Tensor:
    """Apply a :class:`ColorTransform` to every pixel of ``(N, C, H, W)`` features.

    The product runs in the features' dtype (float32) on their device; the matrix itself was
    built in float64.
    """
    matrix = torch.as_tensor(transform.matrix, dtype=features.dtype, device=features.device)
    bias = torch.as_tensor(transform.bias, dtype=features.dtype, device=features.device)
    out = torch.einsum("dc,nchw->ndhw", matrix, features)
    return out.add_(bias[None, :, None, None])


def apply_transforms(
    features: torch.Tensor, transforms: TransformSet, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply one transform to every pixel, or per pixel the transform its label picks.

    Args:
        features: ``(N, C, H, W)``.
        transforms: one :class:`ColorTransform`, or a tuple indexed by label.
        labels: ``(H, W)`` integer labels (needed with a tuple), on any device.

    Each pixel gets exactly ``apply_transform`` of its own transform, so one label gives
    the single-transform result bit for bit.
    """
    if isinstance(transforms, ColorTransform):
        return apply_transform(features, transforms)
    if labels is None:
        raise ValueError("a transform per label needs labels")
    labels = labels.to(features.device)
    out = apply_transform(features, transforms[0])
    for label, transform in enumerate(transforms[1:], start=1):
        picked = labels == label
        if bool(picked.any()):
            out = torch.where(picked, apply_transform(features, transform), out)
    return out
