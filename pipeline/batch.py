"""The batch job's driver: every (content, style) pair under a prefix, on Ray.

What runs where:

- the driver (this module) lists the inputs, plans the pairs, skips those a previous run
  finished, schedules everything below, reduces statistics and writes the manifest;
- a pool of :class:`~pipeline.ray_actors.ModelActor` (one GPU each on a GPU cluster, else
  CPUs) loads the weights once and runs every model call: style statistics (once per style,
  then shared by object reference), small images in one call, and the two rounds of the
  exact tiled engine for each tile of each level of larger images;
- :func:`~pipeline.ray_actors.cut_image` tasks read and cut images into tile cores and
  :func:`~pipeline.ray_actors.write_chunks` tasks stitch and write the results.

A large image never exists as one float array in one process after it is cut: each level's
image and cached features live in the object store as one array per tile core, and a tile
round is handed only the neighbouring cores its halo reaches. Per level, round A returns each
core's :class:`~pipeline.stats.FeatureStats`; the driver merges them
(:func:`~pipeline.stats.merge_stats`), builds the level's transform
(:func:`~pipeline.wct.whitening_coloring`), puts it in the object store once, and sends
round B. Several images are in flight (``--max-in-flight``) so actors always have another
image's tiles to run while one image waits for its reduction; that bound is also what bounds
the object store's use. Model calls are queued a few per actor (``--calls-per-worker``), the
oldest image first, so images finish in order and release their memory early.

Failures stay with their pair: a bad input, style or output fails that pair's manifest row
with one line, and the job carries on. A model actor that dies is restarted by Ray and its
calls retried (``--retries``); I/O tasks are retried on worker loss the same way.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError

from pipeline.chunks import intersection, overlapping
from pipeline.engine import RunReport, StyleStats
from pipeline.manifest import (
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
from pipeline.models import CASCADE
from pipeline.preflight import check_batch, check_placement, default_workers
from pipeline.ray_actors import CallInfo, ImageHeader, ModelActor, WorkerInfo, cut_image, write_chunks
from pipeline.stats import FeatureStats, merge_stats
from pipeline.tiled import LevelGeometry, level_geometry
from pipeline.tiles import Rect, Tile, canvas_size, plan_tiles
from pipeline.wct import whitening_coloring

__all__ = ["BatchSettings", "run_batch"]

log = logging.getLogger("ultrastyle.batch")

Waitable = Any  # ray.ObjectRef or ray.ObjectRefGenerator
_NO_ACTORS = "no model actor is left (all died and Ray gave up restarting them)"
# Modes whose cascade is not split into per-tile rounds: one actor call reads, stylizes and writes.
_ONE_CALL_MODES = ("whole", "thumbnail")


@dataclass(frozen=True)
class BatchSettings:
    """The job's knobs, from the command line (see ``jobs/stylize.py``).

    Attributes:
        workers: model actors.
        gpus_per_worker, cpus_per_worker: what each actor reserves; GPUs > 0 puts the
            models on CUDA, and the CPUs set its torch threads.
        io_cpus: CPUs each read/cut and write task reserves (0: they are I/O bound and
            their number is bounded by ``max_in_flight``).
        max_in_flight: images being processed at once.
        calls_per_worker: model calls queued on each actor (2 hides the driver's round trip).
        retries: actor restarts, actor call retries and I/O task retries on worker loss.
        progress_seconds: interval of the progress line.
    """

    workers: int
    gpus_per_worker: float
    cpus_per_worker: float
    io_cpus: float
    max_in_flight: int
    calls_per_worker: int
    retries: int
    progress_seconds: float

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker > 0 else "cpu"


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


def _settings(args: argparse.Namespace) -> BatchSettings:
    """Resolve the defaults that depend on the cluster: GPUs when it has them, else CPUs."""
    resources = ray.cluster_resources()
    gpus = args.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
    cpus = args.cpus_per_worker
    workers = args.workers
    if workers is None:
        workers = default_workers(_nodes(), cpus=cpus, gpus=gpus, io_cpus=args.io_cpus)
    return BatchSettings(
        workers=workers,
        gpus_per_worker=gpus,
        cpus_per_worker=cpus,
        io_cpus=args.io_cpus,
        max_in_flight=args.max_in_flight,
        calls_per_worker=args.calls_per_worker,
        retries=args.retries,
        progress_seconds=args.progress_seconds,
    )


class _Events:
    """Object refs (and generators) the driver waits on, each with what to do when it is ready."""

    def __init__(self) -> None:
        self._callbacks: dict[Waitable, Callable[[Waitable], None]] = {}

    def __len__(self) -> int:
        return len(self._callbacks)

    def add(self, waitable: Waitable, callback: Callable[[Waitable], None]) -> None:
        self._callbacks[waitable] = callback

    def wait(self, timeout: float) -> None:
        """Run the callbacks of everything ready within ``timeout`` seconds (without fetching values)."""
        if not self._callbacks:
            return
        keys = list(self._callbacks)
        ready, _ = ray.wait(keys, num_returns=1, timeout=timeout, fetch_local=False)
        if ready and len(keys) > 1:
            ready, _ = ray.wait(keys, num_returns=len(keys), timeout=0, fetch_local=False)
        for waitable in ready:
            self._callbacks.pop(waitable)(waitable)


@dataclass
class _Call:
    """A model call waiting for an actor.

    Attributes:
        submit: sends the call to the given actor; returns its refs, the first of which is
            ready when the call is done.
        done: called with those refs and the actor's index once the first is ready.
        fail: called with a reason instead when no actor is left to run it.
        cancelled: true when the call's pair already failed (it is then dropped unsent).
    """

    submit: Callable[[ActorHandle], list[ray.ObjectRef]]
    done: Callable[[list[ray.ObjectRef], int], None]
    fail: Callable[[str], None]
    cancelled: Callable[[], bool]


class _Pool:
    """The model actors and a priority queue of calls, a bounded number outstanding per actor."""

    def __init__(self, actors: list[ActorHandle], infos: list[WorkerInfo], *, depth: int, events: _Events) -> None:
        self.actors, self.infos = actors, infos
        self.depth = depth
        self.events = events
        self.busy = [0] * len(actors)
        self.alive = [True] * len(actors)
        self._queue: list[tuple[tuple[int, int], int, _Call]] = []
        self._order = itertools.count()

    def submit(self, priority: tuple[int, int], call: _Call) -> None:
        heapq.heappush(self._queue, (priority, next(self._order), call))

    def retire(self, index: int) -> None:
        """Stop using an actor Ray gave up restarting."""
        if self.alive[index]:
            self.alive[index] = False
            log.warning("model actor %s is gone for good; %d left", self.infos[index].worker, sum(self.alive))

    def dispatch(self) -> None:
        """Send queued calls to the least busy live actors until each has ``depth`` outstanding."""
        while self._queue:
            free = [i for i in range(len(self.actors)) if self.alive[i] and self.busy[i] < self.depth]
            if not free:
                return
            _, _, call = heapq.heappop(self._queue)
            if call.cancelled():
                continue
            index = min(free, key=lambda i: self.busy[i])
            refs = call.submit(self.actors[index])
            self.busy[index] += 1
            self.events.add(refs[0], self._finisher(call, refs, index))

    def fail_queued(self, reason: str) -> None:
        """Fail every queued call (no actor is left to run it)."""
        calls = [call for _, _, call in self._queue]
        self._queue.clear()
        for call in calls:
            call.fail(reason)

    def _finisher(self, call: _Call, refs: list[ray.ObjectRef], index: int) -> Callable[[Waitable], None]:
        def finish(_: Waitable) -> None:
            self.busy[index] -= 1
            call.done(refs, index)

        return finish


@dataclass
class _Style:
    """A style image's statistics: the object ref the actors share, and the driver's copy."""

    uri: str
    ref: ray.ObjectRef | None = None
    stats: StyleStats | None = None
    error: str = ""


@dataclass
class _Progress:
    """Counters behind the progress line."""

    total_pairs: int
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "skipped": 0, "failed": 0})
    tiles_done: int = 0
    tiles_total: int = 0
    megapixels: float = 0.0
    last_line: float = field(default_factory=time.perf_counter)

    def line(self, in_flight: int) -> str:
        elapsed = time.perf_counter() - self.started
        rate = self.megapixels / elapsed if elapsed > 0 else 0.0
        c = self.counts
        return (
            f"progress: pairs {self.done}/{self.total_pairs} (ok {c['ok']}, skipped {c['skipped']}, "
            f"failed {c['failed']}), {in_flight} in flight | tile rounds {self.tiles_done}/{self.tiles_total} | "
            f"{self.megapixels:.2f} MP, {rate:.3f} MP/s | {elapsed:.0f} s"
        )


class _PairRun:
    """One pair's way through read, the levels' rounds (or one call) and write."""

    def __init__(self, job: _Job, pair: Pair, seq: int, style: _Style) -> None:
        self.job, self.pair, self.seq, self.style = job, pair, seq, style
        self.finished = False
        self.started = time.perf_counter()
        self.header: ImageHeader | None = None
        self.report: RunReport | None = None
        self.tiles: list[Tile] = []
        self.cores: list[Rect] = []
        self.alpha: list[ray.ObjectRef] = []
        self.image: list[ray.ObjectRef] = []
        self.received = 0
        self.size = (0, 0)
        self.bounds = Rect(0, 0, 0, 0)
        self.level_index = 0
        self.pending = 0
        self.stats: list[FeatureStats | None] = []
        self.features: list[ray.ObjectRef | None] = []
        self.next_image: list[ray.ObjectRef | None] = []
        self.workers: set[str] = set()
        self.seconds = {"stylize": 0.0, "compute": 0.0, "reduce": 0.0, "write": 0.0}
        self.stylize_started = 0.0
        self.mode = "tiled"

    # -- plumbing --------------------------------------------------------------------------

    def _guard(self, fn: Callable[[Waitable], None]) -> Callable[[Waitable], None]:
        """Run an I/O callback of this pair; any error fails the pair instead of the job."""

        def run(waitable: Waitable) -> None:
            if self.finished:
                return
            try:
                fn(waitable)
            except Exception as e:
                self.fail(e)

        return run

    def _call(
        self,
        submit: Callable[[ActorHandle], list[ray.ObjectRef]],
        done: Callable[[list[ray.ObjectRef]], None],
    ) -> None:
        """Queue a model call of this pair; its errors fail the pair (and retire a dead actor)."""

        def finish(refs: list[ray.ObjectRef], index: int) -> None:
            if self.finished:
                return
            try:
                done(refs)
            except Exception as e:
                if isinstance(e, ActorDiedError):
                    self.job.pool.retire(index)
                self.fail(e)

        self.pending += 1
        self.job.pool.submit((self.seq, 0), _Call(submit, finish, self._fail_unless_finished, lambda: self.finished))

    def _fail_unless_finished(self, reason: str) -> None:
        if not self.finished:
            self.fail(reason)

    def _account(self, info: CallInfo) -> None:
        self.workers.add(info.worker)
        self.seconds["compute"] += info.seconds
        self.job.progress.tiles_done += 1

    # -- read ------------------------------------------------------------------------------

    def start(self) -> None:
        args = self.job.args
        if args.mode in _ONE_CALL_MODES:
            self._stylize_file()
            return
        gen = cut_image.options(num_cpus=self.job.settings.io_cpus, max_retries=self.job.settings.retries).remote(
            self.pair.content_uri,
            tile=args.tile,
            max_pixels=args.max_pixels,
            storage_options=args.storage_options,
        )
        self.job.events.add(gen, self._guard(self._on_item))

    def _on_item(self, gen: ray.ObjectRefGenerator) -> None:
        try:
            ref = next(gen)
        except StopIteration:
            raise RuntimeError(f"reading {self.pair.content_uri} stopped after {self.received} items") from None
        self.received += 1
        header = self.header
        if header is None:
            self.header = header = ray.get(ref)
            self.job.progress.tiles_total += 1 if header.one_call else 2 * header.tiles * len(self.job.levels)
        elif header.one_call:
            self._stylize_decoded(ref)
            return
        elif header.has_alpha and self.received % 2:
            self.alpha.append(ref)
        else:
            self.image.append(ref)
        if not header.one_call and self.received == 1 + header.tiles * (2 if header.has_alpha else 1):
            self._start_tiled()
            return
        self.job.events.add(gen, self._guard(self._on_item))

    # -- one call --------------------------------------------------------------------------

    def _one_call(self, submit: Callable[[ActorHandle], list[ray.ObjectRef]]) -> None:
        self.job.progress.tiles_total += 0 if self.header else 1

        def done(refs: list[ray.ObjectRef]) -> None:
            info: CallInfo = ray.get(refs[0])
            self._account(info)
            self.report = info.report
            self.mode = info.report.mode
            self.succeed()

        self._call(submit, done)

    def _stylize_decoded(self, image: ray.ObjectRef) -> None:
        """An image that fits in one tile, decoded by the cut task: one actor call."""
        args = self.job.args
        self._one_call(
            lambda actor: [
                actor.stylize.remote(
                    image, self.style.ref, self.pair.output_uri,
                    mode=args.mode, tile=args.tile, alpha=args.alpha, quality=args.quality,
                )
            ]
        )

    def _stylize_file(self) -> None:
        """``whole``/``thumbnail`` modes: the actor reads, stylizes and writes in one call."""
        args = self.job.args
        self._one_call(
            lambda actor: [
                actor.stylize_file.remote(
                    self.pair.content_uri, self.style.ref, self.pair.output_uri,
                    mode=args.mode, tile=args.tile, alpha=args.alpha, max_pixels=args.max_pixels,
                    quality=args.quality,
                )
            ]
        )

    # -- tiled -----------------------------------------------------------------------------

    def _start_tiled(self) -> None:
        header = self.header
        self.tiles = plan_tiles(header.height, header.width, tile=self.job.args.tile)
        self.cores = [t.core for t in self.tiles]
        self.size = canvas_size(header.height, header.width)
        self.bounds = Rect(0, 0, *self.size)
        self.stylize_started = time.perf_counter()
        self._round_a()

    @property
    def _level(self) -> int:
        return self.job.levels[self.level_index]

    @property
    def _geo(self) -> LevelGeometry:
        return self.job.geometry[self._level]

    def _tile_call(
        self,
        method: str,
        head: tuple[Any, ...],
        chunks: list[ray.ObjectRef],
        done: Callable[[list[ray.ObjectRef]], None],
    ) -> None:
        """Queue ``actor.<method>(*head, *chunks)``.

        The chunks go as top-level arguments, so Ray resolves them before the call runs and
        the actor reads them in place from its node's object store.
        """
        self._call(lambda actor: getattr(actor, method).remote(*head, *chunks), done)

    def _round_a(self) -> None:
        level, geo = self._level, self._geo
        n = len(self.tiles)
        self.stats, self.features, self.pending = [None] * n, [None] * n, 0
        for i, tile in enumerate(self.tiles):
            near = overlapping(self.cores, tile.core.grow(geo.encoder_halo, self.bounds))
            head = (level, tile, self.size, [self.cores[j] for j in near])
            chunks = [self.image[j] for j in near]
            self._tile_call("round_a", head, chunks, lambda refs, i=i: self._on_round_a(i, refs))

    def _on_round_a(self, i: int, refs: list[ray.ObjectRef]) -> None:
        info: CallInfo = ray.get(refs[0])
        self._account(info)
        self.stats[i], self.features[i] = info.stats, refs[1]
        self.pending -= 1
        if self.pending == 0:
            self._round_b()

    def _round_b(self) -> None:
        level, geo = self._level, self._geo
        start = time.perf_counter()
        content = merge_stats(self.stats)
        transform = ray.put(whitening_coloring(content, self.style.stats[level], alpha=self.job.args.alpha))
        self.seconds["reduce"] += time.perf_counter() - start
        self.stats = []
        self.next_image = [None] * len(self.tiles)
        for i, tile in enumerate(self.tiles):
            halo = geo.decoder_halo if geo.cache_features else geo.halo
            near = overlapping(self.cores, tile.core.grow(halo, self.bounds))
            if geo.cache_features:
                rects = [self.cores[j].scaled(geo.scale) for j in near]
                chunks = [self.features[j] for j in near]
            else:
                rects = [self.cores[j] for j in near]
                chunks = [self.image[j] for j in near]
            head = (level, tile, self.size, transform, rects)
            self._tile_call("round_b", head, chunks, lambda refs, i=i: self._on_round_b(i, refs))

    def _on_round_b(self, i: int, refs: list[ray.ObjectRef]) -> None:
        info: CallInfo = ray.get(refs[1])
        self._account(info)
        self.next_image[i] = refs[0]
        self.pending -= 1
        if self.pending:
            return
        self.image, self.features, self.next_image = self.next_image, [], []
        self.level_index += 1
        if self.level_index < len(self.job.levels):
            self._round_a()
        else:
            self._write()

    def _write(self) -> None:
        args, header = self.job.args, self.header
        self.seconds["stylize"] = time.perf_counter() - self.stylize_started
        bounds = Rect(0, 0, header.height, header.width)
        alpha_rects = [intersection(core, bounds) for core in self.cores] if header.has_alpha else []
        ref = write_chunks.options(num_cpus=self.job.settings.io_cpus, max_retries=self.job.settings.retries).remote(
            self.pair.output_uri, header.height, header.width, self.cores, alpha_rects, header.icc_profile,
            *self.image, *self.alpha, quality=args.quality, storage_options=args.storage_options,
        )
        self.image, self.alpha = [], []
        self.job.events.add(ref, self._guard(self._on_written))

    def _on_written(self, ref: ray.ObjectRef) -> None:
        self.seconds["write"] = ray.get(ref)
        self.succeed()

    # -- the row ---------------------------------------------------------------------------

    def _row(self, status: str, error: str = "") -> ManifestRow:
        header, report, s = self.header, self.report, dict(self.seconds)
        width = height = tiles = 0
        mode = ""
        if report is not None:  # one call: the engine's own account
            width, height, tiles, mode = report.width, report.height, report.tiles, report.mode
            s.update({k: report.seconds.get(k, 0.0) for k in ("stylize", "write")})
        elif header is not None:
            width, height, tiles, mode = header.width, header.height, header.tiles, self.mode
        read = header.read_seconds if header else (report.seconds.get("read", 0.0) if report else 0.0)
        return ManifestRow(
            self.pair.content_uri,
            self.pair.style_uri,
            self.pair.output_uri,
            status,
            error=error,
            width=width,
            height=height,
            tiles=tiles,
            mode=mode,
            seconds=time.perf_counter() - self.started,
            read_seconds=read,
            stylize_seconds=s["stylize"],
            compute_seconds=s["compute"],
            reduce_seconds=s["reduce"],
            write_seconds=s["write"],
            worker=",".join(sorted(self.workers)),
            model_id=self.job.model_id,
        )

    def succeed(self) -> None:
        self.finished = True
        self.job.finish(self, self._row("ok"))

    def fail(self, error: BaseException | str) -> None:
        self.finished = True
        self.image, self.alpha, self.features, self.next_image = [], [], [], []
        message = error if isinstance(error, str) else one_line_error(error)
        self.job.finish(self, self._row("failed", message))


class _Job:
    """Runs the pairs on a started actor pool and returns their manifest rows."""

    def __init__(
        self,
        args: argparse.Namespace,
        settings: BatchSettings,
        writer: ManifestWriter,
        pool: _Pool,
        events: _Events,
        progress: _Progress,
    ) -> None:
        self.args, self.settings, self.writer = args, settings, writer
        self.pool, self.events, self.progress = pool, events, progress
        info = pool.infos[0]
        self.model_id = info.model_id
        self.levels = tuple(k for k in CASCADE if k in info.channels)
        self.geometry = {k: level_geometry(k, info.channels[k]) for k in self.levels}
        self.active: dict[int, _PairRun] = {}
        self.rows: list[ManifestRow] = []
        self._unwritten: list[ManifestRow] = []

    def record(self, rows: Sequence[ManifestRow]) -> None:
        """Count and log ``rows``; :meth:`flush` writes them at the end of this round of events."""
        self._unwritten.extend(rows)
        progress = self.progress
        for row in rows:
            progress.done += 1
            progress.counts[row.status] += 1
            if row.status == "ok":
                progress.megapixels += row.megapixels
                log.info("[%d/%d] ok %s (%dx%d, %d tiles, %.1f s)", progress.done, progress.total_pairs,
                         row.output_uri, row.width, row.height, row.tiles, row.seconds)
            else:
                log.warning("[%d/%d] failed %s x %s: %s", progress.done, progress.total_pairs,
                            row.content_uri, row.style_uri, row.error)
        self.rows.extend(rows)

    def flush(self) -> None:
        """Write the rows finished since the last flush as one manifest file.

        Pairs that finish together share a file, so a bucket of small images does not make
        one file per pair, and a crash loses no row that was reported.
        """
        if self._unwritten:
            self.writer.write(self._unwritten)
            self._unwritten = []

    def finish(self, run: _PairRun, row: ManifestRow) -> None:
        """A pair is done either way: free its in-flight slot and record its row."""
        self.active.pop(run.seq, None)
        self.record([row])

    def _load_styles(self, uris: Sequence[str]) -> dict[str, _Style]:
        styles = {uri: _Style(uri) for uri in dict.fromkeys(uris)}
        for style in styles.values():

            def submit(actor: ActorHandle, style: _Style = style) -> list[ray.ObjectRef]:
                return [actor.style.remote(style.uri, style_size=self.args.style_size, max_pixels=self.args.max_pixels)]

            def done(refs: list[ray.ObjectRef], index: int, style: _Style = style) -> None:
                try:
                    style.stats, style.ref = ray.get(refs[0]), refs[0]
                except Exception as e:
                    if isinstance(e, ActorDiedError):
                        self.pool.retire(index)
                    fail(one_line_error(e), style)

            def fail(reason: str, style: _Style = style) -> None:
                style.error = reason
                log.warning("style %s failed: %s", style.uri, reason)

            self.pool.submit((-1, 0), _Call(submit, done, fail, lambda: False))
        while any(s.stats is None and not s.error for s in styles.values()):
            self._pump()
        return styles

    def _pump(self) -> None:
        """Dispatch, wait for one round of events, and print the progress line when due."""
        self.pool.dispatch()
        if not any(self.pool.alive):
            self.pool.fail_queued(_NO_ACTORS)
        if len(self.events):
            self.events.wait(timeout=self.settings.progress_seconds)
        elif any(self.pool.alive):
            raise RuntimeError("the batch scheduler has nothing to wait for but work left; this is a bug")
        self.flush()
        now = time.perf_counter()
        if now - self.progress.last_line >= self.settings.progress_seconds:
            self.progress.last_line = now
            log.info(self.progress.line(len(self.active)))

    def run(self, pairs: Sequence[Pair]) -> list[ManifestRow]:
        styles = self._load_styles([p.style_uri for p in pairs])
        waiting: deque[tuple[Pair, _Style]] = deque()
        refused = []
        for pair in pairs:
            style = styles[pair.style_uri]
            if style.error:
                refused.append(ManifestRow(pair.content_uri, pair.style_uri, pair.output_uri, "failed",
                                           error=f"style image failed: {style.error}", model_id=self.model_id))
            else:
                waiting.append((pair, style))
        self.record(refused)
        seq = itertools.count()
        while waiting or self.active:
            if not any(self.pool.alive):  # nothing can run them: fail them without reading them
                self.record([ManifestRow(p.content_uri, p.style_uri, p.output_uri, "failed", error=_NO_ACTORS)
                             for p, _ in waiting])
                waiting.clear()
            while waiting and len(self.active) < self.settings.max_in_flight:
                pair, style = waiting.popleft()
                run = _PairRun(self, pair, next(seq), style)
                self.active[run.seq] = run
                run.start()
            self._pump()
        self.flush()
        log.info(self.progress.line(0))
        return self.rows


def _nodes() -> list[dict[str, float]]:
    """Each alive node's total resources."""
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _start_actors(args: argparse.Namespace, settings: BatchSettings, run_id: str) -> list[ActorHandle]:
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
            args.weights,
            name=f"model-{i}",
            device=settings.device,
            threads=threads,
            storage_options=args.storage_options,
        )
        for i in range(settings.workers)
    ]


def _pairs_to_run(pairs: list[Pair], args: argparse.Namespace) -> tuple[list[Pair], list[ManifestRow]]:
    """Split the plan into pairs to run and rows already decided (see :func:`~pipeline.manifest.resume`)."""
    return resume(
        pairs,
        read_manifest(args.output, args.storage_options),
        existing_files(args.output, args.storage_options),
        overwrite=args.overwrite,
        storage_options=args.storage_options,
    )


def run_batch(args: argparse.Namespace, content_uri: str) -> int:
    """Stylize every image under ``content_uri`` with every ``--style`` on Ray; write the manifest.

    Args:
        args: parsed ``jobs.stylize`` flags (``style``, ``output``, ``weights``, ``alpha``,
            ``style_size``, ``mode``, ``tile``, ``max_pixels``, ``quality``,
            ``storage_options``, ``format``, ``workers``, ``gpus_per_worker``,
            ``cpus_per_worker``, ``io_cpus``, ``max_in_flight``, ``calls_per_worker``,
            ``retries``, ``progress_seconds``, ``overwrite``).
        content_uri: a folder or prefix (local or any fsspec URI).

    Returns:
        0 when every pair is ``ok`` or ``skipped``, 1 when any failed or the actors could
        not start.

    Raises:
        ValueError: invalid flags (:class:`~pipeline.preflight.UsageError` for actors the
            cluster cannot place).
        FileNotFoundError, OSError: the input or output cannot be listed or written
            (missing bucket, unreachable endpoint), with a one-line message.
        WeightsError, ImageError: the weights or every style fail the driver's checks
            (:func:`~pipeline.preflight.check_batch`).
    """
    start = time.perf_counter()
    contents = list_inputs(content_uri, args.storage_options, exclude_uri=args.output)
    checks = check_batch(args)
    pairs = plan_pairs(contents, args.style, input_uri=content_uri, output_uri=args.output, fmt=args.format)
    todo, decided = _pairs_to_run(checks.stamp(pairs, args), args)
    run_id = new_run_id()
    writer = ManifestWriter(args.output, run_id=run_id, storage_options=args.storage_options, pairs=todo)
    log.info("run %s: %d images x %d styles = %d pairs (%d to run, %d already done, %d refused) -> %s",
             run_id, len(contents), len(args.style), len(pairs), len(todo),
             sum(r.status == "skipped" for r in decided), sum(r.status == "failed" for r in decided), args.output)
    progress = _Progress(total_pairs=len(pairs))
    rows = list(decided)
    if decided:
        writer.write(decided)
        progress.done = len(decided)
        for row in decided:
            progress.counts[row.status] += 1
    started_ray = _connect_ray() if todo else False
    try:
        if todo:
            rows += _run_pairs(args, todo, writer, progress, run_id)
    except _StartupError as e:
        log.error("%s", e)
        return 1
    finally:
        if started_ray:
            ray.shutdown()
    summary = summarize(rows, time.perf_counter() - start)
    log.info("done: %s", summary.line())
    return 1 if summary.failed else 0


class _StartupError(RuntimeError):
    """The model actors could not start (bad weights, no resources); nothing can run."""


def _run_pairs(
    args: argparse.Namespace, pairs: list[Pair], writer: ManifestWriter, progress: _Progress, run_id: str
) -> list[ManifestRow]:
    settings = _settings(args)
    log.info("starting %d model actors (%s, %g CPU and %g GPU each), up to %d images in flight",
             settings.workers, settings.device, settings.cpus_per_worker, settings.gpus_per_worker,
             settings.max_in_flight)
    actors = _start_actors(args, settings, run_id)
    try:
        try:
            infos = ray.get([a.describe.remote() for a in actors])
        except Exception as e:
            raise _StartupError(f"model actors failed to start: {one_line_error(e)}") from e
        for info in infos:
            log.info("actor %s ready: model %s on %s (pid %d)", info.worker, info.model_id, info.device, info.pid)
        events = _Events()
        pool = _Pool(actors, infos, depth=settings.calls_per_worker, events=events)
        job = _Job(args, settings, writer, pool, events, progress)
        return job.run(pairs)
    finally:
        for actor in actors:
            ray.kill(actor)
