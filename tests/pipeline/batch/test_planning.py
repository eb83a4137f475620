"""Pairs planned from content keys in Arrow: output names, formats, keys refused at planning (no Ray)."""

from __future__ import annotations

import pytest

from pipeline.batch.planning import NAME_MAX, PAIR_SCHEMA, PairPlanner
from pipeline.imaging.imageio import ImageError


def _plan(keys: list[str], styles: list[str]) -> list[dict]:
    return PairPlanner(input_uri="s3://b/in/", output_uri="s3://b/out", style_keys=styles).plan(keys).to_pylist()


def test_outputs_are_named_content_stem_style_stem_with_the_input_format():
    rows = _plan(["a.JPG", "sub/c.tif", "notes.txt", "x.tar.gz", "d."], ["s3://s/brush.jpg", "/styles/water.png"])
    assert [(r["content_uri"], r["style_uri"], r["output_uri"]) for r in rows[:4]] == [
        ("s3://b/in/a.JPG", "s3://s/brush.jpg", "s3://b/out/a__brush.jpg"),
        ("s3://b/in/a.JPG", "/styles/water.png", "s3://b/out/a__water.jpg"),
        ("s3://b/in/sub/c.tif", "s3://s/brush.jpg", "s3://b/out/sub/c__brush.tif"),
        ("s3://b/in/sub/c.tif", "/styles/water.png", "s3://b/out/sub/c__water.tif"),
    ]
    # Not an image format we write: PNG (reading such an input fails its row); stems as PurePosixPath cuts them.
    assert [r["output_uri"] for r in rows[4:]] == [
        "s3://b/out/notes__brush.png", "s3://b/out/notes__water.png", "s3://b/out/x.tar__brush.png",
        "s3://b/out/x.tar__water.png", "s3://b/out/d.__brush.png", "s3://b/out/d.__water.png"]
    assert all(r["error"] is None for r in rows)
    assert [r["seq"] for r in rows] == list(range(10))


def test_pairs_are_numbered_from_the_batch_start_and_styles_joined_for_a_blend():
    planner = PairPlanner(input_uri="in", output_uri="out", style_keys=["s/a.jpg + t/b.png"])
    table = planner.plan(["x.jpg", "y.jpg"], 40)
    assert table.schema.equals(PAIR_SCHEMA)
    assert table["seq"].to_pylist() == [40, 41]
    assert table["output_uri"].to_pylist() == ["out/x__a+b.jpg", "out/y__a+b.jpg"]


def test_format_flag_overrides_the_extension_and_is_checked():
    [row] = PairPlanner(input_uri="in", output_uri="out/", style_keys=["s.png"], fmt="PNG").plan(["a.jpg"]).to_pylist()
    assert row["output_uri"] == "out/a__s.png"
    with pytest.raises(ImageError, match="bmp"):
        PairPlanner(input_uri="in", output_uri="out", style_keys=["s.png"], fmt="bmp")


@pytest.mark.parametrize("key", ["../evil.png", "a/../../evil.png", "./x.png", "a//b.png", "/lead.png", "trail/"])
def test_keys_with_an_empty_dot_or_dot_dot_segment_are_refused(key):
    [row] = _plan([key], ["s.jpg"])
    assert "has an empty, '.' or '..' path segment" in row["error"]
    assert repr(key) in row["error"]


def test_a_name_too_long_for_the_output_file_is_refused_at_planning():
    fits = "x" * (NAME_MAX - len("__s.jpg")) + ".jpg"
    too_long = "y" * (NAME_MAX - len("__s.jpg") + 1) + ".jpg"
    dzi = "z" * (NAME_MAX - len("__s.dzi") - 1) + ".jpg"  # the pyramid's "<name>_files" folder is 2 bytes longer
    rows = _plan([fits, too_long], ["s.jpg"])
    assert rows[0]["error"] is None
    assert f"output file name would be {NAME_MAX + 1} bytes, over the {NAME_MAX}" in rows[1]["error"]
    assert len(rows[1]["error"]) < 400 and "..." in rows[1]["error"]  # the key is cut short in the message
    [row] = PairPlanner(input_uri="in", output_uri="out", style_keys=["s.jpg"], fmt="dzi").plan([dzi]).to_pylist()
    assert f"would be {NAME_MAX + 1} bytes" in row["error"]
    wide = "é" * 126 + ".jpg"  # 252 bytes of UTF-8 in 126 characters: the limit is in bytes
    assert "bytes, over" in _plan([wide], ["s.jpg"])[0]["error"]


def test_control_characters_in_a_refused_key_are_escaped():
    [row] = _plan(["a//b\n\x1b[31mforged.png"], ["s.jpg"])
    assert "\n" not in row["error"] and "\x1b" not in row["error"] and "\\n" in row["error"]
