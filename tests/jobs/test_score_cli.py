"""``ultrastyle score``: numbers for a real picture, and one line for each kind of bad input."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from jobs.cli import main as cli
from jobs.score import main


@pytest.fixture(scope="module")
def picture(content_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("score") / "picture.png"
    Image.open(content_dir / "astronaut_512.jpg").convert("RGB").resize((160, 120)).save(path)
    return path


def test_score_prints_the_distances(picture, style_dir, weights_dir, capsys, one_torch_thread):
    style = str(style_dir / "strokes_512.jpg")
    assert cli(["score", str(picture), "--style", style, "--content", str(picture), "--view", "64",
                "--style-size", "64", "--weights", str(weights_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("style distance (Gram, lower reads more as the style): ")
    assert "seen whole at 64 px" in out[0] and "on 5 1:1 crop(s) of 64x64" in out[0]
    assert out[1].startswith("detail (mean gradient of the 1:1 crops): ")
    assert out[2] == f"content distance to {picture}: 0.000 seen whole, 0.000 on the 1:1 crops"
    assert main([str(picture), "--style", style, "--view", "64", "--style-size", "64", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["view"] == 64 and len(found["crops"]) == 5 and found["content_view"] is None
    assert 0 < found["style_view"] < 10 and found["detail"] > 0


@pytest.mark.parametrize(
    ("args", "rc", "message"),
    [
        (["{missing}", "--style", "{style}"], 1, "no such file: {missing}"),
        (["{text}", "--style", "{style}"], 1, "is not an image libvips can read"),
        (["{picture}", "--style", "{missing}"], 1, "no such file: {missing}"),
        (["{picture}", "--style", "{style}", "--content", "{text}"], 1, "is not an image libvips can read"),
        (["{picture}", "--style", "{style}", "--view", "16"], 2, "--view must be at least 32 px, got 16"),
        (["{picture}", "--style", "{style}", "--style-size", "0"], 2, "--style-size must be at least 32 px, got 0"),
        (["{picture}", "--style", "{style}", "--view", "big"], 2, "argument --view: invalid int value"),
        (["{picture}", "--style", "{style}", "--device", "gpu"], 2, "--device must be auto, cpu, cuda or cuda:N"),
        (["{picture}"], 2, "the following arguments are required: --style"),
    ],
)
def test_bad_input_is_one_line(picture, style_dir, tmp_path, capsys, args, rc, message):
    names = {"picture": picture, "style": style_dir / "strokes_512.jpg", "missing": tmp_path / "absent.jpg",
             "text": tmp_path / "notes.jpg"}
    names["text"].write_text("not pixels\n")
    assert _exit_status([a.format(**names) for a in args]) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ultrastyle score: error: ")
    assert message.format(**names) in err[0], err[0]


def _exit_status(argv: list[str]) -> int:
    """``main``'s return value, or the status argparse exits with."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)
