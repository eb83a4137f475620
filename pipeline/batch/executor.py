"""Tiles on Ray: the executor the batch job hands to :func:`pipeline.engine.tiled.run_levels`.

:class:`RayExecutor` is the Ray counterpart of :class:`pipeline.engine.tiled.CanvasExecutor`:
the level's image lives in the object store as one array per tile core (uint8 for an 8-bit
input, float32 between levels), and each round sends the tiles, a few per call, to the model
actors with exactly the neighbouring cores their halos reach. Round A returns each core's
statistics, plus its features only on the levels where round B reads them back (3..5);
once those are kept, the level's image is released, since round B does not read it.

:class:`ModelPool` shares the actors between the pairs' threads. Each call goes to the live
actor with the least work outstanding (pixels sent and not yet returned), so several
images' rounds interleave on the actors and a level's barrier in one image is filled with
another image's tiles; an actor found unavailable (being restarted after its node went away)
gets no new calls for a while when another is up. Calls block their thread in ``ray.wait``; Ray's own ``ActorPool``
is not thread-safe, hence this small one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

from pipeline.batch.actors import CallInfo, WorkerInfo
from pipeline.engine.stats import TileStats, TileStatsFold
from pipeline.engine.tiled import LevelGeometry, TileCallback
from pipeline.engine.wct import ColorTransform
from pipeline.imaging.chunks import overlapping
from pipeline.imaging.tiles import Rect, Tile

__all__ = [
    "Call",
    "Done",
    "JobStopping",
    "ModelPool",
    "NoActorsError",
    "RayExecutor",
    "get_unless_stopping",
    "tiles_per_call",
]

log = logging.getLogger("ultrastyle.batch")

# A call carries at least this many core pixels when the image has tiles to spare, so the
# per-call cost (submission, argument resolution, result objects) is noise next to the compute.
MIN_CALL_PIXELS = 1 << 20
# ... but each actor still gets this many calls per round, so the round's end stays balanced.
CALLS_PER_ACTOR = 4
# An actor that was unavailable (being restarted, often on another node) gets no new calls
# for this long while another actor is available.
UNAVAILABLE_SECONDS = 30.0
# How often a wait for Ray looks whether the job is stopping.
STOP_POLL_SECONDS = 0.5


class NoActorsError(RuntimeError):
    """Every model actor died and Ray gave up restarting them."""

    def __init__(self) -> None:
        super().__init__("no model actor is left (all died and Ray gave up restarting them)")


class JobStopping(RuntimeError):
    """The job is stopping (a stop signal): a wait for Ray gave up on what was in flight."""

    def __init__(self) -> None:
        super().__init__("the job is stopping")


def get_unless_stopping(ref: ray.ObjectRef, stop: threading.Event | None) -> Any:
    """``ray.get(ref)``, giving up with :class:`JobStopping` within :data:`STOP_POLL_SECONDS`
    of ``stop`` being set (a thread blocked in Ray cannot be interrupted otherwise, and the
    driver cannot shut Ray down under it)."""
    while True:
        try:
            return ray.get(ref, timeout=None if stop is None else STOP_POLL_SECONDS)
        except GetTimeoutError:
            if stop.is_set():
                ray.cancel(ref)  # a task that is stopped now, while the cluster is up, ends without complaint
                raise JobStopping from None


@dataclass(frozen=True)
class Call:
    """One actor method call: ``actor.<method>.options(num_returns=...).remote(*args, **kwargs)``.

    Attributes:
        weight: the work it carries (pixels), for balancing the actors.
    """

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_returns: int = 1
    weight: float = 1.0


@dataclass(frozen=True)
class Done:
    """A finished call: its first return value, fetched, and the refs of the others."""

    value: Any
    rest: list[ray.ObjectRef]


class ModelPool:
    """The model actors, shared by every pair's thread, least-loaded first.

    Args:
        actors: the started :class:`~pipeline.batch.actors.ModelActor` handles.
        infos: what each reported from ``describe``.
        stop: once set, :meth:`run` stops waiting and raises :class:`JobStopping`.
    """

    def __init__(
        self, actors: Sequence[ActorHandle], infos: Sequence[WorkerInfo], *, stop: threading.Event | None = None
    ) -> None:
        self.actors, self.infos = list(actors), list(infos)
        self._stop = stop
        self._load = [0.0] * len(actors)
        self._alive = [True] * len(actors)
        self._avoid_until = [0.0] * len(actors)
        self._lock = threading.Lock()

    @property
    def alive(self) -> int:
        """Actors still in use."""
        return sum(self._alive)

    def _submit(self, call: Call) -> tuple[int, list[ray.ObjectRef]]:
        with self._lock:
            live = [i for i, ok in enumerate(self._alive) if ok]
            if not live:
                raise NoActorsError
            now = time.monotonic()
            live = [i for i in live if self._avoid_until[i] <= now] or live
            index = min(live, key=self._load.__getitem__)
            self._load[index] += call.weight
        method = getattr(self.actors[index], call.method).options(num_returns=call.num_returns)
        refs = method.remote(*call.args, **call.kwargs)
        return index, [refs] if call.num_returns == 1 else list(refs)

    def _release(self, index: int, weight: float) -> None:
        with self._lock:
            self._load[index] -= weight

    def _retire(self, index: int) -> None:
        with self._lock:
            if not self._alive[index]:
                return
            self._alive[index] = False
        log.warning("model actor %s is gone for good; %d left", self.infos[index].worker, self.alive)

    def run(self, calls: Sequence[Call], *, on_done: Callable[[int, Any], Any] | None = None) -> list[Done]:
        """Send every call, wait for all, and return them in ``calls``' order.

        Args:
            calls: the calls; all are sent at once (the actors queue them).
            on_done: called as ``on_done(i, value)`` as call ``i`` finishes (progress, a
                streaming reduction); what it returns is kept as the call's value.

        Raises:
            The first failed call's error (the original exception, as Ray re-raises it);
            :class:`NoActorsError` when no actor is left; :class:`JobStopping` once the
            pool's ``stop`` is set.
        """
        sent = [self._submit(call) for call in calls]
        pending = {refs[0]: i for i, (_, refs) in enumerate(sent)}
        values: list[Any] = [None] * len(calls)
        poll = None if self._stop is None else STOP_POLL_SECONDS
        try:
            while pending:
                keys = list(pending)
                ready, _ = ray.wait(keys, num_returns=1, fetch_local=False, timeout=poll)
                if not ready:
                    if self._stop.is_set():
                        for ref in keys:  # cancelled now, while the cluster is up: no error logged later
                            ray.cancel(ref)
                        raise JobStopping
                    continue
                if len(keys) > 1:
                    ready, _ = ray.wait(keys, num_returns=len(keys), timeout=0, fetch_local=False)
                for ref in ready:
                    i = pending.pop(ref)
                    index = sent[i][0]
                    self._release(index, calls[i].weight)
                    try:
                        values[i] = ray.get(ref)
                    except ActorDiedError:
                        self._retire(index)
                        raise
                    except ActorUnavailableError:
                        with self._lock:
                            self._avoid_until[index] = time.monotonic() + UNAVAILABLE_SECONDS
                        raise
                    if on_done is not None:
                        values[i] = on_done(i, values[i])
        finally:
            for i in pending.values():
                self._release(sent[i][0], calls[i].weight)
        return [Done(values[i], refs[1:]) for i, (_, refs) in enumerate(sent)]


def tiles_per_call(tiles: int, tile: int, actors: int) -> int:
    """Tiles to send per actor call: enough pixels per call, enough calls per actor."""
    by_size = max(1, MIN_CALL_PIXELS // (tile * tile))
    by_balance = max(1, tiles // (CALLS_PER_ACTOR * max(actors, 1)))
    return min(by_size, by_balance)


class RayExecutor:
    """Runs a level's rounds on the model actors; the image lives in the object store.

    Args:
        pool: the shared actors.
        image: one ref per tile core of the padded input, in ``tiles``' order
            (``(3, h, w)`` uint8 or float32, from :func:`~pipeline.batch.actors.cut_image`).
        tiles: the image's tiles (:func:`~pipeline.imaging.tiles.plan_tiles`); the rounds must be
            given this same list.
        size: ``(height, width)`` of the padded canvas.
        tiles_per_call: consecutive tiles (row-major, so they share neighbours) per call.
        on_tile: called with the number of tile rounds each finished call ran (progress).

    Attributes:
        image: refs of the current level's cores (after the last level: the output, uint8).
        workers: actors that ran calls for this image.
        compute_seconds: time the actors spent in the pipeline functions, summed.
    """

    def __init__(
        self,
        pool: ModelPool,
        image: Sequence[ray.ObjectRef],
        tiles: Sequence[Tile],
        size: tuple[int, int],
        *,
        tiles_per_call: int = 1,
        on_tile: TileCallback | None = None,
    ) -> None:
        if len(image) != len(tiles):
            raise ValueError(f"image must have one core per tile ({len(tiles)}), got {len(image)}")
        self.pool, self.image = pool, list(image)
        self._tiles = list(tiles)
        self._cores = [t.core for t in tiles]
        self._size, self._bounds = size, Rect(0, 0, *size)
        self._groups = [range(i, min(i + tiles_per_call, len(tiles))) for i in range(0, len(tiles), tiles_per_call)]
        self._on_tile = on_tile
        self._features: list[ray.ObjectRef] = []
        self.workers: set[str] = set()
        self.compute_seconds = 0.0

    def _near(self, group: range, halo: int) -> list[int]:
        """Cores that the halos of the group's tiles reach."""
        found: set[int] = set()
        for i in group:
            found.update(overlapping(self._cores, self._cores[i].grow(halo, self._bounds)))
        return sorted(found)

    def _run(self, calls: list[Call], fold: TileStatsFold | None = None) -> list[Done]:
        """Run one call per group; with ``fold``, each call's statistics go into it as the call
        finishes and are not kept."""

        def account(i: int, info: CallInfo) -> CallInfo:
            self.workers.add(info.worker)
            self.compute_seconds += info.seconds
            if self._on_tile is not None:
                self._on_tile(len(self._groups[i]))
            if fold is None:
                return info
            for tile, stats in zip(self._groups[i], info.stats, strict=True):
                fold.add(tile, stats)
            return dataclasses.replace(info, stats=())

        return self.pool.run(calls, on_done=account)

    def _check(self, tiles: Sequence[Tile]) -> None:
        if list(tiles) != self._tiles:
            raise ValueError("tiles must be the list this executor was built with")

    def _weight(self, group: range) -> float:
        return float(sum(self._cores[i].area for i in group))

    def round_a(self, geo: LevelGeometry, tiles: Sequence[Tile]) -> TileStats:
        self._check(tiles)
        calls = []
        for group in self._groups:
            near = self._near(group, geo.encoder_halo)
            head = (geo.level, [self._tiles[i] for i in group], self._size, [self._cores[j] for j in near])
            extra = len(group) if geo.cache_features else 0
            calls.append(Call("round_a", (*head, *(self.image[j] for j in near)), num_returns=1 + extra,
                              weight=self._weight(group)))
        fold = TileStatsFold(len(self._tiles))
        done = self._run(calls, fold)
        if geo.cache_features:
            self._features = [ref for d in done for ref in d.rest]
            self.image = []  # round B decodes the features; the image is not read again
        return fold.result()

    def round_b(self, geo: LevelGeometry, tiles: Sequence[Tile], transform: ColorTransform, *, last: bool) -> None:
        self._check(tiles)
        transform_ref = ray.put(transform)
        halo = geo.decoder_halo if geo.cache_features else geo.halo
        calls = []
        for group in self._groups:
            near = self._near(group, halo)
            if geo.cache_features:
                rects = [self._cores[j].scaled(geo.scale) for j in near]
                chunks = [self._features[j] for j in near]
            else:
                rects = [self._cores[j] for j in near]
                chunks = [self.image[j] for j in near]
            head = (geo.level, [self._tiles[i] for i in group], self._size, transform_ref, last, rects)
            calls.append(Call("round_b", (*head, *chunks), num_returns=1 + len(group), weight=self._weight(group)))
        done = self._run(calls)
        self.image = [ref for d in done for ref in d.rest]
        self._features = []
