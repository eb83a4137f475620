"""pipeline/engine/wct.py against a direct float64 textbook WCT, on random and on real features.

The textbook version follows the CD authors' ``whiten_and_color_torch``: covariances divided by
``count - 1``, ``torch.svd`` in float64, singular values below 1e-100 dropped, no identity
added to Sigma_c. The real level-4/5 features of the released encoders have dead (all-zero)
channels, so their covariances are exactly singular; the module drops those directions by a
relative threshold instead, and the two must still agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.engine.stats import FeatureStats, feature_stats
from pipeline.engine.wct import apply_transform, matrix_power_psd, whitening_coloring
from pipeline.imaging.imageio import read_image

CD_THRESHOLD = 1e-100


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _textbook_wct(content: torch.Tensor, style: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * (Sigma_s^1/2 Sigma_c^-1/2 (f - mu_c) + mu_s) + (1 - alpha) * f`` on (C, N) float64."""
    cf, sf = content.double(), style.double()
    c_mean = cf.mean(dim=1, keepdim=True)
    c_centred = cf - c_mean
    _, c_e, c_v = torch.svd(c_centred @ c_centred.T / (cf.shape[1] - 1), some=False)
    k_c = int((c_e >= CD_THRESHOLD).sum())
    s_mean = sf.mean(dim=1, keepdim=True)
    s_centred = sf - s_mean
    _, s_e, s_v = torch.svd(s_centred @ s_centred.T / (sf.shape[1] - 1), some=False)
    k_s = int((s_e >= CD_THRESHOLD).sum())
    whitened = c_v[:, :k_c] @ torch.diag(c_e[:k_c].pow(-0.5)) @ c_v[:, :k_c].T @ c_centred
    coloured = s_v[:, :k_s] @ torch.diag(s_e[:k_s].pow(0.5)) @ s_v[:, :k_s].T @ whitened + s_mean
    return alpha * coloured + (1.0 - alpha) * cf


def _module_wct(content: torch.Tensor, style: torch.Tensor, alpha: float) -> torch.Tensor:
    """The module's transform of (C, H, W) features, applied in the features' dtype."""
    transform = whitening_coloring(feature_stats(content), feature_stats(style), alpha=alpha)
    return apply_transform(content[None], transform)[0]


def _random_features(rng: np.random.Generator, channels: int, h: int, w: int, offset: float) -> torch.Tensor:
    """Well-conditioned correlated features: a random rotation and scales in [0.5, 2]."""
    q, _ = np.linalg.qr(rng.normal(size=(channels, channels)))
    mixing = q * rng.uniform(0.5, 2.0, size=channels)
    x = mixing @ rng.normal(size=(channels, h * w)) + offset + rng.normal(size=(channels, 1))
    return torch.from_numpy(x.reshape(channels, h, w))


def _to_tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(read_image(str(path)).rgb).permute(2, 0, 1)[None].contiguous()


@pytest.fixture(scope="module")
def real_features(model_set, content_dir: Path, style_dir: Path) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Level 1, 4 and 5 features (C, H, W) float32 of astronaut_512 and strokes_512."""
    content = _to_tensor(content_dir / "astronaut_512.jpg")
    style = _to_tensor(style_dir / "strokes_512.jpg")
    out = {}
    with torch.inference_mode():
        for level in (1, 4, 5):
            enc = model_set.encoders[level]
            out[level] = (enc(content)[0], enc(style)[0])
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_matches_textbook_on_random_data(alpha: float) -> None:
    rng = np.random.default_rng(7)
    content = _random_features(rng, 12, 20, 25, offset=3.0)
    style = _random_features(rng, 12, 17, 30, offset=-1.0)
    ours = _module_wct(content, style, alpha).reshape(12, -1)
    ref = _textbook_wct(content.reshape(12, -1), style.reshape(12, -1), alpha)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())


@pytest.mark.parametrize("level", [4, 5])
def test_matches_textbook_on_real_singular_features(level: int, real_features) -> None:
    content, style = real_features[level]
    c = content.shape[0]
    dead = int((content.flatten(1).abs().amax(dim=1) == 0).sum())
    assert dead > 0, "the released encoders have dead channels at levels 4 and 5"
    ref = _textbook_wct(content.reshape(c, -1), style.reshape(c, -1), 1.0)
    scale = ref.abs().max().item()
    # In float64 the only difference is which (numerically zero) directions are dropped.
    ours64 = _module_wct(content.double(), style.double(), 1.0).reshape(c, -1)
    err64 = (ours64 - ref).abs().max().item() / scale
    # The production path applies the float64 matrix to float32 features.
    ours32 = _module_wct(content, style, 1.0).reshape(c, -1)
    assert ours32.dtype == torch.float32
    err32 = (ours32.double() - ref).abs().max().item() / scale
    print(f"level {level}: {dead}/{c} dead channels, relative max error float64 {err64:.2e}, float32 {err32:.2e}")
    assert err64 < 1e-10
    assert err32 < 1e-5


def _unit_style(channels: int) -> FeatureStats:
    """Statistics with zero mean and identity covariance: colouring with them is the identity."""
    return FeatureStats(100, np.zeros(channels), 99.0 * np.eye(channels))


@pytest.mark.parametrize("level", [1, 5])
def test_whitened_features_have_identity_covariance_on_kept_directions(level: int, real_features) -> None:
    content = real_features[level][0].double()
    c = content.shape[0]
    stats = feature_stats(content)
    whitened = apply_transform(content[None], whitening_coloring(stats, _unit_style(c)))
    out = feature_stats(whitened)
    # Kept directions: the range of Sigma_c, found here by an independent rank-revealing cut.
    values, vectors = np.linalg.eigh(stats.covariance)
    kept = vectors[:, values > 1e-9 * values.max()]
    live = int((content.flatten(1).abs().amax(dim=1) > 0).sum())
    print(f"level {level}: {kept.shape[1]} kept directions, {live} live channels of {c}")
    assert kept.shape[1] == live
    np.testing.assert_allclose(out.covariance, kept @ kept.T, atol=1e-8)
    np.testing.assert_allclose(out.mean, 0.0, atol=1e-8)


def test_alpha_zero_returns_content(real_features) -> None:
    content, style = real_features[5]
    out = _module_wct(content, style, 0.0)
    torch.testing.assert_close(out, content, rtol=1e-6, atol=1e-6)
    rng = np.random.default_rng(3)
    random_content = _random_features(rng, 6, 10, 10, offset=5.0)
    out = _module_wct(random_content, _random_features(rng, 6, 8, 8, offset=0.0), 0.0)
    torch.testing.assert_close(out, random_content, rtol=1e-15, atol=1e-15)


def test_output_has_style_mean_and_covariance() -> None:
    rng = np.random.default_rng(11)
    content = _random_features(rng, 10, 30, 30, offset=2.0)
    style = _random_features(rng, 10, 25, 20, offset=-4.0)
    out, target = feature_stats(_module_wct(content, style, 1.0)), feature_stats(style)
    np.testing.assert_allclose(out.mean, target.mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.covariance, target.covariance, rtol=1e-9, atol=1e-10)


def test_real_level1_output_has_style_statistics(real_features) -> None:
    """Level 1 has no dead channels, so Sigma_c is full rank and the style's moments carry over."""
    content, style = real_features[1]
    out, target = feature_stats(_module_wct(content, style, 1.0)), feature_stats(style)
    mean_err = np.abs(out.mean - target.mean).max() / np.abs(target.mean).max()
    cov_err = np.abs(out.covariance - target.covariance).max() / np.abs(target.covariance).max()
    print(f"level 1 float32 path: mean error {mean_err:.1e}, covariance error {cov_err:.1e}")
    assert mean_err < 1e-6 and cov_err < 1e-6


def test_matrix_power_psd_on_singular_matrix() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(6, 3))
    cov = a @ a.T  # rank 3
    root = matrix_power_psd(cov, 0.5)
    np.testing.assert_allclose(root @ root, cov, atol=1e-12 * np.abs(cov).max())
    inv_root = matrix_power_psd(cov, -0.5)
    # The pseudo-inverse power: whitening is a projector on the range, not an explosion.
    np.testing.assert_allclose(inv_root @ cov @ inv_root, np.linalg.pinv(cov) @ cov, atol=1e-10)


def test_argument_errors() -> None:
    a, b = feature_stats(torch.rand(3, 5, 5)), feature_stats(torch.rand(4, 5, 5))
    with pytest.raises(ValueError, match="alpha"):
        whitening_coloring(a, a, alpha=1.5)
    with pytest.raises(ValueError, match="3 channels"):
        whitening_coloring(a, b)
