"""The Parquet manifest: durable parts, compaction, the current state read as one dataset, the
earlier layout still read, and a writer that holds rows through a storage fault (no Ray)."""

from __future__ import annotations

import datetime as dt
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.batch import manifest
from pipeline.batch.manifest import (
    MANIFEST_DIR,
    SCHEMA,
    ManifestRow,
    ManifestWriter,
    Summary,
    list_manifest,
    new_run_id,
    read_manifest,
)
from pipeline.batch.transient import Backoff

NO_WAIT = Backoff(tries=1, first=0.01, longest=0.01)


def _row(name: str, status: str = "ok", **kwargs) -> ManifestRow:
    return ManifestRow(f"in/{name}.jpg", "s.jpg", f"out/{name}__s.jpg", status, **kwargs)


def _files(out) -> list[str]:
    return sorted(str(p.relative_to(out / MANIFEST_DIR)) for p in (out / MANIFEST_DIR).rglob("*.parquet"))


def test_each_write_is_one_durable_part_and_close_leaves_one_file(tmp_path):
    out = tmp_path / "out"
    writer = ManifestWriter(str(out), run_id="r1")
    assert writer.write([_row("a", width=40, height=30, settings='{"alpha": 1.0}', fingerprint="f1")])
    assert writer.write([_row("b", "failed", error="in/b.jpg is not an image"), _row("c")])
    assert writer.write([]) and writer.rows_written == 3
    assert _files(out) == ["runs/r1/part-000001.parquet", "runs/r1/part-000002.parquet"]
    assert pq.read_table(out / MANIFEST_DIR / "runs/r1/part-000001.parquet").schema.equals(SCHEMA)
    assert writer.close()
    assert _files(out) == ["runs/r1/chunk-000003.parquet"]

    table = read_manifest(str(out))
    assert table.schema.equals(SCHEMA)
    assert table["content_uri"].to_pylist() == ["in/a.jpg", "in/b.jpg", "in/c.jpg"]
    assert set(table["run_id"].to_pylist()) == {"r1"} and table["finished_at"].null_count == 0
    assert table.to_pylist()[0]["settings"] == '{"alpha": 1.0}' and table.to_pylist()[1]["error"].endswith("image")


def test_parts_are_compacted_as_the_run_goes_and_compacted_files_merged(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "COMPACT_PARTS", 3)
    monkeypatch.setattr(manifest, "CHUNK_FANIN", 2)
    out = tmp_path / "out"
    writer = ManifestWriter(str(out), run_id="r1")
    for i in range(7):
        writer.write([_row(f"p{i}")])
    # 3 parts -> a chunk; 3 more -> a second chunk, and two chunks merge into one; one part left.
    assert [name.split("-")[0] for name in _files(out)] == ["runs/r1/chunk", "runs/r1/part"]
    assert writer.close()
    assert len(_files(out)) == 1
    assert read_manifest(str(out))["content_uri"].to_pylist() == [f"in/p{i}.jpg" for i in range(7)]


def test_the_latest_row_of_a_pair_wins_and_a_file_read_twice_changes_nothing(tmp_path):
    out = tmp_path / "out"
    early = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    first = ManifestWriter(str(out), run_id="r1")
    first.write([_row("a", "failed", error="x", finished_at=early), _row("b", finished_at=early)])
    first.close()
    second = ManifestWriter(str(out), run_id="r2")
    second.write([_row("a", width=7)])
    second.close()
    [copy] = (out / MANIFEST_DIR / "runs" / "r2").iterdir()
    shutil.copy(copy, copy.with_name("chunk-copy.parquet"))  # as a crash between compacting and removing leaves
    rows = {r["content_uri"]: r for r in read_manifest(str(out)).to_pylist()}
    assert len(rows) == 2
    assert (rows["in/a.jpg"]["status"], rows["in/a.jpg"]["width"], rows["in/a.jpg"]["run_id"]) == ("ok", 7, "r2")
    assert rows["in/b.jpg"]["run_id"] == "r1"


def test_a_manifest_of_the_earlier_layout_still_reads(tmp_path):
    """Earlier versions wrote ``_manifest/part-<run>-<n>.parquet`` per flush and a ``skipped`` row per skip."""
    folder = tmp_path / "out" / MANIFEST_DIR
    folder.mkdir(parents=True)
    when = [dt.datetime(2026, 1, d, tzinfo=dt.timezone.utc) for d in (1, 2)]
    for n, (run, status, day) in enumerate([("20260101T000000Z-aaaaaa", "ok", 0), ("20260102T000000Z-bbbbbb",
                                                                                   "skipped", 1)]):
        rows = [{**{f.name: None for f in SCHEMA}, "run_id": run, "content_uri": "in/a.jpg", "style_uri": "s.jpg",
                 "output_uri": "out/a__s.jpg", "status": status, "error": "", "width": 4, "height": 3,
                 "finished_at": when[day], "fingerprint": "f", "settings": "{}", "reason": ""}]
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), folder / f"part-{run}-{n:06d}.parquet")
    files = list_manifest(str(tmp_path / "out"))
    assert files.state == () and len(files.others) == 2
    [row] = read_manifest(str(tmp_path / "out")).to_pylist()
    assert (row["status"], row["run_id"]) == ("skipped", "20260102T000000Z-bbbbbb")


def test_reading_a_manifest_that_is_not_there_gives_an_empty_table(tmp_path):
    assert read_manifest(str(tmp_path)).num_rows == 0
    assert list_manifest(str(tmp_path / "missing")).paths == ()


def test_the_writer_holds_rows_while_storage_fails_and_writes_them_when_it_is_back(tmp_path, caplog):
    out = tmp_path / "out"
    (out / MANIFEST_DIR).mkdir(parents=True)
    (out / MANIFEST_DIR / "runs").write_text("a file where the runs' folder goes: every write fails")
    writer = ManifestWriter(str(out), run_id="r1", backoff=NO_WAIT)
    assert not writer.write([_row("a")])
    assert writer.pending == 1 and writer.error
    assert not writer.write([_row("b")])  # within the wait before the next try: held, not tried
    assert writer.pending == 2
    assert len([r for r in caplog.records if "held" in r.getMessage()]) == 1  # one warning per outage
    (out / MANIFEST_DIR / "runs").unlink()
    assert writer.close(patience=5)
    assert writer.pending == 0 and writer.error == ""
    assert read_manifest(str(out))["content_uri"].to_pylist() == ["in/a.jpg", "in/b.jpg"]


def test_rows_that_cannot_be_written_at_the_end_are_saved_locally(tmp_path):
    out = tmp_path / "out"
    (out / MANIFEST_DIR).mkdir(parents=True)
    (out / MANIFEST_DIR / "runs").write_text("blocks every write")
    writer = ManifestWriter(str(out), run_id=new_run_id(), backoff=NO_WAIT)
    writer.write([_row("a"), _row("b", "failed", error="x")])
    assert not writer.close(patience=0.2)
    path = writer.save_local(str(tmp_path))
    saved = pq.read_table(path)
    assert saved["content_uri"].to_pylist() == ["in/a.jpg", "in/b.jpg"] and set(saved["run_id"].to_pylist()) == {
        writer.run_id}


def test_rows_refuse_unknown_statuses():
    with pytest.raises(ValueError, match="status"):
        ManifestRow("a", "b", "c", "done")


def test_summary_line_counts_pairs_and_megapixels_of_this_run():
    summary = Summary(ok=1, skipped=5, failed=1, megapixels=2.0, seconds=4.0)
    assert summary.pairs == 7
    assert summary.line() == "7 pairs: 1 ok, 5 skipped, 1 failed; 2.00 MP stylized in 4.0 s (0.500 MP/s)"
