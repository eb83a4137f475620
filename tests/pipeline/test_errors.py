"""One line per failure (pipeline/errors.py): unwrapping, quoted tracebacks, libvips' log,
escaped control characters, and a full disk named where it happened."""

from __future__ import annotations

import errno
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.errors import (
    ERROR_CHARS,
    DiskFullError,
    MissingLocationError,
    escape_controls,
    is_disk_full,
    one_line_error,
)
from pipeline.imaging.imageio import ImageError


class _Wrapped(Exception):
    """What Ray raises for a worker's exception: its own text, the original in ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("ray::task()\n  File ...\ntraceback")
        self.cause = cause


def test_a_workers_error_is_unwrapped_and_other_libraries_keep_their_type_name():
    assert one_line_error(_Wrapped(ImageError("s3://b/x.jpg is not an image"))) == "s3://b/x.jpg is not an image"
    assert one_line_error(_Wrapped(KeyError("k"))) == "KeyError: 'k'"
    assert one_line_error(ConnectionError("reset\n  by peer, more detail")) == "ConnectionError: reset"
    assert one_line_error(RuntimeError()) == "RuntimeError"
    missing = MissingLocationError("input s3://b/in does not exist (no such bucket)")
    assert isinstance(missing, FileNotFoundError) and one_line_error(missing) == str(missing)
    assert len(one_line_error(ValueError("x" * 5000))) == ERROR_CHARS


def test_the_raised_line_of_a_quoted_traceback_is_the_line():
    quoted = (
        "The actor died because of an error raised in its creation task, ray::A.__init__() (pid=1)\n"
        "Traceback (most recent call last):\n"
        '  File "/x/actors.py", line 3, in __init__\n'
        "    load()\n"
        "    ^^^^^^\n"
        "models.checkpoint.WeightsError: no weights under s3://b/w\n"
        "second line of the message\n"
    )
    assert one_line_error(RuntimeError(quoted)) == "WeightsError: no weights under s3://b/w"


def test_libvips_error_log_is_one_line_without_its_wrappers(tmp_path, content_dir):
    data = (content_dir / "astronaut_512.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    import pyvips

    with pytest.raises(pyvips.Error) as raised:
        pyvips.Image.new_from_file(str(tmp_path / "half.jpg"), fail_on="error").avg()
    assert "\n" in str(raised.value) and "unable to" in str(raised.value)
    line = one_line_error(raised.value)
    assert "\n" not in line and "unable to" not in line and "premature end" in line.lower()


HOSTILE_KEYS = [
    "in/evil\n12:00:00 [9/9] ok forged.jpg",  # a forged log line
    "in/esc\x1b[2K\rclear.jpg",  # erase the line on a terminal, then overwrite it
    "in/bidi\u202egpj.exe",  # shown right to left
    "in/nul\x00\x85\u2028.jpg",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_control_characters_in_a_key_are_escaped_and_kept(key):
    for error in (ImageError(f"no such file: {key}"), _Wrapped(ImageError(f"{key} is not an image")),
                  FileNotFoundError(f"{key}")):
        line = one_line_error(error)
        assert line.isprintable(), line
        assert escape_controls(key.splitlines()[0]) in line  # nothing before the first line break is lost
    assert one_line_error(ImageError(f"no such file: {key}")) == f"no such file: {escape_controls(key)}"


def test_escape_controls_writes_visible_escapes():
    assert escape_controls("a\nb\tc\x1b\u2028d") == "a\\x0ab\\x09c\\x1b\\u2028d"
    assert escape_controls("plain ü 写真.jpg") == "plain ü 写真.jpg"


def test_disk_full_error_names_the_file_the_file_system_and_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    error = DiskFullError.at(str(tmp_path / "gone" / "input.u1"))  # its folder may be gone already
    text = one_line_error(_Wrapped(error))
    assert text.startswith("no space left on device: the file system at /")
    assert str(tmp_path / "gone" / "input.u1") in text and "set TMPDIR" in text
    assert error.errno == errno.ENOSPC and is_disk_full(error)
    copy = pickle.loads(pickle.dumps(error))  # Ray sends it from the worker that hit it
    assert type(copy) is DiskFullError and str(copy) == str(error)
    outside = DiskFullError.at("/nonexistent-root-folder/out.png")
    assert "TMPDIR" not in str(outside) and "the file system at / " in str(outside)


def test_libvips_and_plain_writes_that_find_no_space_are_recognised():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(RuntimeError("wbuffer_write: write failed\nsystem error: No space left on device"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


_FILL_CANVAS = """
import sys
from pipeline.errors import DiskFullError
from pipeline.imaging.canvas import open_canvas
from pipeline.imaging.tiles import Rect
import numpy as np
canvas = open_canvas(3, 2048, 2048, workdir=sys.argv[1], name="input")
try:
    for y in range(0, 2048, 64):
        canvas.write(Rect(y, 0, y + 64, 2048), np.ones((3, 64, 2048), np.float32))
except DiskFullError as e:
    print(e)
finally:
    canvas.close()
"""


def test_a_disk_canvas_on_a_full_disk_names_it(small_tmpfs, tmp_path):
    """A real full file system (a 4 MiB tmpfs) under a 48 MiB float canvas."""
    folder = tmp_path / "small"
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([*small_tmpfs(folder, "4m"), sys.executable, "-c", _FILL_CANVAS, str(folder)],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"no space left on device: the file system at {folder} is full"), done.stdout
    assert "input-" in done.stdout and (folder.parent / "small.left").read_text() == ""
