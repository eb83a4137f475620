"""One line per failure: how every error becomes the text a person reads.

The batch job writes :func:`one_line_error` into the manifest's ``error`` column and its log;
the CLI prints it after ``ultrastyle <job>: error:``; image decoding puts libvips' error log
into its messages through it. Whatever raised (our own checks, libvips, fsspec and botocore,
Ray, which wraps a worker's exception and sometimes quotes its traceback), the result is one
line:

- a Ray error is unwrapped to the worker's original exception;
- a traceback quoted inside a message gives its last ``Type: message`` line;
- our own errors (defined under ``pipeline``, ``models`` or ``jobs``) are written as one line
  to be read as it is: a line break in one comes from a name it quotes (a storage key), and
  is kept, escaped;
- libvips' multi-line error log is joined, without pyvips' ``unable to ...`` wrappers;
- other libraries' errors keep their first line (the summary; what follows is detail), with
  their type name in front (``KeyError: 'x'``);
- control characters (line breaks, carriage returns, terminal escapes, bidirectional
  overrides) are escaped as ``\\xNN``/``\\uNNNN``, so a storage key holding them cannot start a
  forged line or rewrite one on a terminal (:func:`escape_controls`, also applied to every
  log line the jobs write).

A full disk is named where it happens (:class:`DiskFullError`): the file being written, the
file system that is full and its free space, and, for temporary files, that ``TMPDIR`` moves
them. It is built on the machine that hit it, since a Ray worker's disk is not the driver's.

Nothing here imports torch, libvips or Ray.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile

__all__ = [
    "ERROR_CHARS",
    "DiskFullError",
    "LocationError",
    "MissingLocationError",
    "escape_controls",
    "is_disk_full",
    "one_line_error",
]

# Longest line kept: enough for a URI and a reason, short enough for a table view or a terminal.
ERROR_CHARS = 400
# C0 and C1 controls and DEL, the Unicode line and paragraph separators, and the bidirectional
# embeddings, overrides and isolates (which reorder what a terminal shows).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_OUR_PACKAGES = ("pipeline", "models", "jobs")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a visible escape (a line break as
    ``\\x0a``), so it prints as one line that shows what it holds."""

    def escape(found: re.Match[str]) -> str:
        code = ord(found.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROLS.sub(escape, text)


class LocationError(OSError):
    """A storage location (the input, the output, a mask folder) cannot be listed or written.

    The message names the location and says why: it is the line a person reads.
    """


class MissingLocationError(LocationError, FileNotFoundError):
    """A storage location does not exist (a missing bucket, prefix or folder)."""


class DiskFullError(OSError):
    """No space left on the file system a file was being written to (``errno.ENOSPC``).

    Its message names the file, the file system's mount point and free space, and says that
    ``TMPDIR`` moves temporary files when the file is one. Build it with :meth:`at`, on the
    machine whose disk is full.
    """

    def __str__(self) -> str:
        return str(self.strerror)

    @classmethod
    def at(cls, path: str) -> DiskFullError:
        """The error for a write to ``path`` that found its file system full."""
        path = os.path.abspath(path)
        mount = _mount_point(path)
        try:
            free = f"{shutil.disk_usage(mount).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        message = f"no space left on device: the file system at {mount} is full ({free}) writing {path}"
        temp = os.path.abspath(tempfile.gettempdir())
        if os.path.commonpath([path, temp]) == temp:
            message += f"; temporary files go to {temp}: set TMPDIR to a folder on a larger disk"
        return cls(errno.ENOSPC, escape_controls(message), path)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says a file system is full: an ``ENOSPC`` OS error, or a library's error
    text quoting it (libvips reports ``system error: No space left on device``)."""
    return getattr(error, "errno", None) == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(error)


def _mount_point(path: str) -> str:
    """The mount point of the file system holding ``path`` (its nearest existing ancestor's:
    a temporary folder may be gone by the time its error is reported)."""
    found = path
    while not os.path.ismount(found):
        parent = os.path.dirname(found)
        if parent == found:
            break
        found = parent
    return found


def one_line_error(error: BaseException) -> str:
    """The one line that says what went wrong: see the module's docstring for the rules.

    Returns:
        At most :data:`ERROR_CHARS` characters, no control characters; the exception's type
        name when it has no message.
    """
    while getattr(error, "cause", None) is not None and error.cause is not error:
        error = error.cause  # Ray's wrapper of a worker's exception
    message = str(error)
    if _defined_in(error, *_OUR_PACKAGES):
        # Written as one line; a line break in it comes from a name (a key), and stays, escaped.
        return escape_controls(message.strip() or type(error).__name__)[:ERROR_CHARS]
    lines = message.splitlines()
    text = _raised_line(lines)
    if text is None:
        detail = [line.strip() for line in lines if line.strip()]
        if _defined_in(error, "pyvips"):  # libvips' log lines name the loader or saver themselves
            text = "; ".join(dict.fromkeys([line for line in detail if not line.startswith("unable to ")] or detail))
        else:
            text = f"{type(error).__name__}: {detail[0] if detail else ''}".rstrip(": ")
    return escape_controls(text)[:ERROR_CHARS]


def _defined_in(error: BaseException, *packages: str) -> bool:
    """Whether ``error``'s class is defined in one of ``packages``."""
    return type(error).__module__.split(".")[0] in packages


def _raised_line(lines: list[str]) -> str | None:
    """The ``Type: message`` line after the last frame of a traceback quoted in a message.

    Ray quotes the remote traceback in some errors' text (an actor whose ``__init__``
    raised, for one) without keeping the exception itself; the line that names what went
    wrong is the one after the last ``File ...`` frame and its indented source lines.
    """
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    if not frames:
        return None
    for line in lines[frames[-1] + 1 :]:
        if line.strip() and not line.startswith(" "):
            name, sep, message = line.partition(": ")
            return f"{name.rsplit('.', 1)[-1]}{sep}{message.strip()}"
    return None
