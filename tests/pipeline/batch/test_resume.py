"""Resume at bucket scale: which pairs run and why, refusals, partitions, folding the manifest (no Ray)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.batch.fingerprint import SettingsBook
from pipeline.batch.listing import iter_keys
from pipeline.batch.manifest import MANIFEST_DIR, ManifestRow, ManifestWriter, list_manifest, read_manifest
from pipeline.batch.planning import PairPlanner
from pipeline.batch.resume import FIRST_NAMED, RunPlan, plan_run

SETTINGS = {"model_id": "cd16x", "weights": {"1SE": "aa" * 32, "1SD": "bb" * 32}, "alpha": 1.0, "style_size": None,
            "mode": "auto", "format": "PNG", "quality": None, "style": "sha256:" + "cc" * 32, "code": "0.1.0"}
_work = itertools.count()


class Bucket:
    """A local input folder, an output prefix and runs of the job's bookkeeping over them."""

    def __init__(self, root: Path, names: list[str]) -> None:
        self.root, self.content, self.out = root, root / "in", root / "out"
        for name in names:
            (self.content / name).parent.mkdir(parents=True, exist_ok=True)
            (self.content / name).write_bytes(b"x")

    def plan(self, *, settings=SETTINGS, styles=("s.jpg",), refuse: str | None = None, overwrite=False,
             fold: str | None = None, partition_rows: int = 500_000) -> RunPlan:
        book = SettingsBook()
        group = book.add(settings)

        def stamp(table: pa.Table) -> pa.Table:
            n = table.num_rows
            refusal = [refuse if refuse and style == styles[-1] else None for style in table["style_uri"].to_pylist()]
            return table.append_column("group", pa.array([group] * n, pa.int32())).append_column(
                "refusal", pa.array(refusal, pa.string()))

        planner = PairPlanner(input_uri=str(self.content), output_uri=str(self.out), style_keys=list(styles))
        return plan_run(planner, iter_keys(str(self.content)), stamp=stamp, book=book,
                        existing=iter_keys(str(self.out)) if self.out.exists() else iter(()),
                        manifest=list_manifest(str(self.out)), workdir=str(self.root / f"work{next(_work)}"),
                        overwrite=overwrite, fold_id=fold, partition_rows=partition_rows)

    def run(self, plan: RunPlan, run_id: str, failed: tuple[str, ...] = ()) -> None:
        """What the job does with a plan: refused rows, then a row per pair run, outputs for the ok ones."""
        writer = ManifestWriter(str(self.out), run_id=run_id)
        for table in plan.refused_rows():
            writer.write(table)
        rows = []
        for pair in plan.todo():
            status = "failed" if Path(pair.content_uri).name in failed else "ok"
            rows.append(ManifestRow(*pair.key, status, error="x" if status == "failed" else "", width=4, height=3,
                                    settings=pair.settings, fingerprint=pair.fingerprint, reason=pair.reason))
            if status == "ok":
                Path(pair.output_uri).parent.mkdir(parents=True, exist_ok=True)
                Path(pair.output_uri).write_bytes(b"x")
        writer.write(rows)
        assert writer.close()


def _reasons(plan: RunPlan) -> list[tuple[str, str]]:
    return [(Path(p.content_uri).name, p.reason) for p in plan.todo()]


def test_a_pair_is_skipped_only_when_done_with_the_same_settings_and_its_output_there(tmp_path):
    bucket = Bucket(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    first = bucket.plan()
    assert (first.pairs, first.skipped, first.to_run) == (4, 0, 4) and set(dict(_reasons(first)).values()) == {"new"}
    bucket.run(first, "r1", failed=("c.png",))
    (bucket.out / "d__s.png").unlink()

    second = bucket.plan()
    assert second.skipped == 2
    assert _reasons(second) == [("c.png", "last run failed"), ("d.png", "output missing")]
    bucket.run(second, "r2")
    table = read_manifest(str(bucket.out))
    assert table.num_rows == 4 and set(table["status"].to_pylist()) == {"ok"}
    assert table["reason"].to_pylist() == ["new", "new", "last run failed", "output missing"]

    changed = dict(SETTINGS, alpha=0.5, weights={"1SE": "aa" * 32, "1SD": "dd" * 32})
    assert {r for _, r in _reasons(bucket.plan(settings=changed))} == {
        "settings changed: alpha 1.0 -> 0.5; weights 1SD bbbbbbbbbbbb -> dddddddddddd"}
    assert {r for _, r in _reasons(bucket.plan(overwrite=True))} == {"overwrite"}
    assert bucket.plan().to_run == 0


def test_a_row_without_a_fingerprint_is_redone(tmp_path):
    bucket = Bucket(tmp_path, ["a.png"])
    writer = ManifestWriter(str(bucket.out), run_id="old")
    writer.write([ManifestRow(f"{bucket.content}/a.png", "s.jpg", f"{bucket.out}/a__s.png", "ok")])
    writer.close()
    (bucket.out / "a__s.png").write_bytes(b"x")
    assert _reasons(bucket.plan()) == [("a.png", "no settings recorded by the last run")]


def test_refused_pairs_get_failed_rows_and_the_first_claim_of_an_output_wins(tmp_path):
    bucket = Bucket(tmp_path, ["a.jpg", "b.jpg"])
    plan = bucket.plan(styles=("x/brush.jpg", "y/brush.jpg", "z/other.jpg"), refuse="style image failed: gone")
    assert (plan.pairs, plan.to_run, plan.refused.count) == (6, 2, 4)
    [refused] = list(plan.refused_rows())
    errors = dict(zip(zip(refused["content_uri"].to_pylist(), refused["style_uri"].to_pylist(), strict=True),
                      refused["error"].to_pylist(), strict=True))
    a = f"{bucket.content}/a.jpg"
    claimed = f"output {bucket.out}/a__brush.jpg would overwrite the output of {a} x x/brush.jpg"
    assert errors[(a, "y/brush.jpg")] == claimed
    assert errors[(a, "z/other.jpg")] == "style image failed: gone"
    assert refused["status"].to_pylist() == ["failed"] * 4 and refused["fingerprint"].null_count == 0
    assert plan.report(lambda c, s: Path(c).name)[-1].startswith(f"4 refused: output {bucket.out}/a__brush.jpg")


def test_partitions_decide_as_one_and_stream_the_pairs_back_in_plan_order(tmp_path):
    names = [f"{d}/{i:03d}.png" for d in ("p", "q") for i in range(40)]
    bucket = Bucket(tmp_path, names)
    bucket.run(bucket.plan(), "r1", failed=("005.png",))
    for name in names[::7]:
        (bucket.out / name.replace(".png", "__s.png")).unlink(missing_ok=True)
    whole, split = bucket.plan(), bucket.plan(partition_rows=9)
    assert _reasons(split) == _reasons(whole)
    assert [p.content_uri for p in split.todo()] == sorted(p.content_uri for p in split.todo())
    assert (split.skipped, split.to_run) == (whole.skipped, whole.to_run) == (66, 14)  # 12 outputs removed, 2 failed


def test_folding_leaves_one_state_file_and_a_rerun_that_skips_adds_no_row(tmp_path):
    bucket = Bucket(tmp_path, [f"{i:02d}.png" for i in range(30)])
    bucket.run(bucket.plan(), "r1")
    before = read_manifest(str(bucket.out))
    dry = bucket.plan()  # no fold id: a dry run writes nothing
    assert dry.folded == 0 and len(list_manifest(str(bucket.out)).others) == 1

    rerun = bucket.plan(fold="r2")
    assert (rerun.folded, rerun.to_run, rerun.skipped) == (1, 0, 30)
    bucket.run(rerun, "r2")
    files = list_manifest(str(bucket.out))
    assert len(files.state) == 1 and files.others == ()
    assert read_manifest(str(bucket.out)).equals(before)
    assert [p.name for p in (bucket.out / MANIFEST_DIR).rglob("*.parquet")] == ["r2-0000.parquet"]


def test_the_report_counts_reasons_and_names_the_first_few(tmp_path):
    bucket = Bucket(tmp_path, [f"{c}.jpg" for c in "abcdefg"])
    bucket.run(bucket.plan(), "r1")
    (bucket.out / "g__s.jpg").unlink()
    plan = bucket.plan(settings=dict(SETTINGS, alpha=0.5))
    lines = plan.report(lambda content, style: Path(content).name)
    named = ", ".join(f"{c}.jpg" for c in "abcdef"[:FIRST_NAMED])
    assert lines == [f"7 to run: 6 settings changed (alpha 1.0 -> 0.5): {named} ...; 1 output missing: g.jpg"]


@pytest.mark.parametrize("partition_rows", [500_000, 5])
def test_a_manifest_of_another_output_prefix_is_not_mixed_in(tmp_path, partition_rows):
    bucket = Bucket(tmp_path, ["a.png"])
    writer = ManifestWriter(str(bucket.out), run_id="x")
    writer.write([ManifestRow(f"{bucket.content}/a.png", "s.jpg", "/elsewhere/a__s.png", "ok", fingerprint="f")])
    writer.close()
    assert _reasons(bucket.plan(partition_rows=partition_rows)) == [("a.png", "new")]
