"""``ultrastyle stylize`` on single files: end to end, and one-line errors for bad input."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.stylize import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message"
    return err[-1]


def test_stylize_a_real_photo_end_to_end(weights_dir, content_dir, style_dir, tmp_path, caplog):
    out = tmp_path / "out.png"
    rc = main([str(content_dir / "rocket_420.jpg"), "--style", str(style_dir / "strokes_512.jpg"),
               "--output", str(out), "--weights", str(weights_dir), "--alpha", "0.8"])
    assert rc == 0
    result = Image.open(out)
    assert result.size == (420, 420) and result.mode == "RGB"
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split()[1] for m in messages if m.startswith("level")] == ["5", "4", "3", "2", "1"]
    assert any("MP/s" in m for m in messages)
    # The result is a stylized image, not a copy of the content.
    content = np.asarray(Image.open(content_dir / "rocket_420.jpg").convert("RGB"), np.float64)
    assert np.abs(np.asarray(result, np.float64) - content).mean() > 10


def test_console_script_runs(weights_dir, content_dir, style_dir, tmp_path):
    exe = shutil.which("ultrastyle")
    if exe is None:
        pytest.skip("the ultrastyle console script is not installed (pip install -e .)")
    out = tmp_path / "o.jpg"
    # The script imports the installed package: point it at this checkout (an editable install
    # may name another one).
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [exe, "stylize", str(content_dir / "astronaut_512.jpg"), "--style", str(style_dir / "strokes_570.jpg"),
         "--output", str(out), "--weights", str(weights_dir), "--mode", "exact", "--tile", "256"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (512, 512)
    assert "exact mode, 4 tiles" in proc.stderr


@pytest.fixture
def bad_inputs(tmp_path, content_dir):
    data = (content_dir / "astronaut_512.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "notes.jpg").write_text("this is a text file, not a photo\n")
    return tmp_path


@pytest.mark.parametrize(
    ("content", "style", "expected"),
    [
        ("truncated.jpg", "good", "corrupt or truncated"),
        ("notes.jpg", "good", "not an image"),
        ("good", "missing.jpg", "no such file"),
        ("missing.png", "good", "no such file"),
    ],
)
def test_bad_inputs_exit_nonzero_with_one_line(bad_inputs, weights_dir, content_dir, style_dir, capsys,
                                               content, style, expected):
    content_uri = str(content_dir / "astronaut_512.jpg") if content == "good" else str(bad_inputs / content)
    style_uri = str(style_dir / "strokes_512.jpg") if style == "good" else str(bad_inputs / style)
    rc = main([content_uri, "--style", style_uri, "--output", str(bad_inputs / "o.png"),
               "--weights", str(weights_dir)])
    assert rc == 1
    line = _error_line(capsys)
    assert line.startswith("ultrastyle stylize: error:") and expected in line
    assert not (bad_inputs / "o.png").exists()


def test_wrong_weights_sha_exits_nonzero(weights_dir, content_dir, style_dir, tmp_path, capsys):
    copy = tmp_path / "weights"
    shutil.copytree(weights_dir, copy)
    blob = bytearray((copy / "3SD.safetensors").read_bytes())
    blob[-10] ^= 0xFF
    (copy / "3SD.safetensors").write_bytes(bytes(blob))
    rc = main([str(content_dir / "rocket_420.jpg"), "--style", str(style_dir / "strokes_512.jpg"),
               "--output", str(tmp_path / "o.png"), "--weights", str(copy)])
    assert rc == 1
    line = _error_line(capsys)
    assert "sha256 mismatch" in line and "3SD.safetensors" in line and "a69bea9a3961" in line


def test_too_many_pixels_is_refused(weights_dir, content_dir, style_dir, tmp_path, capsys):
    rc = main([str(content_dir / "rocket_420.jpg"), "--style", str(style_dir / "strokes_512.jpg"),
               "--output", str(tmp_path / "o.png"), "--weights", str(weights_dir), "--max-pixels", "100000"])
    assert rc == 1
    assert "over --max-pixels 100,000" in _error_line(capsys)


def test_help_lists_the_flags():
    proc = subprocess.run([sys.executable, "-m", "jobs.stylize", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--style", "--weights", "--alpha", "--style-size", "--mode", "--tile", "--max-pixels"):
        assert flag in proc.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--alpha", "1.5"], "--alpha must be in [0, 1]"),
        (["--tile", "100"], "--tile must be a positive multiple of 16"),
        (["--style-size", "0"], "--style-size must be at least 1"),
        (["--quality", "0"], "--quality must be in [1, 100]"),
    ],
)
def test_bad_flags_are_refused_before_loading_anything(content_dir, style_dir, tmp_path, capsys, flags, message):
    # No --weights: a check that ran after loading would fail on the download instead.
    rc = main([str(content_dir / "rocket_420.jpg"), "--style", str(style_dir / "strokes_512.jpg"),
               "--output", str(tmp_path / "o.png"), *flags])
    assert rc == 1
    assert message in _error_line(capsys)


def test_a_single_image_takes_one_style(content_dir, style_dir, tmp_path, capsys):
    style = str(style_dir / "strokes_512.jpg")
    rc = main([str(content_dir / "rocket_420.jpg"), "--style", style, "--style", style,
               "--output", str(tmp_path / "o.png")])
    assert rc == 1
    assert "a single image takes one --style" in _error_line(capsys)
