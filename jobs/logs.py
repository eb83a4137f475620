"""The jobs' log on stderr: one line per message, and tracebacks only when asked for.

At the default verbosity every failure is the one line :func:`pipeline.errors.one_line_error`
makes of it, and nothing repeats it in another form: libvips' own warnings (``VIPS: not
enough data`` before the error that says the file is truncated) stay quiet, and every line's
control characters are escaped, so a storage key that holds a line break or a terminal escape
cannot forge or overwrite a line. ``--verbose`` adds the debug lines, among them the
traceback of each failure, and lets libvips and Ray report everything they see.
"""

from __future__ import annotations

import logging
import sys

from pipeline.errors import escape_controls

__all__ = ["OneLineFormatter", "setup_logging"]


class OneLineFormatter(logging.Formatter):
    """A formatter that escapes control characters in the message (a traceback, added in
    verbose mode, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def setup_logging(*, verbose: bool = False) -> None:
    """Send the ``ultrastyle`` loggers' lines to stderr as ``HH:MM:SS message``.

    As :func:`logging.basicConfig` does, the handler is added only when the root logger has
    none (a caller that set up logging itself, or a test capturing it, keeps its own).

    Args:
        verbose: debug lines and tracebacks too, and libvips' warnings.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(OneLineFormatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        root.addHandler(handler)
    logging.getLogger("ultrastyle").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("pyvips").setLevel(logging.DEBUG if verbose else logging.ERROR)
