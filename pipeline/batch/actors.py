"""The batch job's Ray side: a model actor and two I/O tasks, each a thin wrapper.

The actor loads the weights once in ``__init__``; each method unpacks its arguments, calls
pipeline functions (:func:`~pipeline.engine.tiled.round_a_tiles`, :func:`~pipeline.engine.tiled.round_b_tiles`
for several tiles per call, :func:`~pipeline.engine.runner.stylize_file`,
:func:`~pipeline.engine.runner.load_style`) and packs the result with the seconds it took. The
tasks read and cut an image (:func:`cut_image`) and stitch and write one
(:func:`write_chunks`). Resources, restarts and retries are set where they are called
(:mod:`pipeline.batch.driver`, from the job's flags), never here. Together with
:mod:`pipeline.batch.driver` and :mod:`pipeline.batch.executor` these are the only pipeline modules
that import Ray.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from pipeline.batch.transient import is_transient, quiet_storage_faults
from pipeline.engine.models import load_model_set
from pipeline.engine.precision import DEFAULT_PRECISION, Precision, tf32_flags
from pipeline.engine.runner import Mode, RunReport, StyleLevels, StyleStats, load_style, read_content, stylize_file
from pipeline.engine.stats import FeatureStats
from pipeline.engine.tiled import level_geometry, round_a_tiles, round_b_tiles
from pipeline.engine.wct import ColorTransform
from pipeline.errors import one_line_error
from pipeline.imaging.canvas import MemoryCanvas
from pipeline.imaging.chunks import ChunkCanvas, compact, intersection
from pipeline.imaging.imageio import ImageError
from pipeline.imaging.output import canvas_to_uint8, write_canvas
from pipeline.imaging.tiles import Rect, Tile, canvas_size, plan_tiles

__all__ = ["CallInfo", "ImageHeader", "ModelActor", "WorkerInfo", "cut_image", "write_chunks"]


@dataclass(frozen=True)
class ImageHeader:
    """First value :func:`cut_image` returns: what the driver needs besides the cores.

    Attributes:
        width, height: image size in pixels (after EXIF orientation).
        has_alpha: the input has an alpha channel, re-attached to the output.
        icc_profile: the input's ICC profile, for the output.
        read_seconds: fetching, decoding and cutting the input.
    """

    width: int
    height: int
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
        node_id: the Ray node it runs on.
        channels: encoder output channels per level (sets the level's geometry).
        tile_batch: tile regions it puts through a network at once.
    """

    worker: str
    model_id: str
    device: str
    pid: int
    node_id: str
    channels: dict[int, int]
    tile_batch: int = 1


@dataclass(frozen=True)
class CallInfo:
    """The small part of a model call's result, which the driver fetches.

    Attributes:
        worker: the actor that ran the call.
        seconds: time spent in the pipeline function(s).
        stats: round A's feature statistics of each tile's core, in the call's tile order.
        report: for an image run in one call, the engine's report (size, mode, tiles and
            seconds per stage, ``write`` included).
        error: for one image of :meth:`ModelActor.stylize_files`, why it failed (one line;
            empty when it did not).
        transient: the failure was a storage fault worth another try
            (:func:`~pipeline.batch.transient.is_transient`).
    """

    worker: str
    seconds: float
    stats: tuple[FeatureStats, ...] = ()
    report: RunReport | None = None
    error: str = ""
    transient: bool = False


@ray.remote
def cut_image(
    content_uri: str,
    *,
    width: int,
    height: int,
    tile: int,
    max_pixels: int,
    storage_options: dict[str, Any] | None,
) -> tuple[ImageHeader | np.ndarray | None, ...]:
    """Read an image and cut it into tile cores, one object each (call with ``num_returns=1 + 2 * tiles``).

    Returns an :class:`ImageHeader`, then per core of the reflect-padded canvas (in
    :func:`~pipeline.imaging.tiles.plan_tiles` order) its ``(3, h, w)`` pixels, then per core its
    ``(1, h', w')`` alpha clipped to the image (``None`` without alpha). Values are uint8
    where that is lossless (8-bit inputs), else float32 in [0, 1] (see
    :func:`~pipeline.imaging.chunks.compact`). The image goes through
    :func:`~pipeline.engine.runner.read_content` onto a disk canvas a strip at a time.

    Args:
        width, height: the size the driver read from the header and planned the tiles for.

    Raises:
        ImageError: the input is missing, not an image, corrupt, over ``max_pixels``, or
            decodes to another size than its header said.
    """
    quiet_storage_faults()
    start = time.perf_counter()
    # Disk canvases are unlinked files: a worker that fails, or that Ray kills, leaves none behind.
    image = read_content(content_uri, storage_options, workdir=tempfile.gettempdir(), max_pixels=max_pixels)
    try:
        if (image.width, image.height) != (width, height):
            raise ImageError(f"{content_uri} decodes to {image.width}x{image.height}, its header says {width}x{height}")
        bounds = Rect(0, 0, height, width)
        cores = [t.core for t in plan_tiles(height, width, tile=tile)]
        canvas, alpha = image.canvas, image.alpha
        header = ImageHeader(width, height, alpha is not None, image.icc_profile, 0.0)
        pixels = [compact(canvas.read(core)) for core in cores]
        alphas = [None if alpha is None else compact(alpha.read(intersection(core, bounds))) for core in cores]
    finally:
        image.close()
    header = dataclasses.replace(header, read_seconds=time.perf_counter() - start)
    return (header, *pixels, *alphas)


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
        chunks: ``(3, h, w)`` cores, then ``(1, h', w')`` alpha chunks, uint8 or float32 (object-store
            arrays, read in place).
        quality: JPEG/WebP quality.
        storage_options: passed to the output filesystem.
    """
    quiet_storage_faults()
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
        weights: the location of the weights the driver checked (``None``:
            ``$ULTRASTYLE_WEIGHTS`` or the embedded CD 16x files).
        name: the actor's name in logs and the manifest.
        device: ``cpu`` or ``cuda`` (the call site asks Ray for a GPU when it is ``cuda``).
        threads: torch intra-op threads; the CPUs Ray reserved for this actor, so that
            several actors on one node do not oversubscribe it.
        storage_options: passed to fsspec for weights, styles and outputs.
        precision: ``--precision``; loading the models in it also sets this actor process's
            TF32 switches (:func:`~pipeline.engine.precision.apply_precision`).
        tile_batch: ``--tile-batch``, tile regions per network call (``None``: the device's default).
    """

    def __init__(
        self,
        weights: str | None,
        *,
        name: str,
        device: str,
        threads: int,
        storage_options: dict[str, Any] | None,
        precision: Precision = DEFAULT_PRECISION,
        tile_batch: int | None = None,
    ) -> None:
        quiet_storage_faults()
        torch.set_num_threads(threads)
        self.models = load_model_set(weights, device=device, storage_options=storage_options, precision=precision,
                                     tile_batch=tile_batch)
        self.storage_options = storage_options
        self.worker = f"{name}@{ray.util.get_node_ip_address()}"
        self.geometry = {k: level_geometry(k, enc.out_channels) for k, enc in self.models.encoders.items()}

    def describe(self) -> WorkerInfo:
        """Who this actor is and what it loaded."""
        channels = {k: enc.out_channels for k, enc in self.models.encoders.items()}
        node = ray.get_runtime_context().get_node_id()
        return WorkerInfo(self.worker, self.models.model_id, str(self.models.device), os.getpid(), node, channels,
                          self.models.tile_batch)

    def tf32_flags(self) -> dict[str, bool]:
        """This actor process's TF32 switches (:func:`~pipeline.engine.precision.tf32_flags`)."""
        return tf32_flags()

    def style(self, style_uri: str, *, style_size: int | None, max_pixels: int) -> StyleStats:
        """A style's statistics at every level (computed once per style, shared by reference)."""
        return load_style(
            style_uri, self.models, style_size=style_size, storage_options=self.storage_options, max_pixels=max_pixels
        )

    def stylize_file(
        self,
        content_uri: str,
        style: StyleStats | StyleLevels,
        output_uri: str,
        *,
        mode: Mode,
        tile: int,
        alpha: float,
        max_pixels: int,
        quality: int,
        mask_uri: str | None = None,
        preserve_color: bool = False,
    ) -> CallInfo:
        """An image in one call that reads and writes it too (one-tile images, ``whole`` and
        ``thumbnail`` modes, and the creative controls: ``mask_uri`` with one colouring per
        style in ``style``, ``preserve_color``).

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
            mask_uri=mask_uri,
            preserve_color=preserve_color,
        )
        return CallInfo(self.worker, time.perf_counter() - start, report=report)

    def stylize_files(
        self,
        style: StyleStats | StyleLevels,
        items: Sequence[tuple[str, str, str | None]],
        *,
        mode: Mode,
        tile: int,
        alpha: float,
        max_pixels: int,
        quality: int,
        preserve_color: bool = False,
    ) -> list[CallInfo]:
        """Several small images in one call, one after another, as :meth:`stylize_file` runs each.

        A batch of small images per call keeps this actor busy without a round trip to the
        driver per image. An image that fails gets its one-line error in its
        :class:`CallInfo` and the rest go on.

        Args:
            style: the statistics every image of the call is stylized with.
            items: ``(content_uri, output_uri, mask_uri or None)`` per image.
        """
        results = []
        for content_uri, output_uri, mask_uri in items:
            try:
                results.append(self.stylize_file(content_uri, style, output_uri, mode=mode, tile=tile, alpha=alpha,
                                                 max_pixels=max_pixels, quality=quality, mask_uri=mask_uri,
                                                 preserve_color=preserve_color))
            except Exception as e:
                results.append(CallInfo(self.worker, 0.0, error=one_line_error(e), transient=is_transient(e)))
        return results

    def round_a(
        self, level: int, tiles: Sequence[Tile], size: tuple[int, int], rects: Sequence[Rect], *chunks: np.ndarray
    ) -> CallInfo | tuple[CallInfo | np.ndarray, ...]:
        """Round A of ``level`` for several tiles, on the level's input cores around them.

        Args:
            level: 5..1.
            tiles: the tiles whose cores are computed.
            size: ``(height, width)`` of the padded canvas.
            rects, chunks: the input cores their encoder halos reach (``(3, h, w)``, float32
                or uint8).

        Returns:
            The :class:`CallInfo` with each core's statistics; where the level caches
            features (call with ``num_returns=1 + len(tiles)``), followed by each core's
            ``(C, h / scale, w / scale)`` float32 features.
        """
        start = time.perf_counter()
        canvas = ChunkCanvas(3, *size, zip(rects, chunks, strict=True))
        encoder, geo = self.models.encoders[level], self.geometry[level]
        results = list(round_a_tiles(canvas, tiles, encoder, geo, batch=self.models.tile_batch))
        info = CallInfo(self.worker, time.perf_counter() - start, stats=tuple(s for s, _ in results))
        return (info, *(f for _, f in results)) if geo.cache_features else info

    def round_b(
        self,
        level: int,
        tiles: Sequence[Tile],
        size: tuple[int, int],
        transform: ColorTransform,
        last: bool,
        rects: Sequence[Rect],
        *chunks: np.ndarray,
    ) -> tuple[CallInfo | np.ndarray, ...]:
        """Round B of ``level`` for several tiles: their cores of the next level's image
        (call with ``num_returns=1 + len(tiles)``).

        Args:
            level: 5..1.
            tiles: the tiles whose cores are computed.
            size: ``(height, width)`` of the padded canvas.
            transform: the level's global whitening-colouring transform.
            last: the output level: cores come back as uint8, rounded as the output writer
                rounds (a quarter of the bytes, the same file).
            rects, chunks: where the level caches features, round A's feature cores the
                decoder halos reach (rects at feature scale); otherwise the level's input
                cores the full halos reach.

        Returns:
            ``(CallInfo, core, ...)``, each core ``(3, h, w)`` float32 (uint8 when ``last``).
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
        cores = []
        decoder, batch = self.models.decoders[level], self.models.tile_batch
        results = round_b_tiles(image, features, tiles, encoder, decoder, geo, transform, batch=batch)
        for t, pixels in zip(tiles, results, strict=True):
            if last:
                pixels = canvas_to_uint8(MemoryCanvas(pixels), t.core.height, t.core.width).transpose(2, 0, 1)
            cores.append(np.ascontiguousarray(pixels))
        return (CallInfo(self.worker, time.perf_counter() - start), *cores)
