"""The exact tiled cascade: tiling changes memory and parallelism, not the picture.

WCT's statistics are global to the image, so per level k = 5..1 the tiles take two rounds:

- round A: encode every tile's core grown by the encoder's halo, keep the core's features
  and their :class:`~pipeline.engine.stats.FeatureStats`; merging those gives the whole image's
  statistics up to float rounding, and with them one :class:`~pipeline.engine.wct.ColorTransform`;
- round B: transform and decode every tile with that one transform and write its core into
  the next level's canvas.

Halos come from :mod:`models.receptive`, so a core sees the same receptive field as in the
whole-image run. Round B reads back the features cached in round A where they are cheap to
keep (deep levels, few values per pixel) and re-encodes a larger region where they are not.
The per-tile functions (:func:`tile_round_a`, :func:`tile_round_b`) are what the Ray actors run.

The level loop exists once, :func:`run_levels`, and takes where the tiles run as a parameter
(a :class:`TileExecutor`), as MONAI's ``sliding_window_inference`` takes its predictor:
:class:`CanvasExecutor` runs them here for the CLI and the tests, and the batch job's
executor runs the same loop on Ray actors.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from models import decoder_halo, encoder_halo, level_halo
from pipeline.engine.cascade import MIN_SIDE, LevelCallback, decode_transformed, encode, pad_to_multiple, upload
from pipeline.engine.controls import (
    StyleLevel,
    keep_chroma,
    label_count,
    level_transform,
    region_labels,
    region_stats,
    sample_labels,
)
from pipeline.engine.models import CASCADE, ModelSet
from pipeline.engine.stats import TileStats, TileStatsFold
from pipeline.engine.wct import TransformSet
from pipeline.imaging.canvas import Canvas, open_canvas, reflect_pad_canvas
from pipeline.imaging.chunks import unit_float
from pipeline.imaging.heap import release_free_heap
from pipeline.imaging.tiles import Rect, Tile, canvas_size, plan_tiles

__all__ = [
    "FEATURE_CACHE_MAX",
    "CanvasExecutor",
    "ContentStats",
    "LevelGeometry",
    "TileCallback",
    "TileExecutor",
    "canvas_from_array",
    "cascade_geometry",
    "decode_core",
    "encode_core",
    "level_geometry",
    "map_batched",
    "read_rgb",
    "round_a_tiles",
    "round_b_tiles",
    "run_levels",
    "stylize_exact",
    "stylize_thumbnail",
    "thumbnail",
    "thumbnail_mask",
    "tile_round_a",
    "tile_round_b",
    "tile_rounds",
]

# Round A's features are kept for round B when they cost at most this many float32 values per
# image pixel (levels 3..5 of the 16x models: 4, 2 and 0.5); below that, re-encoding is cheaper
# than storing (level 1: 24 values per pixel for an encoder of one conv).
FEATURE_CACHE_MAX = 4.0

# Progress: called with the number of tile rounds just finished.
TileCallback = Callable[[int], None]
# A level's content statistics when they do not come from round A (thumbnail mode).
ContentStats = Callable[[int], TileStats]


@dataclass(frozen=True)
class LevelGeometry:
    """Scales and halos of one level.

    Attributes:
        level: 1..5.
        scale: image pixels per feature cell, ``2 ** (level - 1)``.
        encoder_halo: round A's halo (encoder reach, 16-aligned).
        decoder_halo: round B's halo on cached features (decoder reach, 16-aligned).
        halo: round B's halo when re-encoding (reach of encoder then decoder).
        cache_features: whether round B reads round A's features back.
    """

    level: int
    scale: int
    encoder_halo: int
    decoder_halo: int
    halo: int
    cache_features: bool


def level_geometry(level: int, channels: int) -> LevelGeometry:
    """Geometry of ``level`` for an encoder with ``channels`` output channels."""
    scale = 2 ** (level - 1)
    return LevelGeometry(
        level,
        scale,
        encoder_halo(level),
        decoder_halo(level),
        level_halo(level),
        channels / scale**2 <= FEATURE_CACHE_MAX,
    )


def encode_core(encoder: torch.nn.Module, region: torch.Tensor, core: Rect, scale: int) -> torch.Tensor:
    """Encode a tile region and return the features of its core.

    Args:
        encoder: encoder of the level.
        region: ``(1, 3, h, w)`` float32, the core grown by at least the encoder halo.
        core: the core in ``region``'s pixel coordinates (16-aligned).
        scale: pixels per feature cell of the level.

    Returns:
        ``(1, C, core.height / scale, core.width / scale)`` float32.
    """
    features = encode(encoder, region)
    return features[(..., *core.scaled(scale).slices())]


def decode_core(
    decoder: torch.nn.Module,
    features: torch.Tensor,
    transform: TransformSet,
    core: Rect,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Whiten-colour and decode a feature region, returning the core's pixels.

    Args:
        decoder: decoder of the level.
        features: ``(1, C, h, w)`` features of the core grown by at least the decoder halo.
        transform: the level's global transform (or one per mask label).
        core: the core in the region's pixel coordinates.
        labels: ``(h, w)`` mask labels of the features, with one transform per label.

    Returns:
        ``(1, 3, core.height, core.width)`` float32.
    """
    return decode_transformed(decoder, features, transform, labels)[(..., *core.slices())]


def canvas_from_array(rgb: np.ndarray, *, workdir: str | None, band: int = 256) -> Canvas:
    """Put an ``(H, W, 3)`` image (uint8, or float in [0, 1]) on a reflect-padded canvas.

    Rows are converted to float32 a band at a time and the padding is filled on the canvas,
    so neither a float nor a padded copy of the image ever exists whole.
    """
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"content image is {w}x{h}; the smallest side handled is {MIN_SIDE} px")
    canvas = open_canvas(3, *canvas_size(h, w), workdir=workdir, name="input")
    for y in range(0, h, band):
        rows = unit_float(rgb[y : y + band])
        canvas.write(Rect(y, 0, y + rows.shape[0], w), rows.transpose(2, 0, 1))
    reflect_pad_canvas(canvas, h, w)
    return canvas


def read_rgb(canvas: Canvas, height: int, width: int) -> np.ndarray:
    """The image part of an output canvas as ``(H, W, 3)`` float32 clamped to [0, 1]."""
    return np.clip(canvas.read(Rect(0, 0, height, width)).transpose(1, 2, 0), 0, 1)


def map_batched(
    fn: Callable[..., torch.Tensor], calls: Iterable[tuple[Any, ...]], *, batch: int
) -> Iterator[torch.Tensor]:
    """``fn(x, *args)`` for each ``(x, *args)`` in ``calls``, with up to ``batch`` consecutive calls
    whose ``x`` have one shape and whose ``args`` are equal stacked into one call on ``(N, C, H, W)``.

    Each convolution then runs once on N equal-size tile regions instead of N times, which keeps
    a GPU busy; the pixels are those of the one-at-a-time calls (to float rounding). ``calls`` is
    read lazily, so at most ``batch`` inputs are held at a time.

    Args:
        fn: maps ``(N, ...)`` to ``(N, ...)``, sample by sample (a network forward).
        calls: ``(x, *args)`` with ``x`` ``(1, C, H, W)`` and ``args`` hashable.
        batch: most inputs per call; 1 calls ``fn`` once per input, on the input itself.

    Yields:
        ``(1, ...)`` results in the order of ``calls``.

    Raises:
        ValueError: ``batch`` is less than 1.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    pending: list[torch.Tensor] = []
    key: tuple[Any, ...] = ()
    for x, *args in calls:
        if pending and (len(pending) == batch or (x.shape, *args) != key):
            yield from fn(pending[0] if len(pending) == 1 else torch.cat(pending), *key[1:]).split(1)
            pending = []
        pending.append(x)
        key = (x.shape, *args)
    if pending:
        yield from fn(pending[0] if len(pending) == 1 else torch.cat(pending), *key[1:]).split(1)


def round_a_tiles(
    canvas: Canvas,
    tiles: Sequence[Tile],
    encoder: torch.nn.Module,
    geo: LevelGeometry,
    mask: Canvas | None = None,
    labels: int = 0,
    *,
    batch: int = 1,
) -> Iterator[tuple[TileStats, np.ndarray | None]]:
    """Round A for several tiles, in order: each core's feature statistics (one per label,
    ``labels`` of them, with a ``mask`` canvas holding the cores), and its ``(C, h, w)``
    features when round B reads them back (``geo.cache_features``), else ``None``.

    ``canvas`` needs to hold each core grown by ``geo.encoder_halo`` (clipped to the canvas).
    Up to ``batch`` equal-size regions go through the encoder at once (:func:`map_batched`).
    """
    bounds = Rect(0, 0, canvas.height, canvas.width)

    def calls() -> Iterator[tuple[torch.Tensor, Rect]]:
        for t in tiles:
            release_free_heap()
            region = t.core.grow(geo.encoder_halo, bounds)
            yield torch.from_numpy(canvas.read(region))[None], t.core.relative_to(region)

    features = map_batched(lambda x, core: encode_core(encoder, x, core, geo.scale), calls(), batch=batch)
    for t, f in zip(tiles, features, strict=True):
        stats = region_stats(f, region_labels(mask, t.core, geo.scale), labels)
        yield stats, (f[0].cpu().numpy() if geo.cache_features else None)


def tile_round_a(
    canvas: Canvas,
    tile: Tile,
    encoder: torch.nn.Module,
    geo: LevelGeometry,
    mask: Canvas | None = None,
    labels: int = 0,
) -> tuple[TileStats, np.ndarray | None]:
    """Round A for one tile (see :func:`round_a_tiles`)."""
    return next(round_a_tiles(canvas, [tile], encoder, geo, mask, labels))


def round_b_tiles(
    canvas: Canvas,
    features: Canvas | None,
    tiles: Sequence[Tile],
    encoder: torch.nn.Module,
    decoder: torch.nn.Module,
    geo: LevelGeometry,
    transform: TransformSet,
    mask: Canvas | None = None,
    *,
    batch: int = 1,
) -> Iterator[np.ndarray]:
    """Round B for several tiles, in order: each core's ``(3, h, w)`` pixels for the next level.

    With cached ``features`` (a canvas at the level's scale holding each core grown by
    ``geo.decoder_halo``), they are transformed and decoded; without, ``canvas`` must hold
    each core grown by ``geo.halo`` and is encoded again. With one transform per label,
    ``mask`` must hold the same regions as the features. Up to ``batch`` equal-size regions
    go through the networks at once (:func:`map_batched`).
    """
    bounds = Rect(0, 0, canvas.height, canvas.width)
    device = next(decoder.parameters()).device
    if mask is not None:
        batch = 1  # each tile has its own label map, which map_batched cannot stack

    def calls() -> Iterator[tuple[torch.Tensor, Rect, torch.Tensor | None]]:
        for t in tiles:
            release_free_heap()
            if features is not None:
                region = t.core.grow(geo.decoder_halo, bounds)
                x = upload(torch.from_numpy(features.read(region.scaled(geo.scale)))[None], device)
            else:
                region = t.core.grow(geo.halo, bounds)
                x = torch.from_numpy(canvas.read(region))[None]
            yield x, t.core.relative_to(region), region_labels(mask, region, geo.scale)

    def run(x: torch.Tensor, core: Rect, labels: torch.Tensor | None) -> torch.Tensor:
        return decode_core(decoder, x if features is not None else encode(encoder, x), transform, core, labels)

    for y in map_batched(run, calls(), batch=batch):
        yield y[0].cpu().numpy()


def tile_round_b(
    canvas: Canvas,
    features: Canvas | None,
    tile: Tile,
    encoder: torch.nn.Module,
    decoder: torch.nn.Module,
    geo: LevelGeometry,
    transform: TransformSet,
    mask: Canvas | None = None,
) -> np.ndarray:
    """Round B for one tile (see :func:`round_b_tiles`)."""
    return next(round_b_tiles(canvas, features, [tile], encoder, decoder, geo, transform, mask))


class TileExecutor(Protocol):
    """Where a level's tiles run, and where the level's image lives between rounds.

    :func:`run_levels` drives it: per level, :meth:`round_a` then :meth:`round_b`, in the
    way :func:`monai.inferers.sliding_window_inference` drives a predictor. The executor
    starts holding the padded input image; each :meth:`round_b` replaces it with the next
    level's image. :class:`CanvasExecutor` runs tiles in this process on canvases; the batch
    job's executor (:mod:`pipeline.batch.executor`) runs them on Ray actors over object refs.
    """

    def round_a(self, geo: LevelGeometry, tiles: Sequence[Tile]) -> TileStats:
        """Encode every tile of the current image and return the image's statistics (per mask
        label when the executor has a mask): the cores' statistics merged in ``tiles``' order
        by a :class:`~pipeline.engine.stats.TileStatsFold`. Keep each core's features for
        :meth:`round_b` when ``geo.cache_features``."""
        ...

    def round_b(self, geo: LevelGeometry, tiles: Sequence[Tile], transform: TransformSet, *, last: bool) -> None:
        """Transform and decode every tile into the next level's image (``last``: the output)."""
        ...


def cascade_geometry(channels: Mapping[int, int]) -> list[LevelGeometry]:
    """Geometry of each level in cascade order (5..1), from each encoder's output channels."""
    return [level_geometry(k, channels[k]) for k in CASCADE if k in channels]


def run_levels(
    executor: TileExecutor,
    tiles: Sequence[Tile],
    geometry: Sequence[LevelGeometry],
    style_stats: Mapping[int, StyleLevel],
    *,
    alpha: float = 1.0,
    content_stats: ContentStats | None = None,
    on_level: LevelCallback | None = None,
) -> float:
    """The tiled cascade's level loop, wherever the tiles run.

    Per level: round A over the tiles, which the executor returns merged (in tile order, so
    every executor reduces the same numbers in the same order), one transform, round B.

    Args:
        executor: runs the rounds and holds the image (see :class:`TileExecutor`).
        tiles: from :func:`~pipeline.imaging.tiles.plan_tiles` for the image.
        geometry: the levels to run, in order (:func:`cascade_geometry`).
        style_stats: the style's statistics per level, or per level a blend of styles or one
            colouring per mask label (:func:`pipeline.engine.controls.style_levels`).
        alpha: style strength in [0, 1].
        content_stats: ``level -> statistics`` standing in for round A (thumbnail mode:
            one pass per tile, round B re-encodes); ``None`` runs the exact round A.
        on_level: called as ``on_level(level, seconds)`` after each level.

    Returns:
        Seconds spent merging statistics and building transforms (the reduction between rounds).
    """
    reduce_seconds = 0.0
    for i, geo in enumerate(geometry):
        start = time.perf_counter()
        if content_stats is None:
            stats = executor.round_a(geo, tiles)
            middle = time.perf_counter()
        else:
            middle = time.perf_counter()
            stats, geo = content_stats(geo.level), dataclasses.replace(geo, cache_features=False)
        transform = level_transform(stats, style_stats[geo.level], alpha=alpha)
        reduce_seconds += time.perf_counter() - middle
        executor.round_b(geo, tiles, transform, last=i == len(geometry) - 1)
        if on_level is not None:
            on_level(geo.level, time.perf_counter() - start)
    return reduce_seconds


class CanvasExecutor:
    """Runs tiles in this process, each level's image on a canvas.

    Tiles go through the networks one after another, or ``models.tile_batch`` equal-size
    regions at a time (:func:`map_batched`; the GPU default).

    Args:
        canvas: the reflect-padded input (see :func:`canvas_from_array`); read, never
            modified or closed.
        models: the loaded encoders/decoders.
        workdir: folder for disk canvases (intermediate images and cached features), or
            ``None`` to keep them in memory.
        on_tile: called with ``1`` after each tile of each round (progress).
        mask: labels on a canvas of the input's size (:func:`pipeline.engine.controls.read_mask`):
            round A returns statistics per label, ``labels`` of them.
        preserve_color: the last round B keeps the input's chroma (:func:`pipeline.engine.controls.keep_chroma`).
    """

    def __init__(
        self,
        canvas: Canvas,
        models: ModelSet,
        *,
        workdir: str | None,
        on_tile: TileCallback | None = None,
        mask: Canvas | None = None,
        labels: int = 0,
        preserve_color: bool = False,
    ) -> None:
        self.image = canvas
        self._input = canvas
        self._models, self._workdir, self._on_tile = models, workdir, on_tile
        self._batch = models.tile_batch
        self._mask, self._labels, self._preserve_color = mask, labels, preserve_color
        self._features: Canvas | None = None

    def _tick(self) -> None:
        if self._on_tile is not None:
            self._on_tile(1)

    def round_a(self, geo: LevelGeometry, tiles: Sequence[Tile]) -> TileStats:
        encoder = self._models.encoders[geo.level]
        if geo.cache_features:
            h, w = self.image.height // geo.scale, self.image.width // geo.scale
            self._features = open_canvas(encoder.out_channels, h, w, workdir=self._workdir, name=f"features{geo.level}")
        fold = TileStatsFold(len(tiles))
        results = round_a_tiles(self.image, tiles, encoder, geo, self._mask, self._labels, batch=self._batch)
        for i, (t, (tile_stats, features)) in enumerate(zip(tiles, results, strict=True)):
            fold.add(i, tile_stats)
            if features is not None:
                self._features.write(t.core.scaled(geo.scale), features)
            self._tick()
        return fold.result()

    def round_b(self, geo: LevelGeometry, tiles: Sequence[Tile], transform: TransformSet, *, last: bool) -> None:
        image, features = self.image, self._features if geo.cache_features else None
        encoder, decoder = self._models.encoders[geo.level], self._models.decoders[geo.level]
        out = open_canvas(3, image.height, image.width, workdir=self._workdir, name=f"level{geo.level}")
        cores = round_b_tiles(image, features, tiles, encoder, decoder, geo, transform, self._mask, batch=self._batch)
        for t, pixels in zip(tiles, cores, strict=True):
            if last and self._preserve_color:
                pixels = keep_chroma(pixels, self._input.read(t.core))
            out.write(t.core, pixels)
            self._tick()
        if self._features is not None:
            self._features.close()
            self._features = None
        if image is not self._input:
            image.close()
        self.image = out

    def close(self) -> None:
        """Release the canvases this executor made (the current level's image and cached
        features; never the input): a failed or stopped run gives their disk back at once."""
        for canvas in (self._features, self.image):
            if canvas is not None and canvas is not self._input:
                canvas.close()
        self._features, self.image = None, self._input


def tile_rounds(tiles: int, levels: int, *, exact: bool) -> int:
    """Tile rounds a cascade runs: the total that progress counts :class:`TileCallback` calls against."""
    return tiles * levels * (2 if exact else 1)


def stylize_exact(
    canvas: Canvas,
    style_stats: Mapping[int, StyleLevel],
    models: ModelSet,
    *,
    tile: int = 1024,
    alpha: float = 1.0,
    workdir: str | None = None,
    on_level: LevelCallback | None = None,
    on_tile: TileCallback | None = None,
    mask: Canvas | None = None,
    preserve_color: bool = False,
) -> Canvas:
    """Run levels 5..1 tile by tile with global statistics, in this process.

    Args:
        canvas: the reflect-padded input (see :func:`canvas_from_array`); not modified.
        style_stats: from :func:`pipeline.engine.cascade.style_statistics` with the same ``models``,
            or from :func:`pipeline.engine.controls.style_levels` (blends, masks).
        models: the loaded encoders/decoders.
        tile: core side in pixels (multiple of 16). Peak memory grows with its square.
        alpha: style strength in [0, 1].
        workdir: folder for disk canvases (intermediate images and cached features), or
            ``None`` to keep them in memory.
        on_level: called as ``on_level(level, seconds)`` after each level.
        on_tile: called with the number of tile rounds just done (progress; the total is
            :func:`tile_rounds` with ``exact=True``).
        mask: mask labels on a canvas of ``canvas``' size (:func:`pipeline.engine.controls.read_mask`),
            with one colouring per label in ``style_stats``.
        preserve_color: keep the content's chroma (:func:`pipeline.engine.controls.keep_chroma`).

    Returns:
        The output canvas (same size as ``canvas``); crop it to the image with
        :func:`read_rgb`. Equal to :func:`pipeline.engine.cascade.stylize_whole` up to float rounding.
    """
    tiles = plan_tiles(canvas.height, canvas.width, tile=tile)
    labels = label_count(next(iter(style_stats.values())))
    executor = CanvasExecutor(canvas, models, workdir=workdir, on_tile=on_tile, mask=mask, labels=labels,
                              preserve_color=preserve_color)
    return _run_in_process(executor, tiles, _model_geometry(models), style_stats, alpha=alpha, on_level=on_level)


def _run_in_process(executor: CanvasExecutor, *args: Any, **kwargs: Any) -> Canvas:
    """:func:`run_levels` on ``executor``, returning its output canvas; a failure or a stop
    releases its canvases before going on up."""
    try:
        run_levels(executor, *args, **kwargs)
    except BaseException:
        executor.close()
        raise
    return executor.image


def _model_geometry(models: ModelSet) -> list[LevelGeometry]:
    return cascade_geometry({k: models.encoders[k].out_channels for k in models.levels})


def thumbnail(canvas: Canvas, height: int, width: int, *, size: int = 1024, band_blocks: int = 64) -> torch.Tensor:
    """Box-filtered copy of the image part of ``canvas`` with its longer side at most ``size``.

    Rows are averaged a band of blocks at a time, so the full-resolution image is never read
    whole. Returns ``(1, 3, h, w)`` float32.
    """
    factor = _thumbnail_factor(height, width, size)
    th, tw = height // factor, width // factor
    rows = []
    for by in range(0, th, band_blocks):
        n = min(band_blocks, th - by)
        block = canvas.read(Rect(by * factor, 0, (by + n) * factor, tw * factor))
        rows.append(block.reshape(3, n, factor, tw, factor).mean(axis=(2, 4)))
    return torch.from_numpy(np.concatenate(rows, axis=1))[None]


def _thumbnail_factor(height: int, width: int, size: int) -> int:
    return max(1, -(-max(height, width) // size))


def thumbnail_mask(mask: Canvas, height: int, width: int, *, size: int = 1024, band_blocks: int = 64) -> torch.Tensor:
    """The labels of :func:`thumbnail`'s pixels (each block's top-left label), reflect-padded
    like the thumbnail to a multiple of 16. Returns ``(h', w')`` int64."""
    factor = _thumbnail_factor(height, width, size)
    th, tw = height // factor, width // factor
    rows = [mask.read(Rect(by * factor, 0, min(by + band_blocks, th) * factor, tw * factor))[0, ::factor, ::factor]
            for by in range(0, th, band_blocks)]
    labels = torch.from_numpy(np.concatenate(rows, axis=0))[None, None]
    return pad_to_multiple(labels)[0, 0].to(torch.int64)


class _ThumbnailStats:
    """Content statistics per level from a downscaled copy run through the whole-image cascade.

    Called for levels 5..1 in order: each call encodes the copy, returns its statistics and
    advances the copy by that level's transform, as :func:`pipeline.engine.cascade.stylize_whole` does.
    """

    def __init__(
        self,
        small: torch.Tensor,
        models: ModelSet,
        style_stats: Mapping[int, StyleLevel],
        alpha: float,
        mask: torch.Tensor | None = None,
    ):
        self._small, self._models, self._style, self._alpha = small, models, style_stats, alpha
        self._mask = mask

    def __call__(self, level: int) -> TileStats:
        features = encode(self._models.encoders[level], self._small)
        style = self._style[level]
        labels = None if self._mask is None else sample_labels(self._mask, 2 ** (level - 1))
        stats = region_stats(features, labels, label_count(style))
        transform = level_transform(stats, style, alpha=self._alpha)
        self._small = decode_transformed(self._models.decoders[level], features, transform, labels)
        return stats


def stylize_thumbnail(
    canvas: Canvas,
    height: int,
    width: int,
    style_stats: Mapping[int, StyleLevel],
    models: ModelSet,
    *,
    tile: int = 1024,
    alpha: float = 1.0,
    thumbnail_size: int = 1024,
    workdir: str | None = None,
    on_level: LevelCallback | None = None,
    on_tile: TileCallback | None = None,
    mask: Canvas | None = None,
    preserve_color: bool = False,
) -> Canvas:
    """Approximate tiled cascade: each level's content statistics from a downscaled copy.

    The thumbnail runs the whole-image cascade alongside; its per-level statistics stand in
    for the full image's, so every tile is encoded, transformed and decoded in one pass (no
    round A). Faster than :func:`stylize_exact` by the cost of round A, but the result differs
    from the whole-image one by however much the thumbnail's statistics differ (docs/benchmarks.md
    gives the figures). Same level loop (:func:`run_levels`) and executor as the exact mode,
    and the same controls (``mask``, ``preserve_color``); a mask's labels are sampled onto the
    thumbnail by the same top-left rule.
    """
    tiles = plan_tiles(canvas.height, canvas.width, tile=tile)
    small = pad_to_multiple(thumbnail(canvas, height, width, size=thumbnail_size)).to(models.device)
    small_mask = None if mask is None else thumbnail_mask(mask, height, width, size=thumbnail_size)
    labels = label_count(next(iter(style_stats.values())))
    executor = CanvasExecutor(canvas, models, workdir=workdir, on_tile=on_tile, mask=mask, labels=labels,
                              preserve_color=preserve_color)
    stats = _ThumbnailStats(small, models, style_stats, alpha, small_mask)
    return _run_in_process(executor, tiles, _model_geometry(models), style_stats, alpha=alpha, content_stats=stats,
                           on_level=on_level)
