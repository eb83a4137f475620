"""Progress a person reads: one line redrawn in place on a terminal, plain log lines elsewhere.

A long single image reports tile rounds done out of the total and an ETA
(:class:`TileProgress`); the batch job reports pairs, megapixels and MP/s
(:class:`BatchProgress`). On a terminal the line is redrawn a few times a second; under
``ray job logs``, a file or a test's captured log (not a TTY) the same line goes to the
logger every ``seconds``, so logs stay readable and greppable. No third-party bar is
needed for one line.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

__all__ = ["BatchProgress", "ProgressLine", "TileProgress"]

# A terminal line is redrawn at most this often.
_REDRAW_SECONDS = 0.2


class ProgressLine:
    """Shows a status line: redrawn in place on a TTY, logged every ``seconds`` otherwise.

    Args:
        log: where plain lines go.
        seconds: interval of the plain lines.
        stream: the terminal to redraw on, when it is one (default ``sys.stderr``).
    """

    def __init__(self, log: logging.Logger, *, seconds: float, stream: TextIO | None = None) -> None:
        self._log, self._seconds = log, seconds
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._last = time.perf_counter()
        self._width = 0

    def show(self, line: str, *, force: bool = False) -> None:
        """Show ``line`` if it is time to (always when ``force``)."""
        now = time.perf_counter()
        if not force and now - self._last < (_REDRAW_SECONDS if self._tty else self._seconds):
            return
        self._last = now
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width))
            self._stream.flush()
            self._width = len(line)
        else:
            self._log.info("%s", line)

    def close(self) -> None:
        """End the redrawn line so later output starts on a new one."""
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 600 else f"{seconds:.0f} s"


class TileProgress:
    """Tile rounds of one image: pass it as the engine's ``on_tile``.

    Args:
        total: tile rounds the cascade runs (:func:`pipeline.engine.tiled.tile_rounds`).
        line: where the line is shown.
    """

    def __init__(self, total: int, line: ProgressLine) -> None:
        self.total, self.done = total, 0
        self._line = line
        self._start = time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        self._line.show(self.text(), force=self.done >= self.total)

    def text(self) -> str:
        elapsed = time.perf_counter() - self._start
        eta = elapsed * (self.total - self.done) / self.done if self.done else float("nan")
        eta_text = _duration(eta) if self.done else "?"
        return (f"tiles {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f} %), "
                f"{_duration(elapsed)} elapsed, ETA {eta_text}")


class BatchProgress:
    """Counters of a batch job, updated from the pairs' threads; :meth:`text` is the line.

    Args:
        total_pairs: pairs in the plan (skipped and refused ones included).
    """

    def __init__(self, total_pairs: int) -> None:
        self.total_pairs = total_pairs
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.in_flight = 0
        self.tiles_done = self.tiles_total = 0
        self.megapixels = 0.0
        self._lock = threading.Lock()
        self._start = time.perf_counter()

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def add_tiles(self, total: int) -> None:
        """A pair started: ``total`` more tile rounds to run."""
        with self._lock:
            self.tiles_total += total

    def tiles(self, n: int) -> None:
        """``n`` tile rounds finished (an executor's ``on_tile``)."""
        with self._lock:
            self.tiles_done += n

    def pair(self, status: str, megapixels: float = 0.0, *, count: int = 1) -> None:
        """``count`` pairs ended with ``status``; ``megapixels`` counts toward the rate when they ran."""
        with self._lock:
            self.counts[status] += count
            self.megapixels += megapixels

    def text(self) -> str:
        elapsed = time.perf_counter() - self._start
        c = self.counts
        return (
            f"pairs {self.done}/{self.total_pairs} (ok {c['ok']}, skipped {c['skipped']}, failed {c['failed']}), "
            f"{self.in_flight} in flight | tiles {self.tiles_done}/{self.tiles_total} | "
            f"{self.megapixels:.2f} MP, {self.megapixels / elapsed if elapsed > 0 else 0.0:.3f} MP/s | "
            f"{_duration(elapsed)}"
        )
