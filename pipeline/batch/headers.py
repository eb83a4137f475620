"""Image headers read ahead of admission, several at a time, handed back in plan order.

The driver admits a pair by its pixels, which it learns from the image's header. Read one
after another in the driver, headers cost a storage round trip per image before any work
starts (tens of milliseconds each on S3: days for ten million photos, with the model actors
idle meanwhile). :class:`HeaderReader` keeps the next ``ahead`` pairs' headers being read by a
thread pool (the reads are I/O-bound), so the one admission needs next is usually there
already; the pairs of one content image (one per style) share one read. Nothing here knows
about Ray.
"""

from __future__ import annotations

import concurrent.futures
from collections import deque
from collections.abc import Callable, Iterator

from pipeline.batch.manifest import Pair

__all__ = ["HeaderReader"]

Size = tuple[int, int]


class HeaderReader:
    """Reads ``read(content_uri)`` for the pairs coming next, ``threads`` at a time.

    Args:
        pairs: the pairs, in the order they are admitted.
        read: the content's ``(width, height)``; whatever it raises is the pair's failure.
        threads: reads at once.
        ahead: pairs whose reads are started before admission asks for them.
    """

    def __init__(self, pairs: Iterator[Pair], read: Callable[[str], Size], *, threads: int, ahead: int) -> None:
        self._pairs = pairs
        self._read = read
        self._ahead = max(1, ahead)
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, threads), thread_name_prefix="header")
        self._queue: deque[tuple[Pair, concurrent.futures.Future[Size]]] = deque()
        self._exhausted = False
        self._last: tuple[str, concurrent.futures.Future[Size]] | None = None

    def _fill(self) -> None:
        while not self._exhausted and len(self._queue) < self._ahead:
            pair = next(self._pairs, None)
            if pair is None:
                self._exhausted = True
                break
            if self._last is None or self._last[0] != pair.content_uri:
                self._last = (pair.content_uri, self._pool.submit(self._read, pair.content_uri))
            self._queue.append((pair, self._last[1]))

    @property
    def done(self) -> bool:
        """Every pair has been handed out."""
        self._fill()
        return not self._queue

    def head(self) -> tuple[Pair, concurrent.futures.Future[Size]] | None:
        """The next pair and its header's read (``None`` when none is left), without taking it."""
        self._fill()
        return self._queue[0] if self._queue else None

    def pop(self) -> tuple[Pair, concurrent.futures.Future[Size]]:
        """Take the next pair (see :meth:`head`)."""
        self._fill()
        return self._queue.popleft()

    def drain(self) -> Iterator[Pair]:
        """Every pair not handed out yet, without reading their headers."""
        while self._queue:
            yield self._queue.popleft()[0]
        self._exhausted = True
        yield from self._pairs

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> HeaderReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
