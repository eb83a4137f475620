"""The whitening-colouring transform (Li et al., 2017) on global feature statistics.

With content statistics (mu_c, Sigma_c) and style statistics (mu_s, Sigma_s) of one level,
``f' = Sigma_s^(1/2) Sigma_c^(-1/2) (f - mu_c) + mu_s`` and the output is
``alpha * f' + (1 - alpha) * f``. Both are affine in ``f``, so the transform is kept as one
matrix and one bias (:class:`ColorTransform`), built once per image and level in float64 and
applied to any tile of the feature map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.stats import FeatureStats

__all__ = ["EIGEN_THRESHOLD", "ColorTransform", "apply_transform", "matrix_power_psd", "whitening_coloring"]

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


def whitening_coloring(content: FeatureStats, style: FeatureStats, *, alpha: float = 1.0) -> ColorTransform:
    """Build the WCT map from global content and style statistics of one level.

    Args:
        content: statistics of the content image's features at this level.
        style: statistics of the style image's features at the same level.
        alpha: blend in [0, 1]; 0 returns the content features unchanged.

    Returns:
        A :class:`ColorTransform` equal to ``alpha * WCT(f) + (1 - alpha) * f``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if content.channels != style.channels:
        raise ValueError(f"content has {content.channels} channels, style has {style.channels}")
    whiten = matrix_power_psd(content.covariance, -0.5)
    colour = matrix_power_psd(style.covariance, 0.5)
    wct = colour @ whiten
    eye = np.eye(content.channels)
    matrix = alpha * wct + (1.0 - alpha) * eye
    bias = alpha * (style.mean - wct @ content.mean)
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
