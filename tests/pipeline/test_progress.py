"""Progress lines: redrawn on a terminal, logged at an interval elsewhere, with the figures a person reads."""

from __future__ import annotations

import io
import logging
import re

from pipeline.progress import BatchProgress, ProgressLine, TileProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_redrawn_in_place(caplog):
    caplog.set_level(logging.INFO)
    term = _Terminal()
    line = ProgressLine(logging.getLogger("t"), seconds=60, stream=term)
    line.show("tiles 1/4", force=True)
    line.show("tiles 2/4 longer", force=True)
    line.show("tiles 3/4", force=True)
    line.close()
    assert term.getvalue() == "\rtiles 1/4\rtiles 2/4 longer\rtiles 3/4       \n"
    assert not caplog.records  # nothing logged twice


def test_elsewhere_lines_are_logged_at_the_interval(caplog):
    caplog.set_level(logging.INFO)
    stream = io.StringIO()
    line = ProgressLine(logging.getLogger("t"), seconds=3600, stream=stream)
    line.show("early")  # within the interval: not shown
    line.show("final", force=True)
    line.close()
    assert [r.getMessage() for r in caplog.records] == ["final"]
    assert stream.getvalue() == ""


def test_tile_progress_counts_and_estimates(caplog):
    caplog.set_level(logging.INFO)
    progress = TileProgress(40, ProgressLine(logging.getLogger("t"), seconds=3600, stream=io.StringIO()))
    progress(10)
    assert re.fullmatch(r"tiles 10/40 \(25 %\), \d+ s elapsed, ETA \d+ s", progress.text())
    progress(30)  # the last tile always shows
    assert caplog.records[-1].getMessage().startswith("tiles 40/40 (100 %)")
    assert TileProgress(5, ProgressLine(logging.getLogger("t"), seconds=1)).text().endswith("ETA ?")


def test_batch_line_gives_pairs_tiles_and_megapixels():
    progress = BatchProgress(total_pairs=5)
    progress.pair("skipped")
    progress.add_tiles(60)
    progress.tiles(12)
    progress.pair("ok", 8.29)
    progress.pair("failed")
    progress.in_flight = 2
    text = progress.text()
    assert text.startswith("pairs 3/5 (ok 1, skipped 1, failed 1), 2 in flight | tiles 12/60 | 8.29 MP, ")
    assert re.search(r"\d+\.\d{3} MP/s \| \d+ s$", text)


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
