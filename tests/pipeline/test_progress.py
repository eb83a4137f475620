"""Progress: a tqdm bar below the log on a terminal, plain log lines at an interval elsewhere.

The terminal tests run a real process on a pseudo-terminal (the ``pty`` module) and replay
what it wrote the way a terminal draws it, so "the bar and a log line do not share a line"
is checked on the screen a person would see.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from pipeline.progress import BatchProgress, TileProgress

ROOT = Path(__file__).resolve().parents[2]
# A terminal's control sequences: CSI (ESC [ params letter), or one control character.
_CONTROL = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|([\r\n\x08])")


def _screen(raw: bytes) -> list[str]:
    """The lines a terminal shows after receiving ``raw`` (no wrapping; cursor moves, line erases,
    carriage returns and backspaces applied)."""
    lines: list[list[str]] = [[]]
    row = col = 0

    def put(text: str) -> None:
        nonlocal col
        line = lines[row]
        line.extend(" " * (col + len(text) - len(line)))
        line[col : col + len(text)] = text
        col += len(text)

    text, pos = raw.decode("utf-8", "replace"), 0
    for found in _CONTROL.finditer(text):
        put(text[pos : found.start()])
        pos = found.end()
        params, letter, char = found.groups()
        n = int(params) if params and params.isdigit() else 1
        if char == "\r":
            col = 0
        elif char == "\n":
            row += 1
            lines.extend([] for _ in range(row + 1 - len(lines)))
        elif char == "\x08":
            col = max(col - 1, 0)
        elif letter == "A":
            row = max(row - n, 0)
        elif letter == "B":
            row += n
            lines.extend([] for _ in range(row + 1 - len(lines)))
        elif letter == "K":
            del lines[row][0 if params == "2" else col :]
    put(text[pos:])
    return ["".join(line).rstrip() for line in lines]


def _run_on_terminal(argv: list[str], *, timeout: float = 300) -> tuple[int, list[str]]:
    """Run ``argv`` with stdout and stderr on a 120-column pseudo-terminal; its exit status and screen."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    raw, deadline = bytearray(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                raw += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        status = proc.wait(timeout=60)
    return status, _screen(bytes(raw))


_PROGRESS_SCRIPT = """
import contextlib, logging, sys, time
from pipeline.progress import BatchProgress, TileProgress
logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
log = logging.getLogger("ultrastyle")
log.setLevel(logging.INFO)
log.info("before the work")
with contextlib.closing(TileProgress(4, log, seconds=60)) as tiles:
    for level in range(4):
        tiles(1)
        log.info("level %d done", level)
        time.sleep(0.25)
batch = BatchProgress(3, log, seconds=60)
batch.pair("skipped")
for i in range(2):
    batch.add_tiles(10)
    batch.tiles(10)
    batch.pair("ok", 1.5)
    log.info("[%d/3] ok out-%d.png", i + 2, i)
    batch.show()
    time.sleep(0.25)
batch.close()
log.info("after the work")
"""


def _only_bars_or_logs(screen: list[str], bar: str) -> None:
    """Each line holds a log line from its first column, or the bar alone (starting with ``bar``)."""
    for line in screen:
        if re.search(r"\d\d:\d\d:\d\d ", line):
            assert re.match(r"\d\d:\d\d:\d\d ", line), f"log line drawn after something else: {line!r}"
        if bar in line:
            assert line.startswith(bar), f"bar drawn into a log line: {line!r}"
            assert not re.search(r"\d\d:\d\d:\d\d ", line), f"log line drawn into the bar: {line!r}"


def test_on_a_terminal_the_bar_stays_below_the_log_lines():
    status, screen = _run_on_terminal([sys.executable, "-c", _PROGRESS_SCRIPT], timeout=120)
    assert status == 0, "\n".join(screen)
    text = [line for line in screen if line]
    logs = [line.split(" ", 1)[1] for line in text if re.match(r"\d\d:\d\d:\d\d ", line)]
    assert logs == ["before the work", "level 0 done", "level 1 done", "level 2 done", "level 3 done",
                    "[2/3] ok out-0.png", "[3/3] ok out-1.png", "after the work"]
    _only_bars_or_logs(screen, "tiles:")
    _only_bars_or_logs(screen, "pairs:")
    # Each bar is left once, in its final state, after the lines logged while it ran.
    [tiles] = [i for i, line in enumerate(text) if line.startswith("tiles:")]
    [pairs] = [i for i, line in enumerate(text) if line.startswith("pairs:")]
    assert text.index(next(line for line in text if line.endswith("level 3 done"))) < tiles
    assert re.search(r"100%\|.*\| 4/4 \[", text[tiles]), text[tiles]
    assert re.search(r"\| 3/3 \[.*ok 2, skipped 1, failed 0, 0 in flight \| tiles 20/20 \| 3\.00 MP, ", text[pairs])
    assert text[-1].endswith("after the work") and tiles < pairs < len(text) - 1


def test_a_single_image_on_a_terminal_draws_its_tiles_below_the_level_lines(content_dir, style_dir, weights_dir,
                                                                              tmp_path):
    from PIL import Image

    image = tmp_path / "face.png"
    Image.open(content_dir / "rocket_420.jpg").convert("RGB").resize((200, 150)).save(image)
    status, screen = _run_on_terminal(
        [sys.executable, "-m", "jobs.stylize", str(image), "--style", str(style_dir / "strokes_512.jpg"),
         "--output", str(tmp_path / "out.png"), "--weights", str(weights_dir), "--tile", "128",
         "--style-size", "128"])
    assert status == 0, "\n".join(screen)
    levels = [line for line in screen if re.search(r" level \d done in ", line)]
    assert [re.search(r"level (\d)", line)[1] for line in levels] == ["5", "4", "3", "2", "1"], screen
    _only_bars_or_logs(screen, "tiles:")
    bars = [line for line in screen if line.startswith("tiles:")]
    assert len(bars) == 1 and " 40/40 [" in bars[0], screen  # 2 x 2 tiles, 5 levels, 2 rounds
    assert (tmp_path / "out.png").exists()


def test_elsewhere_lines_are_logged_at_the_interval(caplog):
    caplog.set_level(logging.INFO)
    stream = io.StringIO()
    progress = TileProgress(3, logging.getLogger("t"), seconds=3600, stream=stream)
    progress(1)  # within the interval: not shown
    progress(1)
    progress(1)  # the last round always shows
    progress.close()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["tiles 3/3 (100 %)"]
    assert stream.getvalue() == ""  # no bar where there is no terminal


def test_tile_progress_counts_and_estimates(caplog):
    caplog.set_level(logging.INFO)
    progress = TileProgress(40, logging.getLogger("t"), seconds=3600, stream=io.StringIO())
    progress(10)
    assert re.fullmatch(r"tiles 10/40 \(25 %\), \d+ s elapsed, ETA \d+ s", progress.text())
    progress(30)
    assert caplog.records[-1].getMessage().startswith("tiles 40/40 (100 %)")
    assert TileProgress(5, logging.getLogger("t"), seconds=1).text().endswith("ETA ?")


def test_batch_line_gives_pairs_tiles_and_megapixels(caplog):
    caplog.set_level(logging.INFO)
    progress = BatchProgress(5, logging.getLogger("t"), seconds=3600, stream=io.StringIO())
    progress.pair("skipped")
    progress.add_tiles(60)
    progress.tiles(12)
    progress.pair("ok", 8.29)
    progress.pair("failed")
    progress.in_flight = 2
    text = progress.text()
    assert text.startswith("pairs 3/5 (ok 1, skipped 1, failed 1), 2 in flight | tiles 12/60 | 8.29 MP, ")
    assert re.search(r"\d+\.\d{3} MP/s \| \d+ s$", text)
    progress.close()
    assert not caplog.records  # nothing was due, so closing adds no line
    progress.show(force=True)
    assert not caplog.records  # closed: nothing shows any more


def test_a_single_image_logs_tiles_and_eta(content_dir, style_dir, weights_dir, tmp_path, caplog, one_torch_thread):
    from PIL import Image

    from jobs.stylize import main

    caplog.set_level(logging.INFO, logger="ultrastyle")
    image = tmp_path / "face.png"
    Image.open(content_dir / "rocket_420.jpg").convert("RGB").resize((200, 150)).save(image)
    argv = [str(image), "--style", str(style_dir / "strokes_512.jpg"), "--output", str(tmp_path / "out.png"),
            "--weights", str(weights_dir), "--tile", "128", "--style-size", "128", "--progress-seconds", "0.01"]
    assert main(argv) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tiles ")]
    assert lines[-1].startswith("tiles 40/40 (100 %)")  # 2 x 2 tiles, 5 levels, 2 rounds
    assert any(re.search(r"ETA \d+ s$", line) for line in lines)
