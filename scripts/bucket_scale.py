"""The batch job's bookkeeping at bucket scale: time and driver memory before the first pixel.

    python -m scripts.bucket_scale --files 1000000 [--prior] [--run] [--missing N] [--root DIR] [--keep]

Builds a local tree of ``--files`` empty content files (1,000 per folder; empty files are
fine: nothing is decoded before admission) and one real style image, then runs
``python -m jobs.stylize --dry-run`` over it in a fresh process under ``/usr/bin/time`` and
prints its wall seconds, peak resident memory and report. With ``--prior`` it first makes
every pair look done: an empty output file per pair and a manifest of one ``ok`` row per pair,
with the settings this job computes, in a single Parquet file of the layout earlier versions
wrote (``_manifest/part-<run>-000000.parquet``), so the report must say ``0 to run``. With
``--run`` the job runs for real instead of ``--dry-run``: with ``--prior`` it starts no Ray
(nothing to run) but folds the manifest into its current state, which the script then lists.
Both the prior manifest and the runs use ``ULTRASTYLE_CODE_VERSION=bucket-scale``, so a commit in
between does not change the fingerprints. A ``--run`` is preceded by a dry run and refused when
it would stylize more pairs than ``--missing``. ``--missing N`` (with ``--prior --run``) makes
the first ``N`` content files real 64x48 photos
and removes their outputs, so ``N`` pairs run, and reports the time before the first pixel:
from the job's start to the start of its first pair, Ray's start and the model load included.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.bench import photo_file
from jobs.samples import paint_style
from jobs.stylize import build_options, build_parser
from pipeline.batch.fingerprint import CODE_VERSION_ENV, SettingsBook
from pipeline.batch.listing import iter_keys
from pipeline.batch.manifest import MANIFEST_DIR, SCHEMA, new_run_id
from pipeline.batch.planning import PairPlanner
from pipeline.batch.preflight import check_batch

PER_FOLDER = 1000


def _tree(root: Path, files: int, name: str) -> None:
    """``files`` empty files ``<root>/<folder>/<n><name>``, 1,000 per folder."""
    for i in range(files):
        folder = root / f"{i // PER_FOLDER:05d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(folder / f"{i:08d}{name}", os.O_CREAT | os.O_WRONLY, 0o644))


def _argv(content: Path, style: Path, out: Path) -> list[str]:
    return ["--input", str(content), "--style", str(style), "--output", str(out)]


def _prior(content: Path, style: Path, out: Path, files: int) -> None:
    """An output and an ``ok`` row for every pair, the rows in one Parquet file of the earlier layout."""
    options = build_options(build_parser().parse_args(_argv(content, style, out)), str(content))
    checks = check_batch(options, probe_output=False)
    book = SettingsBook()
    planner = PairPlanner(input_uri=str(content), output_uri=str(out), style_keys=[str(style)])
    _tree(out, files, f"__{style.stem}.jpg")
    path = out / MANIFEST_DIR / f"part-{new_run_id()}-000000.parquet"
    path.parent.mkdir(parents=True)
    run_id = path.stem[len("part-") : -len("-000000")]
    with pq.ParquetWriter(path, SCHEMA) as writer:
        seq = 0
        for keys in iter_keys(str(content)):
            pairs = checks.stamp(planner.plan(keys, seq), options, book)
            seq += pairs.num_rows
            n = pairs.num_rows
            columns = {
                "run_id": pa.array([run_id] * n, pa.string()),
                **{k: pairs[k] for k in ("content_uri", "style_uri", "output_uri")},
                "status": pa.array(["ok"] * n, pa.string()),
                "width": pa.array([640] * n, pa.int64()),
                "height": pa.array([480] * n, pa.int64()),
                "tiles": pa.array([1] * n, pa.int64()),
                "mode": pa.array(["whole"] * n, pa.string()),
                "finished_at": pa.array([int(time.time() * 1000)] * n, pa.int64()).cast(
                    SCHEMA.field("finished_at").type),
                "fingerprint": book.column(pairs["group"].combine_chunks()).cast(pa.string()),
                "settings": book.column(pairs["group"].combine_chunks(), what="settings").cast(pa.string()),
                "reason": pa.array(["new"] * n, pa.string()),
            }
            table = pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in SCHEMA}, schema=SCHEMA)
            writer.write_table(table)


def _make_missing(content: Path, out: Path, style: Path, count: int) -> None:
    """The first ``count`` content files as real photos, their outputs removed: ``count`` pairs to run."""
    photo = content.parent / "photo.jpg"
    photo_file(str(photo), 64, 48)
    for i in range(count):
        name = f"{i // PER_FOLDER:05d}/{i:08d}"
        shutil.copyfile(photo, content / f"{name}.jpg")
        (out / f"{name}__{style.stem}.jpg").unlink(missing_ok=True)


def _first_pixel(log: str, started: float) -> float | None:
    """Seconds from ``started`` (epoch) to the start of the first pair that finished ``ok``."""
    found = re.search(r"^(\d\d:\d\d:\d\d) \[\d+/\d+\] ok .* ([\d.]+) s\)$", log, re.MULTILINE)
    if found is None:
        return None
    day = time.strftime("%Y-%m-%d", time.localtime(started))
    finished = time.mktime(time.strptime(f"{day} {found[1]}", "%Y-%m-%d %H:%M:%S"))
    return finished - float(found[2]) - started


def _measure(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GiB, stderr) of ``python -m jobs.stylize argv`` in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        timing = os.path.join(folder, "time.txt")
        command = ["/usr/bin/time", "-o", timing, "-f", "%e %M", sys.executable, "-m", "jobs.stylize", *argv]
        proc = subprocess.run(command, capture_output=True, text=True)
        wall, kib = Path(timing).read_text().split()[-2:]
    if proc.returncode:
        raise SystemExit(f"the job failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return float(wall), int(kib) / 2**20, proc.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=1_000_000, help="content files (default 1,000,000)")
    p.add_argument("--prior", action="store_true", help="every pair already done by an earlier run")
    p.add_argument("--run", action="store_true", help="run the job for real instead of --dry-run")
    p.add_argument("--missing", type=int, default=0, help="with --prior --run: pairs left to run (real photos)")
    p.add_argument("--root", default=None, help="where to build the tree (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the tree afterwards")
    args = p.parse_args()

    # One code version for the prior manifest and every run: a commit in between must not change the fingerprints.
    os.environ[CODE_VERSION_ENV] = "bucket-scale"
    root = Path(args.root or tempfile.mkdtemp(prefix="ultrastyle-scale-"))
    content, out, style = root / "in", root / "out", root / "style.jpg"
    try:
        start = time.perf_counter()
        if not content.exists():
            _tree(content, args.files, ".jpg")
            paint_style(512).save(style)
        if args.prior and not (out / MANIFEST_DIR).exists():
            _prior(content, style, out, args.files)
        if args.missing:
            _make_missing(content, out, style, args.missing)
        print(f"tree of {args.files:,} files ready in {time.perf_counter() - start:.0f} s under {root}", flush=True)
        if args.run:
            planned = re.search(r"\((\d+) to run,", _measure([*_argv(content, style, out), "--dry-run"])[2])
            if planned is None or int(planned[1]) > args.missing:
                raise SystemExit(f"refusing to run: the dry run plans {planned[1] if planned else '?'} pairs")
        started = time.time()
        wall, peak, log = _measure([*_argv(content, style, out), *([] if args.run else ["--dry-run"])])
        print(log.rstrip())
        what = ("run" if args.run else "dry run") + f" over {args.files:,} files"
        print(f"{what}{' (all done before)' if args.prior else ''}: {wall:.1f} s, driver peak RSS {peak:.2f} GiB")
        first = _first_pixel(log, started)
        if first is not None:
            print(f"time before the first pixel: {first:.0f} s")
        if (out / MANIFEST_DIR).exists():
            files = [str(f.relative_to(out)) for f in (out / MANIFEST_DIR).rglob("*.parquet")]
            print(f"manifest files: {len(files)} {sorted(files)[:4]}")
    finally:
        if not args.keep and not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
