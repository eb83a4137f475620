"""The jobs' log (jobs/logs.py): one line per failure at the default verbosity, no libvips
warnings repeating it, control characters escaped; ``--verbose`` shows tracebacks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from jobs.logs import OneLineFormatter


def test_the_formatter_escapes_control_characters_of_the_message_only():
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("ultrastyle", logging.WARNING, __file__, 1, "failed %s: %s",
                               ("in/a\n12:00:00 ok forged.jpg", "esc\x1b[2K"), None)
    assert formatter.format(record) == "WARNING failed in/a\\x0a12:00:00 ok forged.jpg: esc\\x1b[2K"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "Traceback" in formatter.format(record).splitlines()[1]  # a traceback keeps its lines


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "jobs.stylize", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)


def test_a_truncated_image_is_one_line_without_libvips_warnings_unless_verbose(weights_dir, content_dir, style_dir,
                                                                               tmp_path):
    data = (content_dir / "astronaut_512.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    args = ["half.jpg", "--style", str(style_dir / "strokes_512.jpg"), "--output", "o.png", "--weights",
            str(weights_dir)]
    quiet = _run(*args, tmp_path=tmp_path)
    assert quiet.returncode == 1
    lines = quiet.stderr.splitlines()
    assert lines[-1] == "ultrastyle stylize: error: half.jpg is corrupt or truncated: VipsJpeg: premature end of " \
                        "JPEG image", quiet.stderr
    assert [line for line in lines if "VIPS" in line or "Traceback" in line] == []
    loud = _run(*args, "--verbose", tmp_path=tmp_path)
    assert loud.returncode == 1 and loud.stderr.splitlines()[-1] == lines[-1]
    assert "VIPS: " in loud.stderr and "Traceback (most recent call last)" in loud.stderr


def test_a_key_holding_a_line_break_cannot_forge_a_line(weights_dir, style_dir, tmp_path):
    name = "evil\n12:00:00 wrote out.png (fake).jpg"
    (tmp_path / name).write_bytes(b"not an image")
    done = _run(name, "--style", str(style_dir / "strokes_512.jpg"), "--output", "o.png", "--weights",
                str(weights_dir), tmp_path=tmp_path)
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert last.startswith("ultrastyle stylize: error: evil\\x0a12:00:00 wrote out.png (fake).jpg is not an"), last
    assert not any(line.startswith("12:00:00") for line in done.stderr.splitlines())
