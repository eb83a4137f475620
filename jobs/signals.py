"""Stop signals as an exception, so that a stopped job cleans up on its way out.

``timeout``, Kubernetes, ``ray job stop`` and a terminal stop a process with SIGTERM, SIGHUP
or SIGINT (Ctrl-C). Python's defaults end the process at once on SIGTERM and SIGHUP, so no
``finally`` runs and a single image's temporary folder (its input, level images and cached
features: gigabytes at gigapixel) stays behind, and they turn SIGINT into a traceback. Within
:func:`stop_on_signals`, each of them raises :class:`Stopped` in the main thread instead: the
temporary folders' context managers remove them, the batch driver stops the pairs in flight
and the Ray it started, and the job's ``main`` prints one line and returns
:attr:`Stopped.status`, 128 + the signal's number, the status a shell reports for a process
the signal ended.

A second signal while the first is being handled gets the system's default action (the
process ends at once), so a clean-up that hangs can still be cut short.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

__all__ = ["STOP_SIGNALS", "Stopped", "stop_on_signals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """The job was told to stop by a signal.

    A :class:`KeyboardInterrupt`, so ``except Exception`` (a pair's failure handling, a
    retry loop) lets it through, as it does Ctrl-C.

    Attributes:
        signum: the signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        """The signal's name, e.g. ``SIGTERM``."""
        return signal.Signals(self.signum).name

    @property
    def status(self) -> int:
        """The exit status for it: 128 + the signal's number (143 for SIGTERM, 130 for SIGINT)."""
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM, SIGINT and SIGHUP raise :class:`Stopped` in the main thread.

    A ``KeyboardInterrupt`` that leaves the block is raised as :class:`Stopped` for the signal
    received (Ray's ``ray.get`` reports a signal that arrived while it waited as a
    ``KeyboardInterrupt`` of its own). The handlers in place before are restored on the way
    out. Outside the main thread (where Python cannot install handlers) the block runs with
    the handlers as they are.

    Raises:
        Stopped: a stop signal arrived.
    """
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        for each in STOP_SIGNALS:  # the next one ends the process at once
            signal.signal(each, signal.SIG_DFL)
        raise Stopped(signum)

    try:
        previous = {each: signal.signal(each, stop) for each in STOP_SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    except KeyboardInterrupt as e:
        if isinstance(e, Stopped):
            raise
        raise Stopped(received[0] if received else signal.SIGINT) from e
    finally:
        for each, handler in previous.items():
            signal.signal(each, signal.SIG_DFL if handler is None else handler)
