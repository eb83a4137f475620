"""Progress a person reads: a tqdm bar on a terminal, plain log lines everywhere else.

A long single image reports tile rounds done out of the total, with an ETA
(:class:`TileProgress`); the batch job reports pairs, tiles, megapixels and MP/s
(:class:`BatchProgress`).

- On a terminal the figures are a tqdm bar at the bottom of the screen, redrawn a few times a
  second. While it shows, the console handlers of the logger's chain write through
  ``tqdm.write`` (:func:`tqdm.contrib.logging.logging_redirect_tqdm`), so a log line is printed
  above the bar instead of into it; the handlers are restored when the bar closes.
- Elsewhere (``ray job logs``, a file, a test's captured output) there is no bar: the same
  figures go to the logger as one plain line every ``seconds``, so logs stay readable and
  greppable (``tiles 10/40 (25 %), 3 s elapsed, ETA 9 s``).

The bar opens when there is first something to show, so whatever is logged before the work
starts (models loading, a Ray cluster starting) prints as usual.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["BatchProgress", "ProgressDisplay", "TileProgress", "is_terminal"]

# A terminal bar is redrawn at most this often (tqdm's own ``mininterval`` is the same).
_REDRAW_SECONDS = 0.2


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an open terminal (a closed or detached stream is not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _console_loggers(log: logging.Logger) -> list[logging.Logger]:
    """The loggers a record of ``log`` reaches that print it on stdout or stderr: those the
    bar must write through while it shows."""
    found, current = [], log
    while current is not None:
        if any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
               for h in current.handlers):
            found.append(current)
        current = current.parent if current.propagate else None
    return found


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 600 else f"{seconds:.0f} s"


class ProgressDisplay:
    """Shows ``done`` out of ``total`` units: a tqdm bar on a terminal, a log line every ``seconds`` elsewhere.

    Args:
        log: where plain lines go; on a terminal, the console handlers of its chain write
            through tqdm while the bar shows.
        total: units of the whole job (the bar's 100 %).
        desc: the bar's label (``"tiles"``).
        unit: the bar's unit (``"tile"``).
        seconds: interval of the plain lines.
        stream: the terminal the bar is drawn on, when it is one (default ``sys.stderr``).

    Note:
        Thread-safe: pairs' threads may redraw while the driver shows. Call :meth:`close`
        (``contextlib.closing``) so the log handlers are restored.
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        total: int,
        desc: str,
        unit: str,
        seconds: float,
        stream: TextIO | None = None,
    ) -> None:
        self._log, self._total, self._desc, self._unit = log, total, desc, unit
        self._stream = stream or sys.stderr
        self.terminal = is_terminal(self._stream)
        self._interval = _REDRAW_SECONDS if self.terminal else seconds
        # The bar draws at once; the first plain line waits an interval, so a short run logs none.
        self._last = -float("inf") if self.terminal else time.perf_counter()
        self._lock = threading.Lock()
        self._bar: tqdm | None = None
        self._redirect = contextlib.ExitStack()
        self.shown = self._closed = False

    def show(
        self,
        done: int,
        line: Callable[[], str],
        postfix: Callable[[], str] | None = None,
        *,
        force: bool = False,
        terminal_only: bool = False,
    ) -> None:
        """Show the state if it is time to (always when ``force``).

        Args:
            done: units done so far.
            line: the plain log line (called only when one is logged).
            postfix: what the bar shows after its counts (figures the bar does not have).
            force: show now, whatever the interval.
            terminal_only: redraw the bar, but log no plain line (for callers on worker
                threads, whose plain lines the owner logs at its own pace).
        """
        if terminal_only and not self.terminal:
            return
        with self._lock:
            now = time.perf_counter()
            if self._closed or (not force and now - self._last < self._interval):
                return
            self._last, self.shown = now, True
            if not self.terminal:
                self._log.info("%s", line())
                return
            if self._bar is None:
                self._open(done)
            assert self._bar is not None
            if postfix is not None:
                self._bar.set_postfix_str(postfix(), refresh=False)
            if done != self._bar.n:
                self._bar.update(done - self._bar.n)
            self._bar.refresh()

    def _open(self, done: int) -> None:
        """Start the bar at ``done`` (work done before it, such as skipped pairs, does not count
        toward its rate) and route the console log handlers through it."""
        self._redirect.enter_context(logging_redirect_tqdm(loggers=_console_loggers(self._log)))
        self._bar = tqdm(total=self._total, initial=done, desc=self._desc, unit=self._unit, file=self._stream,
                         dynamic_ncols=True, mininterval=_REDRAW_SECONDS, leave=True)

    def close(self) -> None:
        """Leave the bar's last state on its own line and restore the log handlers; nothing shows
        afterwards (idempotent)."""
        with self._lock:
            self._closed = True
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self._redirect.close()


class TileProgress:
    """Tile rounds of one image, with an ETA: pass it as the engine's ``on_tile``.

    Args:
        total: tile rounds the cascade runs (:func:`pipeline.engine.tiled.tile_rounds`).
        log: where plain lines go.
        seconds: interval of the plain lines (the last round always shows).
        stream: the terminal to draw the bar on, when it is one (default ``sys.stderr``).
    """

    def __init__(self, total: int, log: logging.Logger, *, seconds: float, stream: TextIO | None = None) -> None:
        self.total, self.done = total, 0
        self._display = ProgressDisplay(log, total=total, desc="tiles", unit="tile", seconds=seconds, stream=stream)
        self._start = time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        self._display.show(self.done, self.text, force=self.done >= self.total)

    def text(self) -> str:
        """The plain line: ``tiles 10/40 (25 %), 3 s elapsed, ETA 9 s``."""
        elapsed = time.perf_counter() - self._start
        eta = _duration(elapsed * (self.total - self.done) / self.done) if self.done else "?"
        return (f"tiles {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f} %), "
                f"{_duration(elapsed)} elapsed, ETA {eta}")

    def close(self) -> None:
        """End the bar (see :meth:`ProgressDisplay.close`)."""
        self._display.close()


class BatchProgress:
    """Counters of a batch job, updated from the pairs' threads, and their display.

    The bar counts pairs; its postfix and the plain line add the outcomes, pairs in flight,
    tile rounds and megapixels with their rate.

    Args:
        total_pairs: pairs in the plan (skipped and refused ones included).
        log: where plain lines go.
        seconds: interval of the plain lines.
        stream: the terminal to draw the bar on, when it is one (default ``sys.stderr``).
    """

    def __init__(
        self, total_pairs: int, log: logging.Logger, *, seconds: float, stream: TextIO | None = None
    ) -> None:
        self.total_pairs = total_pairs
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.in_flight = 0
        self.tiles_done = self.tiles_total = 0
        self.megapixels = 0.0
        self._lock = threading.Lock()
        self._start = time.perf_counter()
        self._display = ProgressDisplay(log, total=total_pairs, desc="pairs", unit="pair", seconds=seconds,
                                        stream=stream)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def add_tiles(self, total: int) -> None:
        """A pair started: ``total`` more tile rounds to run."""
        with self._lock:
            self.tiles_total += total

    def tiles(self, n: int) -> None:
        """``n`` tile rounds finished (an executor's ``on_tile``); redraws a terminal's bar."""
        with self._lock:
            self.tiles_done += n
        self._display.show(self.done, self.text, self._figures, terminal_only=True)

    def pair(self, status: str, megapixels: float = 0.0, *, count: int = 1) -> None:
        """``count`` pairs ended with ``status``; ``megapixels`` counts toward the rate when they ran."""
        with self._lock:
            self.counts[status] += count
            self.megapixels += megapixels

    def show(self, *, force: bool = False) -> None:
        """Show the counters if it is time to (the driver calls this as pairs finish)."""
        self._display.show(self.done, self.text, self._figures, force=force)

    def close(self) -> None:
        """Show the final counters, if anything was shown, and end the bar (idempotent)."""
        if self._display.shown:
            self.show(force=True)  # a no-op once closed
        self._display.close()

    def _figures(self) -> str:
        """What the bar shows after its pair count: outcomes, tiles and megapixels."""
        c = self.counts
        return (f"ok {c['ok']}, skipped {c['skipped']}, failed {c['failed']}, {self.in_flight} in flight | "
                f"tiles {self.tiles_done}/{self.tiles_total} | {self._rate()}")

    def _rate(self) -> str:
        elapsed = time.perf_counter() - self._start
        return f"{self.megapixels:.2f} MP, {self.megapixels / elapsed if elapsed > 0 else 0.0:.3f} MP/s"

    def text(self) -> str:
        """The plain line: pairs with their outcomes, in flight, tiles, megapixels, MP/s, elapsed."""
        c = self.counts
        return (
            f"pairs {self.done}/{self.total_pairs} (ok {c['ok']}, skipped {c['skipped']}, failed {c['failed']}), "
            f"{self.in_flight} in flight | tiles {self.tiles_done}/{self.tiles_total} | {self._rate()} | "
            f"{_duration(time.perf_counter() - self._start)}"
        )
