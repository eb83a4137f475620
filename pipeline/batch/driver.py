"""The batch job's driver: every (content, style) pair under a prefix, on Ray.

What runs where:

- the driver (this module) lists the inputs, plans the pairs, skips those a previous run
  finished, admits pairs under a pixel budget, retries a pair whose worker or node was lost,
  writes the manifest and shows progress: the pair-level concerns only;
- each admitted pair runs in a thread of the driver: the image is cut by a
  :func:`~pipeline.batch.actors.cut_image` task into one object per tile core, the tiled
  cascade's one level loop (:func:`pipeline.engine.tiled.run_levels`) runs it with a
  :class:`~pipeline.batch.executor.RayExecutor`, and a :func:`~pipeline.batch.actors.write_chunks`
  task stitches and writes the output. The controls run the same way: a mask as one label
  core per tile, colour preservation on the output's cores, a stroke scale as a second, shrunk
  image through the same loop and a band split (:func:`pipeline.engine.strokes.run_strokes`).
  Images that fit in one tile, and the ``whole`` and ``thumbnail`` modes, go to one actor call
  that reads, stylizes and writes;
- a pool of :class:`~pipeline.batch.actors.ModelActor` (one GPU each on a GPU cluster, else
  CPUs), shared by all pairs (:class:`~pipeline.batch.executor.ModelPool`), runs every model call.

Admission is by pixels: a pair starts when the megapixels in flight (read from each image's
header before it is decoded) stay within ``--max-in-flight-mp``, which by default is sized
from the cluster's object store at :data:`STORE_BYTES_PER_PIXEL`; ``--max-in-flight`` caps the
count as well. Failures stay with their pair: a bad input, style or output fails that pair's
manifest row with one line, and the job carries on. A model actor that dies is restarted by
Ray and its calls retried; a pair whose objects or tasks were lost with a node is run again
(``--retries``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayError, RayTaskError

from models import WeightSet
from pipeline.batch.actors import CallInfo, CutImage, ImageHeader, ModelActor, cut_image, write_chunks
from pipeline.batch.executor import Call, ModelPool, NoActorsError, RayExecutor, tiles_per_call
from pipeline.batch.manifest import (
    ManifestRow,
    ManifestWriter,
    Pair,
    existing_files,
    list_inputs,
    new_run_id,
    one_line_error,
    plan_pairs,
    read_manifest,
    resume,
    summarize,
)
from pipeline.batch.preflight import check_actor_device, check_batch, check_placement, default_workers
from pipeline.engine.controls import join_styles, label_count, mask_for, split_styles, style_levels
from pipeline.engine.device import resolve_device
from pipeline.engine.runner import StyleStats
from pipeline.engine.strokes import resolve_stroke_scale, run_strokes, stroke_tile_rounds
from pipeline.engine.tiled import cascade_geometry, run_levels
from pipeline.imaging.chunks import intersection
from pipeline.imaging.imageio import check_pixels, image_size
from pipeline.imaging.resample import BandSplit
from pipeline.imaging.tiles import Rect, Tile, canvas_size, plan_tiles
from pipeline.options import BatchOptions, StyleOptions
from pipeline.progress import BatchProgress

__all__ = ["STORE_BYTES_PER_PIXEL", "BatchSettings", "run_batch"]

log = logging.getLogger("ultrastyle.batch")

# Modes whose cascade is not split into per-tile rounds: one actor call reads, stylizes and writes.
_ONE_CALL_MODES = ("whole", "thumbnail")
# Object-store bytes per image pixel in flight, at the peak of the exact cascade with the 16x
# models (level 3: its cached features, 16 B, and the next level's float32 image, 12 B, the
# input alpha 1 B, rounded up); docs/benchmarks.md gives the measured figure.
STORE_BYTES_PER_PIXEL = 32
# First wait before a pair lost with a worker or node runs again (doubled at each retry).
_RETRY_SECONDS = 2.0
# Share of the object store the default --max-in-flight-mp plans for (the rest absorbs
# objects not yet freed and other users of the store).
_STORE_SHARE = 0.5


@dataclass(frozen=True)
class BatchSettings:
    """The job's cluster settings, with the defaults that depend on the cluster resolved
    (from :class:`~pipeline.options.BatchOptions`).

    Attributes:
        workers: model actors.
        gpus_per_worker, cpus_per_worker: what each actor reserves; the CPUs set its torch threads.
        device: where each actor loads its models: ``cuda`` when it reserves GPUs, else ``cpu``.
        io_cpus: CPUs each read/cut and write task reserves (0: they are I/O bound and
            their number is bounded by admission).
        max_in_flight: images being processed at once.
        max_in_flight_mp: megapixels being processed at once (an image larger than this
            runs alone).
        retries: actor restarts, actor call retries, I/O task retries on worker loss, and
            runs of a pair whose objects or workers were lost.
        progress_seconds: interval of the progress line when it is not a terminal.
    """

    workers: int
    gpus_per_worker: float
    cpus_per_worker: float
    device: str
    io_cpus: float
    max_in_flight: int
    max_in_flight_mp: float
    retries: int
    progress_seconds: float


def _connect_ray() -> bool:
    """Join the Ray that is already up (in-process, ``RAY_ADDRESS``, ``ray job submit``) or start one.

    Returns:
        Whether this call started a local Ray, which the job then shuts down.
    """
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    ray.init(address=address or "local")
    log.info("Ray: %s", f"joined the cluster at {address}" if address else "started a local instance")
    return address is None


def _settings(options: BatchOptions) -> BatchSettings:
    """Resolve the defaults that depend on the cluster: GPU actors (on CUDA) when it has GPUs
    and the device allows them, else CPU actors; the pixel budget from the object store."""
    resources = ray.cluster_resources()
    device = options.style_options.device
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if device == "cuda" or (device == "auto" and resources.get("GPU", 0) > 0) else 0.0
    cpus = options.cpus_per_worker
    workers = options.workers
    if workers is None:
        workers = default_workers(_nodes(), cpus=cpus, gpus=gpus, io_cpus=options.io_cpus)
    budget = options.max_in_flight_mp
    if budget is None:
        budget = resources.get("object_store_memory", 0) * _STORE_SHARE / STORE_BYTES_PER_PIXEL / 1e6
    return BatchSettings(
        workers=workers,
        gpus_per_worker=gpus,
        cpus_per_worker=cpus,
        # The actor loads the models, so what counts is whether it has a GPU, not whether this driver does.
        device=resolve_device(device, cuda_available=gpus > 0),
        io_cpus=options.io_cpus,
        max_in_flight=options.max_in_flight,
        max_in_flight_mp=budget,
        retries=options.retries,
        progress_seconds=options.progress_seconds,
    )


@dataclass
class _Style:
    """A style image's statistics: the driver's copy (for the transforms) and an object ref
    (for one-call pairs), or why it failed."""

    uri: str
    stats: StyleStats | None = None
    ref: ray.ObjectRef | None = None
    error: str = ""


@dataclass
class _PairResult:
    """What one run of a pair measured, for its manifest row."""

    width: int = 0
    height: int = 0
    tiles: int = 0
    mode: str = ""
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_STAGES, 0.0))
    workers: set[str] = field(default_factory=set)


_STAGES = ("read", "stylize", "compute", "reduce", "write")


def _row(
    pair: Pair, status: str, result: _PairResult, *, started: float, model_id: str, error: str = ""
) -> ManifestRow:
    """The manifest row of a pair that ran (``ok``) or failed while running."""
    s = result.seconds
    return ManifestRow(
        pair.content_uri,
        pair.style_uri,
        pair.output_uri,
        status,
        error=error,
        width=result.width,
        height=result.height,
        tiles=result.tiles,
        mode=result.mode,
        seconds=time.perf_counter() - started,
        read_seconds=s["read"],
        stylize_seconds=s["stylize"],
        compute_seconds=s["compute"],
        reduce_seconds=s["reduce"],
        write_seconds=s["write"],
        worker=",".join(sorted(result.workers)),
        model_id=model_id,
    )


def _lost(error: BaseException) -> bool:
    """A failure of the cluster (worker, node or object lost), not of the pair's input: worth a rerun."""
    return isinstance(error, RayError) and not isinstance(error, RayTaskError)


class _Job:
    """Runs the pairs on a started actor pool and returns their manifest rows."""

    def __init__(
        self,
        options: BatchOptions,
        settings: BatchSettings,
        writer: ManifestWriter,
        pool: ModelPool,
        progress: BatchProgress,
    ) -> None:
        self.options, self.settings, self.writer = options, settings, writer
        self.style_options = options.style_options
        self.pool, self.progress = pool, progress
        info = pool.infos[0]
        self.model_id = info.model_id
        self.geometry = cascade_geometry(info.channels)
        self.rows: list[ManifestRow] = []
        self._unwritten: list[ManifestRow] = []

    # -- rows --------------------------------------------------------------------------------

    def record(self, rows: Sequence[ManifestRow]) -> None:
        """Count and log ``rows``; :meth:`flush` writes them."""
        self._unwritten.extend(rows)
        for row in rows:
            self.progress.pair(row.status, row.megapixels if row.status == "ok" else 0.0)
            done, total = self.progress.done, self.progress.total_pairs
            if row.status == "ok":
                log.info("[%d/%d] ok %s (%dx%d, %d tiles, %.1f s)", done, total, row.output_uri, row.width,
                         row.height, row.tiles, row.seconds)
            else:
                log.warning("[%d/%d] failed %s x %s: %s", done, total, row.content_uri, row.style_uri, row.error)
        self.rows.extend(rows)

    def flush(self) -> None:
        """Write the rows finished since the last flush as one manifest file.

        Pairs that finish together share a file, so a bucket of small images does not make
        one file per pair, and a crash loses no row that was reported.
        """
        if self._unwritten:
            self.writer.write(self._unwritten)
            self._unwritten = []

    def _failed(self, pair: Pair, error: str) -> ManifestRow:
        return ManifestRow(pair.content_uri, pair.style_uri, pair.output_uri, "failed", error=error,
                           model_id=self.model_id)

    # -- styles ------------------------------------------------------------------------------

    def _load_styles(self, keys: Sequence[str]) -> dict[str, _Style]:
        """Every style's statistics, computed once on the actors (in parallel), and each
        combination of styles (``--style-weights``, ``--mask``) built from them."""
        styles = {uri: _Style(uri) for key in dict.fromkeys(keys) for uri in split_styles(key)}
        style_options = self.style_options

        def load(style: _Style) -> None:
            call = Call("style", (style.uri,),
                        {"style_size": style_options.style_size, "max_pixels": style_options.max_pixels})
            try:
                [done] = self.pool.run([call])
            except Exception as e:
                style.error = one_line_error(e)
                log.warning("style %s failed: %s", style.uri, style.error)
                return
            style.stats, style.ref = done.value, ray.put(done.value)

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(len(styles), 2 * self.pool.alive))) as ex:
            list(ex.map(load, styles.values()))
        for key in dict.fromkeys(keys):
            if key not in styles:
                styles[key] = self._combine(key, [styles[uri] for uri in split_styles(key)])
        return styles

    def _combine(self, key: str, parts: Sequence[_Style]) -> _Style:
        """Several styles as one: their blend, or one colouring per mask label."""
        failed = next((p for p in parts if p.error), None)
        if failed is not None:
            return _Style(key, error=failed.error)
        levels = style_levels([p.stats for p in parts], weights=self.style_options.style_weights,
                              masked=self.style_options.mask is not None)
        return _Style(key, stats=levels, ref=ray.put(levels))

    # -- one pair ----------------------------------------------------------------------------

    def _run_pair(self, pair: Pair, style: _Style, size: tuple[int, int]) -> ManifestRow:
        """Run a pair (again when the cluster lost part of it); never raises."""
        started = time.perf_counter()
        attempt = 0
        while True:
            result = _PairResult(width=size[0], height=size[1])
            try:
                self._stylize(pair, style, result)
                return _row(pair, "ok", result, started=started, model_id=self.model_id)
            except Exception as e:
                if _lost(e) and attempt < self.settings.retries and self.pool.alive:
                    attempt += 1
                    wait = _RETRY_SECONDS * 2 ** (attempt - 1)
                    log.warning("%s x %s: %s; running the pair again in %.0f s (%d/%d)", pair.content_uri,
                                pair.style_uri, one_line_error(e), wait, attempt, self.settings.retries)
                    time.sleep(wait)  # an actor being restarted elsewhere is unavailable for a while
                    continue
                return _row(pair, "failed", result, started=started, model_id=self.model_id,
                            error=one_line_error(e))

    def _stylize(self, pair: Pair, style: _Style, result: _PairResult) -> None:
        style_options, settings = self.style_options, self.settings
        width, height = result.width, result.height
        tiles = plan_tiles(height, width, tile=style_options.tile)
        result.tiles = len(tiles)
        if style_options.mode in _ONE_CALL_MODES or len(tiles) == 1:
            self._stylize_in_one_call(pair, style, result)
            return
        # Every control runs tile-split like a plain pair: a mask as one label core per tile,
        # colour preservation on the last round's cores, a stroke scale as a second, shrunk image.
        result.mode = "tiled"
        scale = resolve_stroke_scale(style_options.stroke_scale, height, width)
        split = BandSplit(height, width, scale) if scale > 1 else None
        coarse_tiles = plan_tiles(*split.coarse_size, tile=style_options.tile) if split else []
        labels = label_count(next(iter(style.stats.values())))
        layout = CutImage(len(tiles), len(coarse_tiles), masked=labels > 0)
        mask_uri = self._mask_uri(pair) if labels else None
        refs = cut_image.options(num_returns=layout.returns, num_cpus=settings.io_cpus,
                                 max_retries=settings.retries).remote(
            pair.content_uri, width=width, height=height, tile=style_options.tile, max_pixels=style_options.max_pixels,
            storage_options=style_options.storage_options, mask_uri=mask_uri, styles=labels, stroke_scale=scale,
        )
        parts = layout.parts(refs)
        del refs
        header: ImageHeader = ray.get(parts["header"][0])
        result.seconds["read"] = header.read_seconds
        alphas = parts["alpha"] if header.has_alpha else []
        executors = [self._executor(parts["image"], parts["mask"], tiles, (height, width), labels=labels,
                                    preserve_color=style_options.preserve_color)]
        if split is not None:
            executors.append(self._executor(parts["coarse"], parts["coarse_mask"], coarse_tiles, split.coarse_size,
                                            labels=labels))
        del parts
        executor = executors[0]
        self.progress.add_tiles(stroke_tile_rounds(height, width, tile=style_options.tile,
                                                   levels=len(self.geometry), scale=scale, exact=True))
        start = time.perf_counter()
        try:
            if split is None:
                result.seconds["reduce"] = run_levels(executor, tiles, self.geometry, style.stats,
                                                      alpha=style_options.alpha)
            else:
                seconds = run_strokes(executor, executors[1], tiles, coarse_tiles, self.geometry, style.stats,
                                      split=split, alpha=style_options.alpha)
                result.seconds["reduce"] = seconds["reduce"]
        finally:
            result.seconds["stylize"] = time.perf_counter() - start
            result.seconds["compute"] = sum(e.compute_seconds for e in executors)
            for e in executors:
                result.workers |= e.workers
        bounds = Rect(0, 0, height, width)
        cores = [t.core for t in tiles]
        alpha_rects = [intersection(core, bounds) for core in cores] if alphas else []
        written = write_chunks.options(num_cpus=settings.io_cpus, max_retries=settings.retries).remote(
            pair.output_uri, height, width, cores, alpha_rects, header.icc_profile, *executor.image, *alphas,
            quality=style_options.quality, storage_options=style_options.storage_options,
        )
        for e in executors:
            e.image = []
        result.seconds["write"] = ray.get(written)

    def _executor(
        self,
        image: list[ray.ObjectRef],
        mask: list[ray.ObjectRef],
        tiles: list[Tile],
        size: tuple[int, int],
        *,
        labels: int,
        preserve_color: bool = False,
    ) -> RayExecutor:
        """A :class:`RayExecutor` of one image's cores (and its mask's, with ``labels``)."""
        return RayExecutor(self.pool, image, tiles, canvas_size(*size),
                           tiles_per_call=tiles_per_call(len(tiles), self.style_options.tile, self.pool.alive),
                           on_tile=self.progress.tiles, mask=mask if labels else None, labels=labels,
                           preserve_color=preserve_color)

    def _mask_uri(self, pair: Pair) -> str:
        """The mask of ``pair``'s content image (:func:`~pipeline.engine.controls.mask_for`)."""
        return mask_for(pair.content_uri, input_uri=self.options.input_uri, mask_uri=self.style_options.mask)

    def _stylize_in_one_call(self, pair: Pair, style: _Style, result: _PairResult) -> None:
        """One actor call reads, stylizes and writes (small images, ``whole``/``thumbnail`` modes)."""
        style_options = self.style_options
        mask_uri = None if style_options.mask is None else self._mask_uri(pair)
        self.progress.add_tiles(1)
        call = Call(
            "stylize_file",
            (pair.content_uri, style.ref, pair.output_uri),
            {"mode": style_options.mode, "tile": style_options.tile, "alpha": style_options.alpha,
             "max_pixels": style_options.max_pixels, "quality": style_options.quality,
             "preserve_color": style_options.preserve_color, "mask_uri": mask_uri,
             "stroke_scale": style_options.stroke_scale},
            weight=float(result.width * result.height),
        )
        [done] = self.pool.run([call])
        info: CallInfo = done.value
        self.progress.tiles(1)
        report = info.report
        result.width, result.height, result.tiles, result.mode = report.width, report.height, report.tiles, report.mode
        result.seconds.update({k: report.seconds.get(k, 0.0) for k in ("read", "stylize", "write")})
        result.seconds["compute"] = info.seconds
        result.workers.add(info.worker)

    # -- admission ---------------------------------------------------------------------------

    def _probe(self, pair: Pair) -> tuple[int, int]:
        """The image's size from its header, refused over ``--max-pixels`` before any decoding."""
        width, height = image_size(pair.content_uri, self.style_options.storage_options)
        check_pixels(pair.content_uri, width, height, self.style_options.max_pixels)
        return width, height

    def run(self, pairs: Sequence[Pair]) -> list[ManifestRow]:
        styles = self._load_styles([p.style_uri for p in pairs])
        waiting: deque[tuple[Pair, _Style, tuple[int, int] | None]] = deque()
        for pair in pairs:
            style = styles[pair.style_uri]
            if style.error:
                self.record([self._failed(pair, f"style image failed: {style.error}")])
            else:
                waiting.append((pair, style, None))
        self.flush()
        budget = self.settings.max_in_flight_mp
        running: dict[concurrent.futures.Future[ManifestRow], float] = {}
        with concurrent.futures.ThreadPoolExecutor(self.settings.max_in_flight, thread_name_prefix="pair") as threads:
            while waiting or running:
                if not self.pool.alive:  # nothing can run them: fail them without reading them
                    self.record([self._failed(p, str(NoActorsError())) for p, _, _ in waiting])
                    waiting.clear()
                while waiting and len(running) < self.settings.max_in_flight:
                    pair, style, size = waiting[0]
                    if size is None:
                        try:
                            size = self._probe(pair)
                        except Exception as e:
                            waiting.popleft()
                            self.record([self._failed(pair, one_line_error(e))])
                            continue
                        waiting[0] = (pair, style, size)
                    megapixels = size[0] * size[1] / 1e6
                    if running and sum(running.values()) + megapixels > budget:
                        break
                    waiting.popleft()
                    running[threads.submit(self._run_pair, pair, style, size)] = megapixels
                self.progress.in_flight = len(running)
                finished, _ = concurrent.futures.wait(
                    running, timeout=self.settings.progress_seconds, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in finished:
                    del running[future]
                    self.record([future.result()])
                self.flush()
                self.progress.in_flight = len(running)
                self.progress.show()
        self.flush()
        self.progress.close()
        return self.rows


def _style_keys(options: BatchOptions) -> list[str]:
    """One output per style, or one per content image from all styles (a blend or a mask)."""
    combined = options.style_options.style_weights is not None or options.style_options.mask is not None
    return [join_styles(options.style_uris)] if combined else list(options.style_uris)


def _nodes() -> list[dict[str, float]]:
    """Each alive node's total resources."""
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _start_actors(
    options: StyleOptions, settings: BatchSettings, run_id: str, weights: WeightSet
) -> list[ActorHandle]:
    check_placement(_nodes(), workers=settings.workers, cpus=settings.cpus_per_worker,
                    gpus=settings.gpus_per_worker, io_cpus=settings.io_cpus)
    threads = max(1, round(settings.cpus_per_worker))
    return [
        ModelActor.options(
            name=f"ultrastyle-{run_id}-model-{i}",
            num_cpus=settings.cpus_per_worker,
            num_gpus=settings.gpus_per_worker,
            max_restarts=settings.retries,
            max_task_retries=settings.retries,
            scheduling_strategy="SPREAD",
        ).remote(
            weights.location,
            name=f"model-{i}",
            device=settings.device,
            threads=threads,
            storage_options=options.storage_options,
            precision=options.precision,
            tile_batch=options.tile_batch,
        )
        for i in range(settings.workers)
    ]


def _pairs_to_run(pairs: list[Pair], options: BatchOptions) -> tuple[list[Pair], list[ManifestRow]]:
    """Split the plan into pairs to run and rows already decided (see :func:`~pipeline.batch.manifest.resume`)."""
    storage_options = options.style_options.storage_options
    return resume(
        pairs,
        read_manifest(options.output_uri, storage_options),
        existing_files(options.output_uri, storage_options),
        overwrite=options.overwrite,
        storage_options=storage_options,
    )


def run_batch(options: BatchOptions) -> int:
    """Stylize every image under ``options.input_uri`` with every style on Ray; write the manifest.

    Args:
        options: the job (inputs, styles, output, the picture and engine settings, the cluster
            settings), as ``jobs.stylize`` builds it from its flags.

    Returns:
        0 when every pair is ``ok`` or ``skipped``, 1 when any failed or the actors could
        not start.

    Raises:
        OptionError: a device the actors cannot honour, or an output ``format`` we cannot write.
        UsageError: actors the cluster cannot place
            (:func:`~pipeline.batch.preflight.check_placement`).
        FileNotFoundError, OSError: the input or output cannot be listed or written
            (missing bucket, unreachable endpoint), with a one-line message.
        WeightsError, ImageError: the weights or every style fail the driver's checks
            (:func:`~pipeline.batch.preflight.check_batch`).
    """
    start = time.perf_counter()
    check_actor_device(options.style_options.device, options.gpus_per_worker)
    storage_options, mask = options.style_options.storage_options, options.style_options.mask
    contents = list_inputs(options.input_uri, storage_options, exclude_uri=options.output_uri)
    if mask is not None:  # a mask prefix inside the input holds masks, not content images
        try:
            masks = set(list_inputs(mask, storage_options))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"--mask {mask}: no such folder or prefix of masks") from e
        contents = [c for c in contents if c not in masks]
    checks = check_batch(options)
    pairs = plan_pairs(contents, _style_keys(options), input_uri=options.input_uri, output_uri=options.output_uri,
                       fmt=options.format)
    todo, decided = _pairs_to_run(checks.stamp(pairs, options), options)
    run_id = new_run_id()
    writer = ManifestWriter(options.output_uri, run_id=run_id, storage_options=storage_options, pairs=todo)
    log.info("run %s: %d images x %d styles = %d pairs (%d to run, %d already done, %d refused) -> %s",
             run_id, len(contents), len(options.style_uris), len(pairs), len(todo),
             sum(r.status == "skipped" for r in decided), sum(r.status == "failed" for r in decided),
             options.output_uri)
    progress = BatchProgress(len(pairs), log, seconds=options.progress_seconds)
    rows = list(decided)
    if decided:
        writer.write(decided)
        for row in decided:
            progress.pair(row.status)
    started_ray = _connect_ray() if todo else False
    try:
        if todo:
            rows += _run_pairs(options, todo, writer, progress, run_id, checks.weight_set)
    except _StartupError as e:
        log.error("%s", e)
        return 1
    finally:
        progress.close()
        if started_ray:
            ray.shutdown()
    summary = summarize(rows, time.perf_counter() - start)
    log.info("done: %s", summary.line())
    return 1 if summary.failed else 0


class _StartupError(RuntimeError):
    """The model actors could not start (bad weights, no resources); nothing can run."""


def _run_pairs(
    options: BatchOptions,
    pairs: list[Pair],
    writer: ManifestWriter,
    progress: BatchProgress,
    run_id: str,
    weights: WeightSet,
) -> list[ManifestRow]:
    settings = _settings(options)
    log.info("starting %d model actors (%s, %g CPU and %g GPU each), up to %d images and %.1f MP in flight",
             settings.workers, settings.device, settings.cpus_per_worker, settings.gpus_per_worker,
             settings.max_in_flight, settings.max_in_flight_mp)
    actors = _start_actors(options.style_options, settings, run_id, weights)
    try:
        try:
            infos = ray.get([a.describe.remote() for a in actors])
        except Exception as e:
            raise _StartupError(f"model actors failed to start: {one_line_error(e)}") from e
        for info in infos:
            log.info("actor %s ready: model %s on %s, %d tile(s) per network call (pid %d)", info.worker,
                     info.model_id, info.device, info.tile_batch, info.pid)
        job = _Job(options, settings, writer, ModelPool(actors, infos), progress)
        return job.run(pairs)
    finally:
        for actor in actors:
            ray.kill(actor)
