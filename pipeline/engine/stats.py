"""Mergeable float64 feature statistics: count, mean and centred scatter.

The whitening-colouring transform needs the global mean and covariance of an image's
features. Computing them per tile and merging with the parallel formula of Chan et al. gives
the whole-image values up to rounding for any tiling, which is what makes tiled WCT exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import reduce

import numpy as np
import torch

__all__ = [
    "FeatureStats",
    "TileStats",
    "TileStatsFold",
    "feature_stats",
    "label_stats",
    "merge_stats",
    "merge_tile_stats",
]

# Columns (pixels) per float64 block when accumulating, to bound the float64 copy's memory.
_BLOCK = 1 << 20


@dataclass(frozen=True)
class FeatureStats:
    """Statistics of ``count`` feature vectors of ``C`` channels.

    Attributes:
        count: number of vectors (pixels).
        mean: ``(C,)`` float64.
        scatter: ``(C, C)`` float64, sum of outer products of the centred vectors.
    """

    count: int
    mean: np.ndarray
    scatter: np.ndarray

    @property
    def channels(self) -> int:
        return self.mean.shape[0]

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance ``scatter / (count - 1)``, ``(C, C)`` float64."""
        if self.count < 2:
            raise ValueError(f"covariance needs at least 2 vectors, got {self.count}")
        return self.scatter / (self.count - 1)

    @property
    def gram(self) -> np.ndarray:
        """Uncentred second moment ``F F^T / count`` of the ``(C, count)`` vectors (the Gram
        matrix of style losses), ``(C, C)`` float64."""
        if self.count < 1:
            raise ValueError("a Gram matrix needs at least 1 vector")
        return self.scatter / self.count + np.outer(self.mean, self.mean)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Chan et al.'s pairwise combination; exact in exact arithmetic, stable in float64."""
        if self.count == 0:
            return other
        if other.count == 0:
            return self
        if other.channels != self.channels:
            raise ValueError(f"cannot merge statistics of {self.channels} and {other.channels} channels")
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / n)
        return FeatureStats(n, mean, scatter)

    @classmethod
    def empty(cls, channels: int) -> FeatureStats:
        return cls(0, np.zeros(channels), np.zeros((channels, channels)))


def feature_stats(features: torch.Tensor) -> FeatureStats:
    """Statistics of a feature map.

    Args:
        features: ``(C, H, W)`` or ``(1, C, H, W)``, any float dtype and device.

    Returns:
        :class:`FeatureStats` over the ``H * W`` vectors, computed in float64 in blocks of
        columns (merged with :meth:`FeatureStats.merge`) so the float64 copy stays small.
    """
    return _column_stats(_flat(features))


def _flat(features: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` or ``(1, C, H, W)`` -> ``(C, H * W)``."""
    if features.dim() == 4:
        if features.shape[0] != 1:
            raise ValueError(f"features must have batch size 1, got shape {tuple(features.shape)}")
        features = features[0]
    return features.reshape(features.shape[0], -1)


def _column_stats(flat: torch.Tensor) -> FeatureStats:
    """Statistics of the columns of ``(C, N)``, in float64 blocks of :data:`_BLOCK` columns."""
    blocks = []
    for start in range(0, flat.shape[1], _BLOCK):
        x = flat[:, start : start + _BLOCK].double()
        mean = x.mean(dim=1)
        centred = x - mean[:, None]
        scatter = centred @ centred.T
        blocks.append(FeatureStats(x.shape[1], mean.cpu().numpy(), scatter.cpu().numpy()))
    return merge_stats(blocks, channels=flat.shape[0])


def label_stats(features: torch.Tensor, labels: torch.Tensor, count: int) -> tuple[FeatureStats, ...]:
    """Statistics of a feature map per region: the masked WCT's content statistics.

    Args:
        features: ``(C, H, W)`` or ``(1, C, H, W)``.
        labels: ``(H, W)`` integer labels in ``[0, count)``.
        count: number of labels (regions), including those with no pixel here.

    Returns:
        ``count`` :class:`FeatureStats`, the ``i``-th over the pixels labelled ``i`` (empty
        where there are none). With every pixel labelled 0, the first equals
        :func:`feature_stats` of the map bit for bit.
    """
    flat = _flat(features)
    flat_labels = labels.reshape(-1).to(flat.device)
    if flat_labels.shape[0] != flat.shape[1]:
        raise ValueError(f"labels must be {tuple(features.shape[-2:])}, got {tuple(labels.shape)}")
    if count == 1 or bool((flat_labels == flat_labels[0]).all()):
        only = int(flat_labels[0])
        whole = _column_stats(flat)
        return tuple(whole if i == only else FeatureStats.empty(flat.shape[0]) for i in range(count))
    return tuple(_column_stats(flat[:, flat_labels == i]) for i in range(count))


# Round A's result for one tile: the core's statistics, or one per mask label.
TileStats = FeatureStats | tuple[FeatureStats, ...]


def _merge_tile(a: TileStats, b: TileStats) -> TileStats:
    if isinstance(a, tuple):
        return tuple(x.merge(y) for x, y in zip(a, b, strict=True))
    return a.merge(b)


class TileStatsFold:
    """Merges the tiles' statistics as they arrive, in tile order, holding only what is early.

    A level's statistics are folded tile by tile in the order of the tile list, whichever
    order the tiles finish in, so every executor reduces the same numbers in the same order
    and gets the same bits. Keeping only the running merge (and the results that arrived
    ahead of a slower tile) keeps the memory flat in the number of tiles: a gigapixel image
    has thousands of tiles, and each level-5 statistic of the 16x models is 128 KB.
    """

    def __init__(self, tiles: int) -> None:
        self._tiles = tiles
        self._next = 0
        self._early: dict[int, TileStats] = {}
        self._merged: TileStats | None = None

    def add(self, index: int, stats: TileStats) -> None:
        """Take tile ``index``'s statistics (each index once, in any order)."""
        if not 0 <= index < self._tiles or index < self._next or index in self._early:
            raise ValueError(f"tile {index} is out of range or was already added")
        self._early[index] = stats
        while self._next in self._early:
            item = self._early.pop(self._next)
            self._merged = item if self._merged is None else _merge_tile(self._merged, item)
            self._next += 1

    def result(self) -> TileStats:
        """The merged statistics of all tiles (per label where they come per label)."""
        if self._next != self._tiles or self._merged is None:
            raise ValueError(f"{self._tiles - self._next} of {self._tiles} tiles' statistics are missing")
        return self._merged


def merge_tile_stats(stats: Iterable[TileStats]) -> TileStats:
    """Merge the tiles' statistics in the given order, per label where they come per label."""
    items = list(stats)
    fold = TileStatsFold(len(items))
    for i, item in enumerate(items):
        fold.add(i, item)
    return fold.result()


def merge_stats(stats: Iterable[FeatureStats], *, channels: int | None = None) -> FeatureStats:
    """Merge any number of :class:`FeatureStats` (an empty iterable needs ``channels``)."""
    items = list(stats)
    if not items:
        if channels is None:
            raise ValueError("merge_stats of nothing needs channels")
        return FeatureStats.empty(channels)
    return reduce(FeatureStats.merge, items)
