"""Which planned pairs a run does, decided for a whole bucket in bounded memory.

A nightly rerun over ten million photos has ten million planned pairs, a manifest of ten
million rows and ten million outputs; the driver holds none of them whole. :func:`plan_run`

1. streams the content listing to a local spill file, counting it;
2. plans the pairs a batch of keys at a time (:class:`~pipeline.batch.planning.PairPlanner`),
   gives each its settings id (``stamp``), and spills them, the output listing and the
   manifest's rows into ``n`` partitions by a hash of the output URI, ``n`` chosen so a
   partition holds about :data:`PARTITION_ROWS` rows (one partition for a small job);
3. decides each partition in memory with Arrow: outputs claimed twice (the later pair is
   refused), the latest manifest row of each pair (a group-by), a left join of the plan on
   it, and each pair's reason to run, or none (skipped: its latest row is ``ok``, its output
   exists and the fingerprints match), written to per-partition spill files in plan order;
4. optionally *folds* the manifest: the latest rows it computed become the new current state
   (:data:`~pipeline.batch.manifest.STATE_ROWS` rows a file) and the files they came from are
   removed, so the next run reads a few large files.

The result, a :class:`RunPlan`, streams the pairs to run back in plan order (a k-way merge
of the partitions) and holds only counts and the first few names per reason, which is what
the console and ``--dry-run`` report. Nothing here knows about Ray.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipeline.batch.fingerprint import SettingsBook, changes
from pipeline.batch.manifest import (
    KEY_COLUMNS,
    READ_SCHEMA,
    ROW_GROUP,
    SCHEMA,
    STATE_DIR,
    STATE_ROWS,
    ManifestFiles,
    Pair,
    join_uri,
    match_latest,
)
from pipeline.batch.planning import PAIR_SCHEMA, PairPlanner
from pipeline.errors import one_line_error
from pipeline.imaging.imageio import local_output

__all__ = ["FIRST_NAMED", "FOLD_FILES", "PARTITION_ROWS", "STAMPED_SCHEMA", "RunPlan", "Tally", "plan_run"]

log = logging.getLogger("ultrastyle.batch")

# Rows of one partition decided in memory (about 150 MB of Arrow at its peak).
PARTITION_ROWS = 250_000
# Names kept (and shown) per reason.
FIRST_NAMED = 5
# Distinct reasons kept apart (further "settings changed: ..." details are counted under their label).
MAX_REASONS = 50
# The manifest is folded into a new current state when more files than this are not state,
# or when they hold an eighth of the state's rows or more.
FOLD_FILES = 4
_FOLD_SHARE = 8
# Spill files are LZ4-compressed: URIs that share their prefixes shrink several times, at little CPU.
_SPILL_OPTIONS = ipc.IpcWriteOptions(compression="lz4")

STAMPED_SCHEMA = PAIR_SCHEMA.append(pa.field("group", pa.int32())).append(pa.field("refusal", pa.string()))
_TODO_SCHEMA = pa.schema(
    [("seq", pa.int64()), ("content_uri", pa.string()), ("style_uri", pa.string()), ("output_uri", pa.string()),
     ("group", pa.int32()), ("reason", pa.string())]
)
_REFUSED_SCHEMA = pa.schema(
    [("seq", pa.int64()), ("content_uri", pa.string()), ("style_uri", pa.string()), ("output_uri", pa.string()),
     ("group", pa.int32()), ("error", pa.string())]
)
# What resume needs of a manifest row when it does not fold (then it reads them all).
_RESUME_COLUMNS = (*KEY_COLUMNS, "run_id", "status", "finished_at", "fingerprint", "settings")
_NEW, _FAILED, _MISSING, _UNRECORDED, _CHANGED = range(1, 6)
_REASONS = {_NEW: "new", _FAILED: "last run failed", _MISSING: "output missing",
            _UNRECORDED: "no settings recorded by the last run"}


@dataclass
class Tally:
    """How many pairs share a reason (or a refusal), and the first few of them in plan order.

    Attributes:
        count: pairs.
        first: ``(seq, content_uri, style_uri, text)`` of the first :data:`FIRST_NAMED`,
            ``text`` being the refusal's error (empty for a reason to run).
    """

    count: int = 0
    first: list[tuple[int, str, str, str]] = field(default_factory=list)

    def add(self, count: int, first: Iterable[tuple[int, str, str, str]]) -> None:
        self.count += count
        self.first = heapq.nsmallest(FIRST_NAMED, [*self.first, *first])


class _Spill:
    """``n`` Arrow IPC stream files, one per partition, that tables are appended to by a hash of a column."""

    def __init__(self, folder: str, name: str, schema: pa.Schema, n: int) -> None:
        self.paths = [os.path.join(folder, f"{name}-{p:04d}.arrow") for p in range(n)]
        self._writers = [ipc.new_stream(path, schema, options=_SPILL_OPTIONS) for path in self.paths]

    def write(self, p: int, table: pa.Table) -> None:
        """Append ``table`` to partition ``p``."""
        self._writers[p].write_table(table)

    def add(self, table: pa.Table, by: str) -> None:
        """Append each row of ``table`` to the partition of its column ``by``'s hash."""
        n = len(self._writers)
        if n == 1:
            self._writers[0].write_table(table)
            return
        # Python's string hash: the same for equal strings within this process, which is all
        # partitions need, and a few hundred nanoseconds a string.
        column = table[by].to_numpy(zero_copy_only=False)
        where = np.fromiter(map(hash, column), np.int64, len(column)) % n
        order = np.argsort(where, kind="stable")
        bounds = np.searchsorted(where[order], np.arange(n + 1))
        ordered = table.take(pa.array(order))
        for p in range(n):
            if bounds[p + 1] > bounds[p]:
                self._writers[p].write_table(ordered.slice(bounds[p], bounds[p + 1] - bounds[p]))

    def close(self) -> None:
        for writer in self._writers:
            writer.close()

    def read(self, p: int) -> pa.Table:
        with ipc.open_stream(self.paths[p]) as reader:
            return reader.read_all()

    def batches(self, p: int) -> Iterator[pa.RecordBatch]:
        with ipc.open_stream(self.paths[p]) as reader:
            yield from reader


@dataclass
class RunPlan:
    """What a run does, with the pairs to run streamed back from local spill files.

    Attributes:
        contents: content keys listed.
        pairs: pairs planned.
        skipped: pairs done before with the same settings and their output present.
        reasons: why pairs run, by reason (``new``, ``settings changed: alpha 1.0 -> 0.5``, ...).
        refused: pairs that cannot run (their key, an output claimed twice, a style or mask
            that cannot be read), each a failed row.
        folded: manifest files folded into a new current state (0 when not folded).
    """

    contents: int = 0
    pairs: int = 0
    skipped: int = 0
    reasons: dict[str, Tally] = field(default_factory=dict)
    refused: Tally = field(default_factory=Tally)
    folded: int = 0
    _todo: _Spill | None = None
    _refused: _Spill | None = None
    _book: SettingsBook | None = None

    @property
    def to_run(self) -> int:
        return sum(t.count for t in self.reasons.values())

    def todo(self) -> Iterator[Pair]:
        """The pairs to run, in plan order, each with its settings and reason."""
        assert self._todo is not None and self._book is not None
        book = self._book
        streams = [_rows(self._todo.batches(p)) for p in range(len(self._todo.paths))]
        for _, content, style, output, group, reason in heapq.merge(*streams):
            yield Pair(content, style, output, settings=book.settings[group], fingerprint=book.fingerprints[group],
                       reason=reason)

    def refused_rows(self) -> Iterator[pa.Table]:
        """The refused pairs as manifest columns (``status`` failed, ``error``, settings), a partition at a time."""
        assert self._refused is not None and self._book is not None
        for p in range(len(self._refused.paths)):
            table = self._refused.read(p)
            if table.num_rows:
                group = table["group"].combine_chunks()
                yield pa.table({
                    **{k: table[k] for k in KEY_COLUMNS},
                    "status": pa.array(["failed"] * table.num_rows, pa.string()),
                    "error": table["error"],
                    "fingerprint": self._book.column(group),
                    "settings": self._book.column(group, what="settings"),
                })

    def report(self, name: Callable[[str, str], str]) -> list[str]:
        """The console's account of the plan: pairs to run by reason (the first few named), refusals.

        Args:
            name: how to name a pair, from its content and style URIs.
        """
        lines = []
        if self.reasons:
            parts = []
            for reason, tally in sorted(self.reasons.items(), key=lambda item: (-item[1].count, item[0])):
                label, _, detail = reason.partition(": ")
                names = ", ".join(name(content, style) for _, content, style, _ in tally.first)
                more = " ..." if tally.count > len(tally.first) else ""
                parts.append(f"{tally.count} {label}{f' ({detail})' if detail else ''}: {names}{more}")
            lines.append(f"{self.to_run} to run: " + "; ".join(parts))
        if self.refused.count:
            shown = "; ".join(dict.fromkeys(text for *_, text in self.refused.first))  # each error once
            more = " ..." if self.refused.count > len(self.refused.first) else ""
            lines.append(f"{self.refused.count} refused: {shown}{more}")
        return lines


def _rows(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[int, str, str, str, int, str]]:
    for batch in batches:
        yield from zip(*(batch.column(i).to_pylist() for i in range(batch.num_columns)), strict=True)


def _spill_keys(keys: Iterable[list[str]], path: str) -> int:
    """Write the listed keys to ``path``; how many there were."""
    schema = pa.schema([("key", pa.string())])
    count = 0
    with ipc.new_stream(path, schema, options=_SPILL_OPTIONS) as writer:
        for batch in keys:
            writer.write_table(pa.table({"key": pa.array(batch, pa.string())}))
            count += len(batch)
    return count


def _collisions(plan: pa.Table) -> pa.Array:
    """Each pair's error, with a pair whose output an earlier pair (in plan order) claims refused."""
    error = plan["error"].combine_chunks()
    free = plan.filter(pc.is_null(error))
    claims = free.group_by("output_uri").aggregate([("seq", "count")])
    claimed = claims.filter(pc.greater(claims["seq_count"], 1))["output_uri"]
    if len(claimed) == 0:
        return error
    involved = free.filter(pc.is_in(free["output_uri"], claimed)).sort_by([("output_uri", "ascending"),
                                                                             ("seq", "ascending")])
    first: dict[str, str] = {}
    messages: dict[int, str] = {}
    for seq, content, style, output in zip(*(involved[c].to_pylist() for c in ("seq", *KEY_COLUMNS)), strict=True):
        if output in first:
            messages[seq] = f"output {output} would overwrite the output of {first[output]}"
        else:
            first[output] = f"{content} x {style}"
    seqs = plan["seq"].to_pylist()
    values = error.to_pylist()
    return pa.array([messages.get(s, v) for s, v in zip(seqs, values, strict=True)], pa.string())


def _old_settings(latest: pa.Table, fingerprint: str) -> dict:
    """The settings recorded with ``fingerprint`` in ``latest``."""
    fingerprints = latest["fingerprint"].cast(pa.string())
    i = pc.index(fingerprints, fingerprint).as_py()
    return json.loads(latest["settings"][i].as_py() or "{}") if i >= 0 else {}


@dataclass
class _Decided:
    """One partition's decisions."""

    todo: pa.Table
    refused: pa.Table
    skipped: int
    latest: pa.Table


def _decide(plan: pa.Table, existing: pa.Table, rows: pa.Table, book: SettingsBook, *, overwrite: bool) -> _Decided:
    """Decide one partition: refusals, then each runnable pair's reason to run (or none: skipped)."""
    error = pc.coalesce(_collisions(plan), plan["error"].combine_chunks(), plan["refusal"].combine_chunks())
    plan = plan.set_column(plan.schema.get_field_index("error"), "error", error)
    refused = plan.filter(pc.is_valid(error)).select(_REFUSED_SCHEMA.names).sort_by("seq")
    runnable = plan.filter(pc.is_null(error)).select([n for n in _TODO_SCHEMA.names if n != "reason"])
    latest, index = match_latest(runnable, rows)
    found = pa.array(np.where(index >= 0, index, 0), mask=index < 0) if len(latest) else None
    joined = runnable.combine_chunks()
    if found is None:
        joined = joined.append_column("last_status", pa.nulls(len(index), pa.string())).append_column(
            "last_fingerprint", pa.nulls(len(index), pa.string()))
    else:
        joined = joined.append_column("last_status", latest["status"].take(found).cast(pa.string())).append_column(
            "last_fingerprint", latest["fingerprint"].take(found).cast(pa.string()))
    n = joined.num_rows
    new_fp = pc.take(pa.array(book.fingerprints, pa.string()), joined["group"]) if n else pa.array([], pa.string())
    last_fp = joined["last_fingerprint"]
    if overwrite:
        code = np.full(n, -1, np.int32)
    else:
        status = joined["last_status"]
        exists = pc.is_in(joined["output_uri"], value_set=existing["output_uri"].combine_chunks())

        def true(mask: pa.Array) -> np.ndarray:
            return pc.fill_null(mask, True).to_numpy(zero_copy_only=False)

        code = np.select(
            [true(pc.is_null(status)), ~true(pc.is_in(status, pa.array(["ok", "skipped"]))), ~true(exists),
             true(pc.equal(pc.fill_null(last_fp, ""), "")), true(pc.not_equal(last_fp, new_fp))],
            [_NEW, _FAILED, _MISSING, _UNRECORDED, _CHANGED], 0,
        ).astype(np.int32)
    texts = ["", "overwrite"] if overwrite else ["", *(_REASONS[c] for c in sorted(_REASONS))]
    index = np.where(code == -1, 1, code).astype(np.int32)
    changed = np.flatnonzero(code == _CHANGED)
    if len(changed):
        pairs = pa.table({"old": last_fp.take(changed), "new": new_fp.take(changed)})
        combos = pc.dictionary_encode(pc.binary_join_element_wise(pairs["old"], pairs["new"], "/").combine_chunks())
        texts.append("")  # the _CHANGED slot itself is never used: each change has its own text
        base = len(texts)
        for combo in combos.dictionary.to_pylist():
            old, new = combo.split("/")
            found = changes(_old_settings(latest, old), json.loads(book.settings[book.fingerprints.index(new)]))
            texts.append("settings changed: " + ("; ".join(found) or "fingerprint differs"))
        index[changed] = base + combos.indices.to_numpy()
    run = np.flatnonzero(index > 0)
    todo = joined.take(pa.array(run)).select([n for n in _TODO_SCHEMA.names if n != "reason"])
    reason = pa.DictionaryArray.from_arrays(pa.array(index[run], pa.int32()), pa.array(texts, pa.string()))
    todo = todo.append_column("reason", reason.cast(pa.string())).sort_by("seq")
    return _Decided(todo, refused, n - len(run), latest)


def _tally(table: pa.Table, tallies: dict[str, Tally]) -> None:
    """Add the reasons of ``table``'s rows (sorted by seq) to ``tallies``."""
    if not table.num_rows:
        return
    values = pc.dictionary_encode(table["reason"].combine_chunks())
    indices = values.indices.to_numpy()
    order = np.argsort(indices, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(indices, minlength=len(values.dictionary)))])
    for i, reason in enumerate(values.dictionary.to_pylist()):
        rows = order[starts[i] : starts[i + 1]]
        first = [(table["seq"][j].as_py(), table["content_uri"][j].as_py(), table["style_uri"][j].as_py(), "")
                 for j in rows[:FIRST_NAMED]]
        if reason not in tallies and len(tallies) >= MAX_REASONS:
            reason = reason.partition(": ")[0]  # the details of the rest are in the manifest
        tallies.setdefault(reason, Tally()).add(len(rows), first)


def _tally_refused(table: pa.Table, tally: Tally) -> None:
    """Add ``table``'s refused rows (sorted by seq) to ``tally``, naming the first few errors."""
    head = table.slice(0, FIRST_NAMED)
    tally.add(table.num_rows, zip(*(head[c].to_pylist() for c in ("seq", *KEY_COLUMNS[:2], "error")), strict=True))


class _StateWriter:
    """The folded current state, written as files of at most :data:`STATE_ROWS` rows, a partition at a time."""

    def __init__(self, files: ManifestFiles, fold_id: str, workdir: str) -> None:
        self.files, self.fold_id, self.workdir = files, fold_id, workdir
        self.written: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        if self._writer is not None and self._rows + table.num_rows > STATE_ROWS:
            self._publish()
        table = table.select(SCHEMA.names)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._local(), table.schema, store_schema=False)
        self._writer.write_table(table, row_group_size=ROW_GROUP)
        self._rows += table.num_rows

    def _local(self) -> str:
        return os.path.join(self.workdir, f"state-{len(self.written):04d}.parquet")

    def _publish(self) -> None:
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        local = self._local()
        uri = join_uri(self.files.uri, STATE_DIR, f"{self.fold_id}-{len(self.written):04d}.parquet")
        with local_output(uri, self.files.storage_options) as path:
            shutil.move(local, path)
        self.written.append(uri)
        self._rows = 0

    def close(self) -> list[str]:
        if self._writer is not None:
            self._publish()
        return self.written


def plan_run(
    planner: PairPlanner,
    keys: Iterable[list[str]],
    *,
    stamp: Callable[[pa.Table], pa.Table],
    book: SettingsBook,
    existing: Iterable[list[str]],
    manifest: ManifestFiles,
    workdir: str,
    overwrite: bool = False,
    fold_id: str | None = None,
    partition_rows: int = PARTITION_ROWS,
) -> RunPlan:
    """List, plan and resume a run (see the module's docstring).

    Args:
        planner: names the pairs of the content keys.
        keys: the content keys below the input, in batches (:func:`~pipeline.batch.listing.iter_keys`).
        stamp: adds ``group`` (the settings id in ``book``) and ``refusal`` (a style or mask
            that cannot be used, else null) to a :data:`~pipeline.batch.planning.PAIR_SCHEMA` table.
        book: the settings ids ``stamp`` gives.
        existing: the keys below the output prefix, in batches.
        manifest: the manifest's files (:func:`~pipeline.batch.manifest.list_manifest`).
        workdir: a local folder for the spill files, kept until the plan's pairs have been read.
        overwrite: run every pair that can run (``--overwrite``).
        fold_id: fold the manifest into a new current state named after this id when it
            pays (``None``: never, as in ``--dry-run``).
        partition_rows: rows a partition aims at.

    Raises:
        FileNotFoundError: no content key was listed.
    """
    os.makedirs(workdir, exist_ok=True)
    result = RunPlan(_book=book)
    result.contents = _spill_keys(keys, os.path.join(workdir, "contents.arrow"))
    result.pairs = result.contents * len(planner.styles)
    state_rows, other_rows = manifest.rows(manifest.state), manifest.rows(manifest.others)
    fold = fold_id is not None and bool(manifest.others) and (
        len(manifest.others) > FOLD_FILES or other_rows * _FOLD_SHARE >= state_rows
        or len(manifest.state) > math.ceil(state_rows / STATE_ROWS)
    )
    n = max(1, math.ceil(max(result.pairs, state_rows + other_rows) / partition_rows))
    plans = _Spill(workdir, "plan", STAMPED_SCHEMA, n)
    outputs = _Spill(workdir, "existing", pa.schema([("output_uri", pa.string())]), n)
    columns = None if fold else list(_RESUME_COLUMNS)
    try:
        seq = 0
        with ipc.open_stream(os.path.join(workdir, "contents.arrow")) as reader:
            for batch in reader:
                table = stamp(planner.plan(batch.column(0), seq))
                plans.add(table, "output_uri")
                seq += table.num_rows
        for batch in existing:
            uris = pc.binary_join_element_wise(planner.output_base + "/", pa.array(batch, pa.string()), "")
            outputs.add(pa.table({"output_uri": uris}), "output_uri")
        rows = None
        if manifest.paths:
            fields = [f for f in manifest.dataset().schema if columns is None or f.name in columns]
            rows = _Spill(workdir, "manifest", pa.schema(fields), n)
            for batch in manifest.dataset().to_batches(columns=[f.name for f in fields]):
                rows.add(pa.Table.from_batches([batch]), "output_uri")
    finally:
        plans.close()
        outputs.close()
        if rows is not None:
            rows.close()
    result._todo = _Spill(workdir, "todo", _TODO_SCHEMA, n)
    result._refused = _Spill(workdir, "refused", _REFUSED_SCHEMA, n)
    state = _StateWriter(manifest, fold_id or "", workdir) if fold else None
    try:
        for p in range(n):
            manifest_rows = rows.read(p) if rows is not None else _empty_rows(columns)
            decided = _decide(plans.read(p), outputs.read(p), manifest_rows, book, overwrite=overwrite)
            result._todo.write(p, decided.todo)
            result._refused.write(p, decided.refused)
            result.skipped += decided.skipped
            _tally(decided.todo, result.reasons)
            _tally_refused(decided.refused, result.refused)
            if state is not None:
                state.add(decided.latest)
            del decided, manifest_rows
            pa.default_memory_pool().release_unused()  # the next partition's peak starts from what it needs
    finally:
        result._todo.close()
        result._refused.close()
    if state is not None:
        state.close()  # the new state is written before any file it replaces is removed
        _remove(manifest, manifest.paths)
        result.folded = len(manifest.paths)
    return result


def _empty_rows(columns: Sequence[str] | None) -> pa.Table:
    return pa.schema([f for f in READ_SCHEMA if columns is None or f.name in columns]).empty_table()


def _remove(manifest: ManifestFiles, paths: Sequence[str]) -> None:
    """Remove folded files (one that stays is read again next time, which changes nothing), and
    the runs' folders they leave empty on a local disk."""
    for path in paths:
        try:
            manifest.fs.rm_file(path)
        except Exception as e:
            log.warning("manifest: could not remove folded file %s (%s)", path, one_line_error(e))
    if isinstance(manifest.fs, LocalFileSystem):
        for folder in sorted({os.path.dirname(p) for p in paths}, reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
