"""The batch job's driver: every (content, style) pair under a prefix, on Ray.

What runs where:

- the driver (this module) lists the inputs, plans the pairs, skips those a previous run
  finished, admits pairs under a pixel budget, retries a pair whose worker or node was lost,
  writes the manifest and shows progress: the pair-level concerns only;
- each admitted pair runs in a thread of the driver: the image is cut by a
  :func:`~pipeline.batch.actors.cut_image` task into one object per tile core, the tiled
  cascade's one level loop (:func:`pipeline.engine.tiled.run_levels`) runs it with a
  :class:`~pipeline.batch.executor.RayExecutor`, and a :func:`~pipeline.batch.actors.write_chunks`
  task stitches and writes the output. Images that fit in one tile, and the ``whole`` and
  ``thumbnail`` modes, go to one actor call that reads, stylizes and writes;
- a pool of :class:`~pipeline.batch.actors.ModelActor` (one GPU each on a GPU cluster, else
  CPUs), shared by all pairs (:class:`~pipeline.batch.executor.ModelPool`), runs every model call.

Before any of that, the driver lists, plans and resumes the whole bucket in bounded memory
(:func:`~pipeline.batch.resume.plan_run`: Arrow tables spilled to local disk in partitions,
never one Python object per pair) and says what it will do and why; ``--dry-run`` stops there,
without starting Ray. The pairs to run then stream into admission. Their headers are read
ahead by a pool of threads (:class:`~pipeline.batch.headers.HeaderReader`), never one by one.
Images that run in one actor call (one tile, or the ``whole``/``thumbnail`` modes and the
controls on an image of at most one tile's pixels) go to the actors ``--batch-images`` at a
time, two calls per actor in flight, so small photos keep the actors busy without a round trip
per image; larger images run one per thread as above, a pair starting when the megapixels in
flight stay within ``--max-in-flight-mp`` (by default sized from the cluster's object store at
:data:`STORE_BYTES_PER_PIXEL`) and at most ``--max-in-flight`` at once. Failures stay with
their pair: a bad input, style or output fails that pair's manifest row with one line, and the
job carries on; a storage fault (:func:`~pipeline.batch.transient.is_transient`) or a lost
worker or node runs the pair again after a doubling wait (``--retries``). A model actor that
dies is restarted by Ray and its calls retried. Rows go to the manifest as pairs finish
(:class:`~pipeline.batch.manifest.ManifestWriter`), which holds them through a storage outage
rather than stop the job.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import PurePosixPath

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayError, RayTaskError

from models import WeightSet
from pipeline.batch.actors import CallInfo, ImageHeader, ModelActor, cut_image, write_chunks
from pipeline.batch.executor import (
    Call,
    JobStopping,
    ModelPool,
    NoActorsError,
    RayExecutor,
    get_unless_stopping,
    tiles_per_call,
)
from pipeline.batch.fingerprint import SettingsBook
from pipeline.batch.headers import HeaderReader
from pipeline.batch.listing import iter_keys
from pipeline.batch.manifest import (
    ManifestRow,
    ManifestWriter,
    Pair,
    Summary,
    list_manifest,
    new_run_id,
)
from pipeline.batch.planning import PairPlanner
from pipeline.batch.preflight import BatchChecks, check_actor_device, check_batch, check_placement, default_workers
from pipeline.batch.reaper import start as start_reaper
from pipeline.batch.resume import RunPlan, plan_run
from pipeline.batch.transient import Backoff, is_transient, quiet_storage_faults
from pipeline.engine.controls import join_styles, mask_for, split_styles, style_levels
from pipeline.engine.device import resolve_device
from pipeline.engine.runner import StyleStats
from pipeline.engine.tiled import cascade_geometry, run_levels, tile_rounds
from pipeline.errors import LocationError, MissingLocationError, one_line_error
from pipeline.imaging.chunks import intersection
from pipeline.imaging.imageio import check_pixels, image_size
from pipeline.imaging.tiles import Rect, canvas_size, plan_tiles
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
# First wait before a pair lost with a worker or node, or to a storage fault, runs again
# (doubled at each retry, at most a minute).
_RETRY_SECONDS = 2.0
_RETRY_LONGEST = 60.0
# Calls of batched small images in flight per actor: one running, one queued behind it.
_SMALL_CALLS_PER_ACTOR = 2
# Pairs whose headers are read ahead of admission, per image a batch call can take.
_HEADERS_AHEAD = 8
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
            runs of a pair whose objects or workers were lost or whose storage failed.
        progress_seconds: interval of the progress line when it is not a terminal.
        batch_images: images of one actor call each per call, at most.
        header_threads: image headers read at once for admission.
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
    batch_images: int = 4
    header_threads: int = 16


def _connect_ray() -> bool:
    """Join the Ray that is already up (in-process, ``RAY_ADDRESS``, ``ray job submit``) or start one.

    Returns:
        Whether this call started a local Ray, which the job then shuts down.
    """
    if ray.is_initialized():
        return False
    if not log.isEnabledFor(logging.DEBUG):
        # Each failed pair is reported once, from the error the driver fetches; Ray would also
        # log, with its traceback, every error object nobody fetched: one per tile of the pair.
        os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    address = os.environ.get("RAY_ADDRESS")
    if address is None:
        start_reaper()  # ends Ray's agents too if this process is killed (see pipeline/batch/reaper.py)
    with _signal_handlers_kept():
        ray.init(address=address or "local")
    log.info("Ray: %s", f"joined the cluster at {address}" if address else "started a local instance")
    return address is None


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Put back the stop signals' handlers that ``ray.init`` replaces.

    ``ray.init`` sets a SIGTERM handler that exits at once, and the core worker it starts adds
    a crash handler that turns SIGTERM into a stack dump and an abort; either way the job
    would not get to stop its pairs and the Ray it started. With the handlers put back, a stop
    signal reaches the job as it would without Ray (see ``jobs/signals.py``).
    """
    kept = {each: signal.getsignal(each) for each in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for each, handler in kept.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(each, handler)


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
        batch_images=options.batch_images,
        header_threads=options.header_threads,
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
        fingerprint=pair.fingerprint,
        settings=pair.settings,
        reason=pair.reason,
    )


def _lost(error: BaseException) -> bool:
    """A failure of the cluster (worker, node or object lost), not of the pair's input: worth a rerun."""
    return isinstance(error, RayError) and not isinstance(error, RayTaskError)


class _Job:
    """Runs the pairs on a started actor pool, writing their manifest rows as they finish.

    A stop signal (``KeyboardInterrupt``, see ``jobs/signals.py``) in the main thread sets
    ``stop``: the pairs' threads leave their waits for Ray and end without a row (a rerun
    runs those pairs), the rows already reported are written, and the signal goes on up to
    the caller, which then shuts down the actors and a Ray it started.
    """

    def __init__(
        self,
        options: BatchOptions,
        settings: BatchSettings,
        writer: ManifestWriter,
        pool: ModelPool,
        progress: BatchProgress,
        stop: threading.Event,
    ) -> None:
        self.options, self.settings, self.writer = options, settings, writer
        self.style_options = options.style_options
        self.pool, self.progress, self.stop = pool, progress, stop
        info = pool.infos[0]
        self.model_id = info.model_id
        self.geometry = cascade_geometry(info.channels)
        self.backoff = Backoff(tries=settings.retries + 1, first=_RETRY_SECONDS, longest=_RETRY_LONGEST)
        self._unwritten: list[ManifestRow] = []

    # -- rows --------------------------------------------------------------------------------

    def record(self, rows: Sequence[ManifestRow]) -> None:
        """Keep ``rows`` for the next :meth:`flush`, which writes, counts and logs them."""
        self._unwritten.extend(rows)

    def flush(self) -> None:
        """Write the rows finished since the last flush as one manifest part, then report them.

        Pairs that finish together share a part, so a bucket of small images does not make
        one file per pair, and a row is on storage before it is reported (a crash loses none
        that was). While storage is down the writer holds the rows, and they are reported.
        """
        if not self._unwritten:
            return
        rows, self._unwritten = self._unwritten, []
        self.writer.write(rows)
        for row in rows:
            self.progress.pair(row.status, row.megapixels if row.status == "ok" else 0.0)
            done, total = self.progress.done, self.progress.total_pairs
            if row.status == "ok":
                log.info("[%d/%d] ok %s (%dx%d, %d tiles, %.1f s)", done, total, row.output_uri, row.width,
                         row.height, row.tiles, row.seconds)
            else:
                log.warning("[%d/%d] failed %s x %s: %s", done, total, row.content_uri, row.style_uri, row.error)

    def _failed(self, pair: Pair, error: str) -> ManifestRow:
        return ManifestRow(pair.content_uri, pair.style_uri, pair.output_uri, "failed", error=error,
                           model_id=self.model_id, fingerprint=pair.fingerprint, settings=pair.settings,
                           reason=pair.reason)

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

        with self._threads(max(1, min(len(styles), 2 * self.pool.alive)), "style") as threads:
            list(threads.map(load, styles.values()))
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
        """Run a pair (again, after a doubling wait, when the cluster lost part of it or its
        storage failed); never raises."""
        started = time.perf_counter()
        attempt = 0
        while True:
            result = _PairResult(width=size[0], height=size[1])
            try:
                self._stylize(pair, style, result)
                return _row(pair, "ok", result, started=started, model_id=self.model_id)
            except Exception as e:
                if self.stop.is_set():
                    raise JobStopping from e  # no row: a rerun runs the pair
                log.debug("%s x %s failed", pair.content_uri, pair.style_uri, exc_info=e)
                if (_lost(e) or is_transient(e)) and attempt < self.settings.retries and self.pool.alive:
                    attempt += 1
                    wait = self.backoff.wait(attempt)
                    log.warning("%s x %s: %s; running the pair again in %.0f s (%d/%d)", pair.content_uri,
                                pair.style_uri, one_line_error(e), wait, attempt, self.settings.retries)
                    if self.stop.wait(wait):  # an actor restarted elsewhere, or a store, is unavailable for a while
                        raise JobStopping from e
                    continue
                return _row(pair, "failed", result, started=started, model_id=self.model_id,
                            error=one_line_error(e))

    def _run_small(self, style: _Style, batch: Sequence[tuple[Pair, tuple[int, int]]]) -> list[ManifestRow]:
        """Run several images of one call each in one actor call; never raises.

        A pair whose image failed with a storage fault, or all of them when the call itself
        was lost, runs again on its own (:meth:`_run_pair`, with its retries).
        """
        style_options, started = self.style_options, time.perf_counter()
        self.progress.add_tiles(len(batch))
        items = [(p.content_uri, p.output_uri, self._mask(p)) for p, _ in batch]
        call = Call(
            "stylize_files", (style.ref, items),
            {"mode": style_options.mode, "tile": style_options.tile, "alpha": style_options.alpha,
             "max_pixels": style_options.max_pixels, "quality": style_options.quality,
             "preserve_color": style_options.preserve_color},
            weight=float(sum(w * h for _, (w, h) in batch)),
        )
        try:
            [done] = self.pool.run([call])
        except Exception as e:
            if self.stop.is_set():
                raise JobStopping from e  # no rows: a rerun runs the pairs
            log.warning("a call of %d images failed (%s); running them one by one", len(batch), one_line_error(e))
            self.progress.tiles(len(batch))  # the call is over; each pair counts its own again
            return [self._run_pair(pair, style, size) for pair, size in batch]
        rows = []
        for (pair, size), info in zip(batch, done.value, strict=True):
            self.progress.tiles(1)
            if info.error and info.transient:
                rows.append(self._run_pair(pair, style, size))
                continue
            result = _PairResult(width=size[0], height=size[1])
            if info.report is not None:
                self._take_report(result, info)
            rows.append(_row(pair, "failed" if info.error else "ok", result, started=started, model_id=self.model_id,
                             error=info.error))
        return rows

    def _mask(self, pair: Pair) -> str | None:
        mask = self.style_options.mask
        return mask_for(pair.content_uri, input_uri=self.options.input_uri, mask_uri=mask) if mask else None

    @staticmethod
    def _take_report(result: _PairResult, info: CallInfo) -> None:
        """What an image run in one call measured."""
        report = info.report
        result.width, result.height, result.tiles, result.mode = report.width, report.height, report.tiles, report.mode
        result.seconds.update({k: report.seconds.get(k, 0.0) for k in ("read", "stylize", "write")})
        result.seconds["compute"] = info.seconds
        result.workers.add(info.worker)

    def _stylize(self, pair: Pair, style: _Style, result: _PairResult) -> None:
        style_options, settings = self.style_options, self.settings
        width, height = result.width, result.height
        tiles = plan_tiles(height, width, tile=style_options.tile)
        result.tiles = len(tiles)
        # Creative controls run in one call too: the in-process exact engine on disk canvases,
        # the same picture with memory bounded by the tile, but on one actor.
        if style_options.mode in _ONE_CALL_MODES or len(tiles) == 1 or _has_controls(style_options):
            self._stylize_in_one_call(pair, style, result)
            return
        result.mode = "tiled"
        n = len(tiles)
        refs = cut_image.options(num_returns=1 + 2 * n, num_cpus=settings.io_cpus, max_retries=settings.retries).remote(
            pair.content_uri, width=width, height=height, tile=style_options.tile, max_pixels=style_options.max_pixels,
            storage_options=style_options.storage_options,
        )
        header: ImageHeader = get_unless_stopping(refs[0], self.stop)
        result.seconds["read"] = header.read_seconds
        alphas = refs[1 + n :] if header.has_alpha else []
        executor = RayExecutor(self.pool, refs[1 : 1 + n], tiles, canvas_size(height, width),
                               tiles_per_call=tiles_per_call(n, style_options.tile, self.pool.alive),
                               on_tile=self.progress.tiles)
        del refs
        self.progress.add_tiles(tile_rounds(n, len(self.geometry), exact=True))
        start = time.perf_counter()
        try:
            result.seconds["reduce"] = run_levels(executor, tiles, self.geometry, style.stats,
                                                  alpha=style_options.alpha)
        finally:
            result.seconds["stylize"] = time.perf_counter() - start
            result.seconds["compute"] = executor.compute_seconds
            result.workers |= executor.workers
        bounds = Rect(0, 0, height, width)
        cores = [t.core for t in tiles]
        alpha_rects = [intersection(core, bounds) for core in cores] if alphas else []
        written = write_chunks.options(num_cpus=settings.io_cpus, max_retries=settings.retries).remote(
            pair.output_uri, height, width, cores, alpha_rects, header.icc_profile, *executor.image, *alphas,
            quality=style_options.quality, storage_options=style_options.storage_options,
        )
        executor.image = []
        result.seconds["write"] = get_unless_stopping(written, self.stop)

    def _stylize_in_one_call(self, pair: Pair, style: _Style, result: _PairResult) -> None:
        """One actor call reads, stylizes and writes (small images, ``whole``/``thumbnail`` modes)."""
        style_options = self.style_options
        self.progress.add_tiles(1)
        call = Call(
            "stylize_file",
            (pair.content_uri, style.ref, pair.output_uri),
            {"mode": style_options.mode, "tile": style_options.tile, "alpha": style_options.alpha,
             "max_pixels": style_options.max_pixels, "quality": style_options.quality,
             "preserve_color": style_options.preserve_color, "mask_uri": self._mask(pair)},
            weight=float(result.width * result.height),
        )
        [done] = self.pool.run([call])
        self.progress.tiles(1)
        self._take_report(result, done.value)

    # -- admission ---------------------------------------------------------------------------

    def _probe(self, content_uri: str) -> tuple[int, int]:
        """The image's size from its header, refused over ``--max-pixels`` before any decoding."""
        width, height = image_size(content_uri, self.style_options.storage_options)
        check_pixels(content_uri, width, height, self.style_options.max_pixels)
        return width, height

    def _batched(self, size: tuple[int, int]) -> bool:
        """Whether an image of ``size`` (width, height) runs in one actor call no larger than a tile's,
        which may share the call with others."""
        style_options = self.style_options
        width, height = size
        if style_options.mode in _ONE_CALL_MODES or _has_controls(style_options):
            return width * height <= style_options.tile * style_options.tile
        return len(plan_tiles(height, width, tile=style_options.tile)) == 1

    @contextlib.contextmanager
    def _threads(self, workers: int, name: str) -> Iterator[concurrent.futures.ThreadPoolExecutor]:
        """A thread pool that, when a stop signal leaves the block, sets :attr:`stop` before
        waiting for its threads (which then leave their waits for Ray promptly)."""
        threads = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)
        try:
            yield threads
        except KeyboardInterrupt:
            self.stop.set()
            raise
        finally:
            threads.shutdown(wait=True, cancel_futures=True)

    def run(self, pairs: Iterator[Pair]) -> None:
        """Run ``pairs`` as they come (see the module's docstring for admission), writing their rows."""
        try:
            self._run(pairs)
        except KeyboardInterrupt:
            self.progress.close()  # end a terminal's bar before the last line
            self.flush()  # the rows already reported reach the manifest
            raise

    def _run(self, pairs: Iterator[Pair]) -> None:
        styles = self._load_styles(_style_keys(self.options))
        settings = self.settings
        ahead = max(64, _HEADERS_AHEAD * settings.batch_images * settings.workers)
        threads = settings.max_in_flight + _SMALL_CALLS_PER_ACTOR * settings.workers
        admission = _Admission(self, styles)
        with HeaderReader(pairs, self._probe, threads=settings.header_threads, ahead=ahead) as headers, \
                self._threads(threads, "pair") as pool:
            while True:
                if not self.pool.alive:  # nothing can run them: fail them without reading them
                    self.record([self._failed(p, str(NoActorsError())) for p in admission.drain(headers)])
                admission.admit(headers, pool)
                if not admission.running and headers.done and not admission.waiting:
                    break
                waits: list[concurrent.futures.Future] = list(admission.running)
                head = headers.head()
                if head is not None and not head[1].done():
                    waits.append(head[1])  # admission may go on once this header is read
                finished, _ = concurrent.futures.wait(
                    waits, timeout=settings.progress_seconds, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in finished:
                    if admission.running.pop(future, None) is not None:
                        self.record(future.result())
                self.flush()
                self.progress.in_flight = admission.images
                self.progress.show()
        self.flush()
        self.progress.close()


@dataclass
class _Unit:
    """Work in flight: one pair of several tiles, or a call of batched small images."""

    megapixels: float
    images: int
    batched: bool


class _Admission:
    """Which pairs start now: small images gathered into calls (per style), the rest one per thread."""

    def __init__(self, job: _Job, styles: dict[str, _Style]) -> None:
        self.job, self.styles = job, styles
        self.running: dict[concurrent.futures.Future[list[ManifestRow]], _Unit] = {}
        self.batches: dict[str, list[tuple[Pair, tuple[int, int]]]] = {}

    @property
    def waiting(self) -> int:
        """Small images gathered and not sent yet."""
        return sum(len(b) for b in self.batches.values())

    @property
    def images(self) -> int:
        """Images in flight."""
        return sum(unit.images for unit in self.running.values())

    def _fits(self, megapixels: float, *, batched: bool) -> bool:
        settings = self.job.settings
        units = [u for u in self.running.values() if u.batched == batched]
        limit = _SMALL_CALLS_PER_ACTOR * max(1, self.job.pool.alive) if batched else settings.max_in_flight
        in_flight = sum(u.megapixels for u in self.running.values())
        return len(units) < limit and (not self.running or in_flight + megapixels <= settings.max_in_flight_mp)

    def _send(self, key: str, pool: concurrent.futures.ThreadPoolExecutor) -> bool:
        """Send the small images gathered for style ``key`` in one call, when a call may start."""
        batch = self.batches.get(key)
        if not batch:
            return True
        megapixels = sum(w * h for _, (w, h) in batch) / 1e6
        if not self._fits(megapixels, batched=True):
            return False
        self.running[pool.submit(self.job._run_small, self.styles[key], batch)] = _Unit(megapixels, len(batch), True)
        self.batches[key] = []
        return True

    def admit(self, headers: HeaderReader, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        """Start what fits, in plan order, as far as the headers read so far go."""
        job, size_limit = self.job, self.job.settings.batch_images
        while (head := headers.head()) is not None and head[1].done():
            pair, header = head
            style = self.styles[pair.style_uri]
            if style.error:
                headers.pop()
                job.record([job._failed(pair, f"style image failed: {style.error}")])
                continue
            try:
                size = header.result()
            except Exception as e:
                headers.pop()
                job.record([job._failed(pair, one_line_error(e))])
                continue
            if job._batched(size):
                batch = self.batches.setdefault(pair.style_uri, [])
                if len(batch) >= size_limit and not self._send(pair.style_uri, pool):
                    break
                headers.pop()
                self.batches[pair.style_uri].append((pair, size))
                if len(self.batches[pair.style_uri]) >= size_limit:
                    self._send(pair.style_uri, pool)
                continue
            megapixels = size[0] * size[1] / 1e6
            if not self._fits(megapixels, batched=False):
                break
            headers.pop()
            self.running[pool.submit(lambda p=pair, s=style, z=size: [job._run_pair(p, s, z)])] = _Unit(
                megapixels, 1, False)
        for key in list(self.batches):  # nothing more ready now: what is gathered goes if it can
            self._send(key, pool)

    def drain(self, headers: HeaderReader) -> Iterator[Pair]:
        """Every pair not started: the gathered small images, then the rest of the plan."""
        for key in list(self.batches):
            yield from (pair for pair, _ in self.batches.pop(key))
        yield from headers.drain()


def _has_controls(options: StyleOptions) -> bool:
    return options.style_weights is not None or options.mask is not None or options.preserve_color


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


def _listed(
    uri: str, what: str, storage_options: dict | None, *, exclude: Sequence[str] = (), missing_ok: bool = False
) -> Iterator[list[str]]:
    """The keys below ``uri`` in batches (:func:`~pipeline.batch.listing.iter_keys`), a listing
    failure as one line naming ``what`` and ``uri``."""
    keys = iter_keys(uri, storage_options, exclude=exclude)
    while True:
        try:
            batch = next(keys)
        except StopIteration:
            return
        except FileNotFoundError as e:
            if missing_ok:
                return
            raise MissingLocationError(f"{what} {uri} does not exist ({one_line_error(e)})") from e
        except Exception as e:
            raise LocationError(f"cannot list {what} {uri}: {one_line_error(e)}") from e
        yield batch


def _pair_namer(options: BatchOptions) -> Callable[[str, str], str]:
    """How the console names a pair: the content's key below the input, and its style's stem when there are several."""
    base = options.input_uri.rstrip("/") + "/"
    several = len(_style_keys(options)) > 1

    def name(content_uri: str, style_uri: str) -> str:
        key = content_uri[len(base):] if content_uri.startswith(base) else content_uri
        return f"{key} x {PurePosixPath(style_uri).stem}" if several else key

    return name


def _report(plan: RunPlan, options: BatchOptions, run_id: str) -> None:
    """Say what the run will do: counts, then why pairs run and what is refused, the first few named."""
    log.info("run %s: %d images x %d styles = %d pairs (%d to run, %d already done, %d refused) -> %s",
             run_id, plan.contents, len(_style_keys(options)), plan.pairs, plan.to_run, plan.skipped,
             plan.refused.count, options.output_uri)
    for line in plan.report(_pair_namer(options)):
        log.info("%s", line)
    if plan.folded:
        log.info("manifest: %d files folded into its current state", plan.folded)


def run_batch(options: BatchOptions) -> int:
    """Stylize every image under ``options.input_uri`` with every style on Ray; write the manifest.

    Args:
        options: the job (inputs, styles, output, the picture and engine settings, the cluster
            settings, ``dry_run``), as ``jobs.stylize`` builds it from its flags.

    Returns:
        0 when every pair is ``ok`` or skipped (and for a dry run), 1 when any failed, the
        actors could not start, or manifest rows could not be written.

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
    quiet_storage_faults()
    check_actor_device(options.style_options.device, options.gpus_per_worker)
    style_options, output = options.style_options, options.output_uri
    storage_options, mask = style_options.storage_options, style_options.mask
    # The output and a mask prefix inside the input hold outputs and masks, not content images.
    keys = _listed(options.input_uri, "input", storage_options, exclude=[output, *([mask] if mask else [])])
    first = next(keys, None)
    if first is None:
        raise MissingLocationError(f"input {options.input_uri} holds no files")
    if mask is not None and next(_listed(mask, "--mask", storage_options, missing_ok=True), None) is None:
        raise MissingLocationError(f"--mask {mask}: no such folder or prefix of masks")
    checks = check_batch(options, probe_output=not options.dry_run)
    planner = PairPlanner(input_uri=options.input_uri, output_uri=output, style_keys=_style_keys(options),
                          fmt=options.format)
    book = SettingsBook()
    run_id = new_run_id()
    manifest = list_manifest(output, storage_options)
    # Outputs matter only to pairs the manifest says are done: a first run does not list them.
    listed = manifest.paths and not options.overwrite
    existing = _listed(output, "output", storage_options, missing_ok=True) if listed else iter(())
    with tempfile.TemporaryDirectory(prefix="ultrastyle-plan-") as workdir:
        stamp = partial(checks.stamp, options=options, book=book)
        plan = plan_run(planner, itertools.chain([first], keys), stamp=stamp, book=book, existing=existing,
                        manifest=manifest, workdir=workdir, overwrite=options.overwrite,
                        fold_id=None if options.dry_run else run_id)
        _report(plan, options, run_id)
        if options.dry_run:
            log.info("dry run: nothing stylized or written, Ray not started (%.1f s)", time.perf_counter() - start)
            return 0
        return _run(options, plan, checks, run_id, start)


def _run(options: BatchOptions, plan: RunPlan, checks: BatchChecks, run_id: str, start: float) -> int:
    """Write the refused rows, run the pairs to run, close the manifest and say how it went."""
    writer = ManifestWriter(options.output_uri, run_id=run_id, storage_options=options.style_options.storage_options)
    progress = BatchProgress(plan.pairs, log, seconds=options.progress_seconds)
    progress.pair("skipped", count=plan.skipped)
    for table in plan.refused_rows():
        writer.write(table)
        progress.pair("failed", count=table.num_rows)
    started_ray = _connect_ray() if plan.to_run else False
    status = 0
    try:
        if plan.to_run:
            _run_pairs(options, plan.todo(), writer, progress, run_id, checks.weight_set)
    except _StartupError as e:
        log.error("%s", e)
        status = 1
    finally:
        progress.close()
        if started_ray:
            ray.shutdown()
    c = progress.counts
    summary = Summary(c["ok"], c["skipped"], c["failed"], progress.megapixels, time.perf_counter() - start)
    if not writer.close(patience=options.manifest_wait):
        held, path = writer.pending, writer.save_local()
        log.error("done: %s; %d manifest rows could not be written to %s (%s), saved to %s instead",
                  summary.line(), held, writer.folder, writer.error, path)
        return 1
    if status:
        return status
    log.info("done: %s", summary.line())
    return 1 if summary.failed else 0


class _StartupError(RuntimeError):
    """The model actors could not start (bad weights, no resources); nothing can run."""


def _run_pairs(
    options: BatchOptions,
    pairs: Iterator[Pair],
    writer: ManifestWriter,
    progress: BatchProgress,
    run_id: str,
    weights: WeightSet,
) -> None:
    settings = _settings(options)
    log.info("starting %d model actors (%s, %g CPU and %g GPU each), up to %d images of several tiles and "
             "%.1f MP in flight, small images %d per call", settings.workers, settings.device,
             settings.cpus_per_worker, settings.gpus_per_worker, settings.max_in_flight,
             settings.max_in_flight_mp, settings.batch_images)
    actors = _start_actors(options.style_options, settings, run_id, weights)
    stop = threading.Event()
    try:
        try:
            infos = ray.get([a.describe.remote() for a in actors])
        except Exception as e:
            raise _StartupError(f"model actors failed to start: {one_line_error(e)}") from e
        for info in infos:
            log.info("actor %s ready: model %s on %s, %d tile(s) per network call (pid %d)", info.worker,
                     info.model_id, info.device, info.tile_batch, info.pid)
        job = _Job(options, settings, writer, ModelPool(actors, infos, stop=stop), progress, stop)
        job.run(pairs)
    finally:
        # Stopping, the actors end with the driver (Ray ends an owner's actors with it), and
        # killing them under their queued calls would only log a line per call.
        if not stop.is_set():
            for actor in actors:
                ray.kill(actor)
