"""The batch job's Ray side: a model actor and two I/O tasks, each a thin wrapper.

The actor loads the weights once in ``__init__``; each method unpacks its arguments, calls
one pipeline function (:func:`~pipeline.tiled.tile_round_a`, :func:`~pipeline.tiled.tile_round_b`,
:func:`~pipeline.engine.stylize_image`, :func:`~pipeline.engine.stylize_file`,
:func:`~pipeline.engine.load_style`) and packs the
result with the seconds it took. The tasks read and cut an image (:func:`cut_image`) and
stitch and write one (:func:`write_chunks`). Resources, restarts and retries are set where
they are called (:mod:`pipeline.batch`, from the job's flags), never here. Together with
:mod:`pipeline.batch` this is the only pipeline module that imports Ray.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from pipeline.chunks import ChunkCanvas, intersection
from pipeline.engine import (
    Mode,
    RunReport,
    StyleStats,
    load_style,
    read_content,
    stylize_file,
    stylize_image,
    write_result,
)
from pipeline.imageio import LoadedImage
from pipeline.models import load_model_set
from pipeline.output import write_canvas
from pipeline.stats import FeatureStats
from pipeline.tiled import level_geometry, read_rgb, tile_round_a, tile_round_b
from pipeline.tiles import Rect, Tile, canvas_size, plan_tiles
from pipeline.wct import ColorTransform

__all__ = ["CallInfo", "ImageHeader", "ModelActor", "WorkerInfo", "cut_image", "write_chunks"]


@dataclass(frozen=True)
class ImageHeader:
    """First item :func:`cut_image` yields: what the driver needs to plan the image.

    Attributes:
        width, height: image size in pixels (after EXIF orientation).
        one_call: the image fits in one tile and goes to one actor call whole; the next
            item is then the decoded :class:`~pipeline.imageio.LoadedImage`.
        tiles: tile cores the image is cut into otherwise; the next items are, per core in
            :func:`~pipeline.tiles.plan_tiles` order, its ``(3, h, w)`` float32 pixels and,
            when ``has_alpha``, its ``(1, h', w')`` alpha (the core clipped to the image).
        has_alpha: the input has an alpha channel, re-attached to the output.
        icc_profile: the input's ICC profile, for the output.
        read_seconds: fetching and decoding the input onto a canvas.
    """

    width: int
    height: int
    one_call: bool
    tiles: int
    has_alpha: bool
    icc_profile: bytes | None
    read_seconds: float


@dataclass(frozen=True)
class WorkerInfo:
    """What a model actor reports about itself once loaded.

    Attributes:
        worker: ``<name>@<node ip>``, the manifest's ``worker`` value.
        model_id: the weight set's id.
        device: where the models run (``cpu``, ``cuda``).
        pid: the actor's process id, for the operator's logs.
        channels: encoder output channels per level (sets the level's geometry).
    """

    worker: str
    model_id: str
    device: str
    pid: int
    channels: dict[int, int]


@dataclass(frozen=True)
class CallInfo:
    """The small part of a model call's result, which the driver fetches.

    Attributes:
        worker: the actor that ran the call.
        seconds: time spent in the pipeline function(s).
        stats: round A's feature statistics of the tile's core (``None`` for other calls).
        report: for an image run in one call, the engine's report (size, mode, tiles and
            seconds per stage, ``write`` included).
    """

    worker: str
    seconds: float
    stats: FeatureStats | None = None
    report: RunReport | None = None


@ray.remote
def cut_image(
    content_uri: str,
    *,
    tile: int,
    max_pixels: int,
    storage_options: dict[str, Any] | None,
) -> Iterator[ImageHeader | LoadedImage | np.ndarray]:
    """Read an image and stream it to the object store as tile cores (a Ray generator).

    Yields an :class:`ImageHeader`, then either the :class:`~pipeline.imageio.LoadedImage`
    (``header.one_call``) or, per core of the reflect-padded canvas, its ``(3, h, w)``
    float32 pixels in [0, 1] and its alpha when the image has one. The image goes through
    :func:`~pipeline.engine.read_content` onto a disk canvas a strip at a time, so this task
    holds one strip, then one core, at a time.

    Raises:
        ImageError: the input is missing, not an image, corrupt, or over ``max_pixels``.
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ultrastyle-cut-") as workdir:
        image = read_content(content_uri, storage_options, workdir=workdir, max_pixels=max_pixels)
        h, w = image.height, image.width
        bounds = Rect(0, 0, h, w)
        cores = [t.core for t in plan_tiles(h, w, tile=tile)]
        one_call = len(cores) == 1
        seconds = time.perf_counter() - start
        yield ImageHeader(w, h, one_call, len(cores), image.alpha is not None, image.icc_profile, seconds)
        if one_call:
            alpha = None if image.alpha is None else image.alpha.read(bounds)[0]
            loaded = LoadedImage(read_rgb(image.canvas, h, w), alpha, image.icc_profile, image.format)
            image.close()
            yield loaded
            return
        canvas, alpha = image.canvas, image.alpha
        del image
        try:
            for core in cores:
                yield canvas.read(core)
                if alpha is not None:
                    yield alpha.read(intersection(core, bounds))
        finally:
            canvas.close()
            if alpha is not None:
                alpha.close()


@ray.remote
def write_chunks(
    output_uri: str,
    height: int,
    width: int,
    rects: Sequence[Rect],
    alpha_rects: Sequence[Rect],
    icc_profile: bytes | None,
    *chunks: np.ndarray,
    quality: int,
    storage_options: dict[str, Any] | None,
) -> float:
    """Stitch the last level's cores and write the output atomically; returns the seconds taken.

    Args:
        output_uri: where the image goes (format by extension).
        height, width: the image size; the cores cover its padded canvas.
        rects: each core's rectangle, in the order of the first ``len(rects)`` chunks.
        alpha_rects: each alpha chunk's rectangle (empty without alpha), in the order of
            the chunks after those.
        icc_profile: ICC profile to embed, or ``None``.
        chunks: ``(3, h, w)`` float32 cores, then ``(1, h', w')`` alpha chunks (object-store
            arrays, read in place).
        quality: JPEG/WebP quality.
        storage_options: passed to the output filesystem.
    """
    start = time.perf_counter()
    pixels, alphas = chunks[: len(rects)], chunks[len(rects) :]
    canvas = ChunkCanvas(3, *canvas_size(height, width), zip(rects, pixels, strict=True))
    alpha = ChunkCanvas(1, height, width, zip(alpha_rects, alphas, strict=True)) if alpha_rects else None
    write_canvas(
        output_uri,
        canvas,
        height,
        width,
        alpha=alpha,
        icc_profile=icc_profile,
        quality=quality,
        storage_options=storage_options,
    )
    return time.perf_counter() - start


@ray.remote
class ModelActor:
    """Holds one weight set on one device and runs the engine's per-tile functions on it.

    Args:
        weights: the ``--weights`` URI (``None``: ``$ULTRASTYLE_WEIGHTS`` or the embedded CD 16x files).
        name: the actor's name in logs and the manifest.
        device: ``cpu`` or ``cuda`` (the call site asks Ray for a GPU when it is ``cuda``).
        threads: torch intra-op threads; the CPUs Ray reserved for this actor, so that
            several actors on one node do not oversubscribe it.
        storage_options: passed to fsspec for weights, styles and outputs.
    """

    def __init__(
        self,
        weights: str | None,
        *,
        name: str,
        device: str,
        threads: int,
        storage_options: dict[str, Any] | None,
    ) -> None:
        torch.set_num_threads(threads)
        self.models = load_model_set(weights, device=device, storage_options=storage_options)
        self.storage_options = storage_options
        self.worker = f"{name}@{ray.util.get_node_ip_address()}"
        self.geometry = {k: level_geometry(k, enc.out_channels) for k, enc in self.models.encoders.items()}

    def describe(self) -> WorkerInfo:
        """Who this actor is and what it loaded."""
        channels = {k: enc.out_channels for k, enc in self.models.encoders.items()}
        return WorkerInfo(self.worker, self.models.model_id, str(self.models.device), os.getpid(), channels)

    def style(self, style_uri: str, *, style_size: int | None, max_pixels: int) -> StyleStats:
        """A style's statistics at every level (computed once per style, shared by reference)."""
        return load_style(
            style_uri, self.models, style_size=style_size, storage_options=self.storage_options, max_pixels=max_pixels
        )

    def stylize(
        self,
        image: LoadedImage,
        style: StyleStats,
        output_uri: str,
        *,
        mode: Mode,
        tile: int,
        alpha: float,
        quality: int,
    ) -> CallInfo:
        """A small image in one call: the whole cascade, then the output written atomically."""
        start = time.perf_counter()
        # Object-store arrays are read-only, and torch wants writable memory to wrap.
        image = dataclasses.replace(image, rgb=np.array(image.rgb))
        canvas, report = stylize_image(image, style, self.models, mode=mode, tile=tile, alpha=alpha)
        middle = time.perf_counter()
        write_result(output_uri, canvas, image, quality=quality, storage_options=self.storage_options)
        report.seconds["write"] = time.perf_counter() - middle
        return CallInfo(self.worker, time.perf_counter() - start, report=report)

    def stylize_file(
        self,
        content_uri: str,
        style: StyleStats,
        output_uri: str,
        *,
        mode: Mode,
        tile: int,
        alpha: float,
        max_pixels: int,
        quality: int,
    ) -> CallInfo:
        """An image in one call that reads and writes it too (``whole`` and ``thumbnail`` modes).

        The engine keeps its intermediate images on disk canvases in a temporary folder, so
        a large image costs this actor disk, not memory.
        """
        start = time.perf_counter()
        report = stylize_file(
            content_uri,
            output_uri,
            style,
            self.models,
            mode=mode,
            tile=tile,
            alpha=alpha,
            max_pixels=max_pixels,
            quality=quality,
            storage_options=self.storage_options,
        )
        return CallInfo(self.worker, time.perf_counter() - start, report=report)

    @ray.method(num_returns=2)
    def round_a(
        self, level: int, tile: Tile, size: tuple[int, int], rects: Sequence[Rect], *chunks: np.ndarray
    ) -> tuple[CallInfo, np.ndarray]:
        """Round A of ``level`` for one tile, on the level's input cores around it.

        Args:
            level: 5..1.
            tile: the tile whose core is computed.
            size: ``(height, width)`` of the padded canvas.
            rects, chunks: the input cores its encoder halo reaches, ``(3, h, w)`` float32.

        Returns:
            ``(CallInfo with the core's statistics, (C, h / scale, w / scale) float32 features)``.
        """
        start = time.perf_counter()
        canvas = ChunkCanvas(3, *size, zip(rects, chunks, strict=True))
        stats, features = tile_round_a(canvas, tile, self.models.encoders[level], self.geometry[level])
        return CallInfo(self.worker, time.perf_counter() - start, stats=stats), features

    @ray.method(num_returns=2)
    def round_b(
        self,
        level: int,
        tile: Tile,
        size: tuple[int, int],
        transform: ColorTransform,
        rects: Sequence[Rect],
        *chunks: np.ndarray,
    ) -> tuple[np.ndarray, CallInfo]:
        """Round B of ``level`` for one tile: its core of the next level's image.

        Args:
            level: 5..1.
            tile: the tile whose core is computed.
            size: ``(height, width)`` of the padded canvas.
            transform: the level's global whitening-colouring transform.
            rects, chunks: where the level caches features, round A's feature cores its
                decoder halo reaches (rects at feature scale); otherwise the level's input
                cores its full halo reaches.

        Returns:
            ``((3, h, w) float32 core, CallInfo)``.
        """
        start = time.perf_counter()
        geo = self.geometry[level]
        encoder = self.models.encoders[level]
        image = ChunkCanvas(3, *size)
        features = None
        if geo.cache_features:
            scaled = (size[0] // geo.scale, size[1] // geo.scale)
            features = ChunkCanvas(encoder.out_channels, *scaled, zip(rects, chunks, strict=True))
        else:
            image = ChunkCanvas(3, *size, zip(rects, chunks, strict=True))
        # Arrays from the object store are read-only, which torch warns about when wrapping them.
        transform = ColorTransform(np.array(transform.matrix), np.array(transform.bias))
        pixels = tile_round_b(image, features, tile, encoder, self.models.decoders[level], geo, transform)
        return pixels, CallInfo(self.worker, time.perf_counter() - start)
