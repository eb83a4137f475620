"""Pair planning, output naming, the Parquet manifest and resume bookkeeping (no Ray)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline.batch.manifest import (
    MANIFEST_DIR,
    SCHEMA,
    ManifestRow,
    ManifestWriter,
    Pair,
    existing_files,
    join_uri,
    list_inputs,
    new_run_id,
    plan_pairs,
    read_manifest,
    resume,
    summarize,
    with_settings,
)
from pipeline.imaging.imageio import ImageError


def test_outputs_are_named_content_stem_style_stem_with_the_input_format():
    pairs = plan_pairs(
        ["s3://b/in/a.JPG", "s3://b/in/sub/c.tif", "s3://b/in/notes.txt"],
        ["s3://s/brush.jpg", "/styles/water.png"],
        input_uri="s3://b/in/",
        output_uri="s3://b/out",
    )
    assert [p.output_uri for p in pairs] == [
        "s3://b/out/a__brush.jpg",
        "s3://b/out/a__water.jpg",
        "s3://b/out/sub/c__brush.tif",
        "s3://b/out/sub/c__water.tif",
        "s3://b/out/notes__brush.png",  # not an image format: PNG, and reading it will fail the row
        "s3://b/out/notes__water.png",
    ]
    assert all(p.error == "" for p in pairs)


def test_format_flag_overrides_the_extension_and_is_checked():
    [pair] = plan_pairs(["in/a.jpg"], ["s.png"], input_uri="in", output_uri="out/", fmt="PNG")
    assert pair.output_uri == "out/a__s.png"
    with pytest.raises(ImageError, match="bmp"):
        plan_pairs(["in/a.jpg"], ["s.png"], input_uri="in", output_uri="out", fmt="bmp")


@pytest.mark.parametrize("key", ["../evil.png", "a/../../evil.png", "./x.png", "a//b.png"])
def test_keys_that_would_escape_the_output_prefix_are_refused(key):
    [pair] = plan_pairs([f"s3://b/in/{key}"], ["s.jpg"], input_uri="s3://b/in", output_uri="s3://b/out")
    assert "outside the output prefix" in pair.error


def test_two_pairs_writing_one_output_refuse_the_second():
    pairs = plan_pairs(["in/a.jpg"], ["s3://x/brush.jpg", "s3://y/brush.jpg"], input_uri="in", output_uri="out")
    assert pairs[0].error == ""
    assert "would overwrite the output of in/a.jpg x s3://x/brush.jpg" in pairs[1].error


def test_list_inputs_skips_hidden_files_manifests_and_a_nested_output(tmp_path):
    for rel in ["a.jpg", "sub/b.png", ".tmp-partial.jpg", "_manifest/part.parquet", "out/a__s.jpg", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = list_inputs(str(tmp_path), exclude_uri=str(tmp_path / "out"))
    assert found == [join_uri(str(tmp_path), r) for r in ["a.jpg", "notes.txt", "sub/b.png"]]


def test_list_inputs_of_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no files"):
        list_inputs(str(tmp_path / "missing"))


def test_manifest_round_trip_and_resume(tmp_path):
    out = str(tmp_path / "out")
    writer = ManifestWriter(out, run_id=new_run_id())
    rows = [
        ManifestRow("in/a.jpg", "s.jpg", f"{out}/a__s.jpg", "ok", width=40, height=30, tiles=1, worker="model-0"),
        ManifestRow("in/b.jpg", "s.jpg", f"{out}/b__s.jpg", "failed", error="in/b.jpg is not an image"),
        ManifestRow("in/c.jpg", "s.jpg", f"{out}/c__s.jpg", "ok", width=10, height=10),
    ]
    first = writer.write(rows[:2])
    writer.write(rows[2:])
    assert writer.write([]) is None
    parts = sorted((tmp_path / "out" / MANIFEST_DIR).iterdir())
    assert [p.name for p in parts] == [f"part-{writer.run_id}-000000.parquet", f"part-{writer.run_id}-000001.parquet"]
    assert first.endswith(parts[0].name)
    assert pq.read_schema(parts[0]).equals(SCHEMA)

    table = read_manifest(out)
    assert table.num_rows == 3 and set(table["run_id"].to_pylist()) == {writer.run_id}
    assert table["finished_at"].null_count == 0

    (tmp_path / "out" / "a__s.jpg").write_bytes(b"x")  # c's output is gone: it must run again
    pairs = [Pair(r.content_uri, r.style_uri, r.output_uri) for r in rows]
    todo, decided = resume(pairs, table, existing_files(out))
    assert decided == []
    assert [(p.content_uri, p.reason) for p in todo] == [
        ("in/a.jpg", "no settings recorded by the last run"),  # a row from before fingerprints
        ("in/b.jpg", "last run failed"),
        ("in/c.jpg", "output missing"),
    ]


SETTINGS = {"model_id": "cd16x", "weights": {"1SE": "aa" * 32, "1SD": "bb" * 32}, "alpha": 1.0, "style_size": None,
            "mode": "auto", "format": "PNG", "quality": None, "style": "sha256:" + "cc" * 32, "code": "0.1.0"}


def _run(out: str, pairs: list[Pair], statuses: dict[str, str]) -> None:
    """Write one run's rows the way the job does: the writer stamps each pair's settings and reason."""
    writer = ManifestWriter(out, run_id=new_run_id(), pairs=pairs)
    writer.write([ManifestRow(*p.key, statuses.get(p.content_uri, "ok"), width=4, height=3) for p in pairs])


def test_resume_skips_only_a_finished_pair_with_the_same_settings_and_says_why_it_redoes_the_rest(tmp_path):
    out = str(tmp_path / "out")
    plan = [with_settings(Pair(f"in/{n}.png", "s.jpg", f"{out}/{n}__s.png"), SETTINGS) for n in "abcd"]
    todo, decided = resume(plan, read_manifest(out), existing_files(out))
    assert decided == [] and {p.reason for p in todo} == {"new"}
    _run(out, todo, {"in/c.png": "failed"})
    for name in "abd":
        (tmp_path / "out" / f"{name}__s.png").write_bytes(b"x")

    table = read_manifest(out)
    assert set(table["reason"].to_pylist()) == {"new"}
    assert set(table["fingerprint"].to_pylist()) == {plan[0].fingerprint}
    assert json.loads(table["settings"][0].as_py()) == SETTINGS

    (tmp_path / "out" / "d__s.png").unlink()
    todo, decided = resume(plan, table, existing_files(out))
    assert [(r.content_uri, r.status) for r in decided] == [("in/a.png", "skipped"), ("in/b.png", "skipped")]
    assert decided[0].fingerprint == plan[0].fingerprint and decided[0].width == 4 and decided[0].reason == ""
    assert [(p.content_uri, p.reason) for p in todo] == [("in/c.png", "last run failed"),
                                                         ("in/d.png", "output missing")]

    # A skipped row counts as finished on the next run; new settings redo every pair and say which changed.
    ManifestWriter(out, run_id=new_run_id()).write(decided)
    table = read_manifest(out)
    assert [p.content_uri for p in resume(plan, table, existing_files(out))[0]] == ["in/c.png", "in/d.png"]
    changed = dict(SETTINGS, alpha=0.5, weights={"1SE": "aa" * 32, "1SD": "dd" * 32})
    replan = [with_settings(Pair(*p.key), changed) for p in plan]
    todo, decided = resume(replan, table, existing_files(out))
    assert decided == []
    assert todo[0].reason == "settings changed: alpha 1.0 -> 0.5; weights 1SD bbbbbbbbbbbb -> dddddddddddd"
    todo, decided = resume(plan, table, existing_files(out), overwrite=True)
    assert decided == [] and {p.reason for p in todo} == {"overwrite"}


def test_resume_fails_a_pair_with_a_planning_error_without_running_it(tmp_path):
    pair = with_settings(Pair("in/a.png", "s.jpg", "out/a__s.png", error="style image failed: no such file: s.jpg"),
                         SETTINGS)
    todo, [row] = resume([pair], read_manifest(str(tmp_path)), set(), overwrite=True)
    assert todo == [] and (row.status, row.error, row.fingerprint) == ("failed", pair.error, pair.fingerprint)


def test_reading_a_manifest_that_is_not_there_gives_an_empty_table(tmp_path):
    assert read_manifest(str(tmp_path)).num_rows == 0
    assert existing_files(str(tmp_path / "nothing")) == set()


def test_rows_refuse_unknown_statuses():
    with pytest.raises(ValueError, match="status"):
        ManifestRow("a", "b", "c", "done")


def test_summary_counts_statuses_and_megapixels_of_this_run():
    rows = [
        ManifestRow("a", "s", "o1", "ok", width=2000, height=1000),
        ManifestRow("b", "s", "o2", "skipped", width=2000, height=1000),
        ManifestRow("c", "s", "o3", "failed", error="x"),
    ]
    summary = summarize(rows, seconds=4.0)
    assert (summary.ok, summary.skipped, summary.failed, summary.pairs) == (1, 1, 1, 3)
    assert summary.megapixels == pytest.approx(2.0)
    assert summary.line() == "3 pairs: 1 ok, 1 skipped, 1 failed; 2.00 MP stylized in 4.0 s (0.500 MP/s)"
