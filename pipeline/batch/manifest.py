"""The batch job's manifest: one Parquet row per (content, style) pair, under ``<output>/_manifest/``.

Every pair gets one output, ``<output>/<content dir>/<content stem>__<style stem>.<ext>``
(:mod:`pipeline.batch.planning`), and one row saying how it went and what made its picture
(the settings and their fingerprint, see :mod:`pipeline.batch.fingerprint`), so a rerun redoes
a pair whose settings changed and says why. The manifest is laid out so that a bucket of
millions of pairs stays a handful of large files:

- ``state/<fold id>-<p>-of-<n>.parquet``: the *current state*, the latest row of every pair
  any earlier run decided, in ``n`` files of at most :data:`STATE_ROWS` rows each (split by a
  hash of ``output_uri``);
- ``runs/<run id>/part-<k>.parquet``: a run's rows as its pairs finish, one small file per
  flush, each written atomically before the rows are reported, so a crash loses no reported row;
- ``runs/<run id>/chunk-<k>.parquet``: the same rows compacted, every :data:`COMPACT_PARTS`
  parts or :data:`COMPACT_ROWS` rows (the parts are then removed); at its end a run leaves one;
- ``part-<run id>-<k>.parquet`` at the top: the layout of earlier versions, still read.

Whatever files are there, the manifest *means* the latest row (by ``finished_at``, then
``run_id``) of each ``(content_uri, style_uri, output_uri)`` over all of them, so a file read
twice (a crash between writing a compacted file and removing what it replaced) changes
nothing. The next run folds the runs' files into a new state and removes them (see
:mod:`pipeline.batch.resume`). A pair a run skips adds no row: the row that made its output
stays the current one. Nothing here knows about Ray: the same functions serve the job, its
tests and anyone reading a manifest (DuckDB, Spark and pandas read the folder as one dataset).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from pipeline.batch.listing import MANIFEST_DIR, iter_keys
from pipeline.batch.transient import Backoff, is_transient, retry_transient
from pipeline.errors import one_line_error
from pipeline.imaging.imageio import local_output, write_bytes

__all__ = [
    "COMPACT_PARTS",
    "COMPACT_ROWS",
    "KEY_COLUMNS",
    "MANIFEST_DIR",
    "READ_SCHEMA",
    "ROW_GROUP",
    "RUNS_DIR",
    "SCHEMA",
    "STATE_DIR",
    "STATE_ROWS",
    "STATUSES",
    "ManifestFiles",
    "ManifestRow",
    "ManifestWriter",
    "Pair",
    "Summary",
    "join_uri",
    "latest_rows",
    "list_manifest",
    "match_latest",
    "new_run_id",
    "read_manifest",
    "write_parquet",
]

log = logging.getLogger("ultrastyle.batch")

STATUSES = ("ok", "skipped", "failed")
STATE_DIR, RUNS_DIR = "state", "runs"
# Rows of one current-state file (a million rows of this schema are ~50 MB of Parquet).
STATE_ROWS = 1_000_000
# A run's parts are compacted into one file every this many parts or rows.
COMPACT_PARTS = 64
COMPACT_ROWS = 100_000
# A run's compacted files are merged into one when there are this many.
CHUNK_FANIN = 16
# Tries of each manifest write, and the waits between them.
DEFAULT_BACKOFF = Backoff(tries=4, first=1.0, longest=30.0)
# Parquet row groups of the large files: big enough for few requests, small enough to stream.
ROW_GROUP = 131_072

SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("content_uri", pa.string()),
        ("style_uri", pa.string()),
        ("output_uri", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("tiles", pa.int64()),
        ("mode", pa.string()),
        ("seconds", pa.float64()),
        ("read_seconds", pa.float64()),
        ("stylize_seconds", pa.float64()),
        ("compute_seconds", pa.float64()),
        ("reduce_seconds", pa.float64()),
        ("write_seconds", pa.float64()),
        ("worker", pa.string()),
        ("model_id", pa.string()),
        ("finished_at", pa.timestamp("ms", tz="UTC")),
        ("fingerprint", pa.string()),
        ("settings", pa.string()),
        ("reason", pa.string()),
    ]
)
KEY_COLUMNS = ("content_uri", "style_uri", "output_uri")
# Columns with few distinct values (a run id, a handful of settings), read dictionary-encoded:
# a bucket's ``settings`` JSON is a kilobyte a row as plain strings, a few bytes as indices.
_DICTIONARY_COLUMNS = ("run_id", "status", "error", "mode", "worker", "model_id", "fingerprint", "settings", "reason")
_KEY_SCHEMA = pa.schema([(k, pa.string()) for k in KEY_COLUMNS])
READ_SCHEMA = pa.schema(
    [pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.name in _DICTIONARY_COLUMNS else f for f in SCHEMA]
)


@dataclass(frozen=True)
class Pair:
    """One unit of work: a content image, a style and where the result goes.

    Attributes:
        content_uri, style_uri, output_uri: URIs as the job will use them.
        error: why the pair cannot run at all (empty when it can).
        settings: what its picture depends on, as canonical JSON.
        fingerprint: the digest of ``settings``.
        reason: why this run (re)does it (see :mod:`pipeline.batch.resume`).
    """

    content_uri: str
    style_uri: str
    output_uri: str
    error: str = ""
    settings: str = ""
    fingerprint: str = ""
    reason: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return self.content_uri, self.style_uri, self.output_uri


@dataclass
class ManifestRow:
    """One row of the manifest (see :data:`SCHEMA`).

    Attributes:
        status: ``ok`` or ``failed`` (``skipped`` is read in manifests of earlier versions,
            which wrote a row for every pair a rerun skipped).
        error: one line, empty unless failed.
        tiles: tile cores the image was cut into (1 for an image run in one call).
        mode: ``whole``, ``exact`` (in one call) or ``tiled`` (rounds spread over actors).
        seconds: wall time from the pair's start to its output being written.
        read_seconds, write_seconds: decoding the input / encoding and storing the output.
        stylize_seconds: wall time of the cascade (all levels, queueing included).
        compute_seconds: time the model actors spent on this pair, summed over calls.
        reduce_seconds: time the driver spent merging statistics and building transforms.
        worker: the actor(s) that ran the pair, ``name@node``, comma-separated.
        model_id: the weight set's id.
        fingerprint, settings: what made the picture (:attr:`Pair.settings`).
        reason: why this run ran the pair (``new``, ``overwrite``, ``last run failed``,
            ``output missing``, ``settings changed: alpha 1.0 -> 0.5``, ...).
    """

    content_uri: str
    style_uri: str
    output_uri: str
    status: str
    error: str = ""
    run_id: str = ""
    width: int = 0
    height: int = 0
    tiles: int = 0
    mode: str = ""
    seconds: float = 0.0
    read_seconds: float = 0.0
    stylize_seconds: float = 0.0
    compute_seconds: float = 0.0
    reduce_seconds: float = 0.0
    write_seconds: float = 0.0
    worker: str = ""
    model_id: str = ""
    finished_at: dt.datetime | None = None
    fingerprint: str = ""
    settings: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def new_run_id() -> str:
    """A sortable, collision-resistant id for one run of the job (UTC time + random suffix)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def join_uri(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or URL, without doubling slashes."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p.strip("/"))])


# -- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestFiles:
    """The Parquet files of a manifest, as the filesystem names them.

    Attributes:
        uri: the manifest folder's URI.
        storage_options: passed to fsspec.
        fs: the filesystem they are on.
        folder: the manifest folder's path on ``fs``.
        state: the current-state files.
        others: every other file (runs' parts and compacted files, the earlier layout).
    """

    uri: str
    storage_options: dict[str, Any] | None
    fs: Any
    folder: str
    state: tuple[str, ...]
    others: tuple[str, ...]

    @property
    def paths(self) -> tuple[str, ...]:
        return self.state + self.others

    def dataset(self) -> ds.Dataset:
        """Every file as one dataset of :data:`READ_SCHEMA` (missing columns read as nulls)."""
        fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=list(_DICTIONARY_COLUMNS)))
        return ds.dataset(list(self.paths), schema=READ_SCHEMA, format=fmt, filesystem=self.fs)

    def rows(self, paths: Sequence[str]) -> int:
        """Rows in ``paths``, from their footers."""
        if not paths:
            return 0
        return ds.dataset(list(paths), format="parquet", filesystem=self.fs).count_rows()


def list_manifest(output_uri: str, storage_options: dict[str, Any] | None = None) -> ManifestFiles:
    """The manifest files under ``<output_uri>/_manifest/`` (none when it does not exist).

    Raises:
        OSError: the folder cannot be listed (unreachable endpoint, access denied).
    """
    uri = join_uri(output_uri, MANIFEST_DIR)
    fs, folder = url_to_fs(uri, **(storage_options or {}))
    folder = folder.rstrip("/")
    state, others = [], []
    try:
        for batch in iter_keys(uri, storage_options):
            for key in batch:
                if key.endswith(".parquet"):
                    (state if key.startswith(STATE_DIR + "/") else others).append(f"{folder}/{key}")
    except FileNotFoundError:
        pass
    return ManifestFiles(uri, storage_options, fs, folder, tuple(state), tuple(others))


def latest_rows(table: pa.Table) -> pa.Table:
    """The latest row (by ``finished_at``, then ``run_id``) of each ``(content, style, output)``.

    Args:
        table: manifest rows (:data:`SCHEMA` or :data:`READ_SCHEMA`), in any order.

    Returns:
        One row per key, in no particular order.
    """
    return match_latest(pa.table({k: pa.array([], pa.string()) for k in KEY_COLUMNS}), table)[0]


def match_latest(keys: pa.Table, rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """The latest row of each pair in ``rows``, and where each pair of ``keys`` finds its own.

    One group-by over both tables' key columns does the dedup and the lookup together (it is
    several times faster than a join on three string columns).

    Args:
        keys: pairs (the :data:`KEY_COLUMNS`), each at most once.
        rows: manifest rows, in any order.

    Returns:
        The latest rows (one per pair, in no particular order), and for each row of ``keys``
        the index of its pair's latest row among them, -1 when ``rows`` has none.
    """
    n_keys, n_rows = keys.num_rows, rows.num_rows
    if n_rows == 0:
        return rows, np.full(n_keys, -1, np.int64)
    order = pc.sort_indices(
        pa.table({"t": rows["finished_at"], "r": rows["run_id"].cast(pa.string())}),
        sort_keys=[("t", "ascending", "at_start"), ("r", "ascending", "at_start")],
    )
    both = pa.concat_tables([keys.select(list(KEY_COLUMNS)).cast(_KEY_SCHEMA),
                             rows.select(list(KEY_COLUMNS)).take(order).cast(_KEY_SCHEMA)])
    position = np.arange(n_keys + n_rows, dtype=np.int64)
    is_key = position < n_keys
    both = both.append_column("k", pa.array(position, mask=~is_key)).append_column(
        "r", pa.array(position - n_keys, mask=is_key))
    groups = both.group_by(list(KEY_COLUMNS), use_threads=False).aggregate([("k", "min"), ("r", "max")])
    found = groups.filter(pc.is_valid(groups["r_max"]))
    latest = rows.take(order.take(found["r_max"]))
    index = np.full(n_keys, -1, np.int64)
    matched = found.filter(pc.is_valid(found["k_min"]))
    rank = np.flatnonzero(pc.is_valid(found["k_min"]).to_numpy(zero_copy_only=False))
    index[matched["k_min"].to_numpy()] = rank
    return latest, index


def read_manifest(output_uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """The current manifest: the latest row of every pair, as one :data:`SCHEMA` table sorted by key.

    Reads every layout (current state, runs' files, the earlier layout) in one pass. Meant
    for a person or a test looking at a manifest that fits in memory; the job itself streams
    it (:mod:`pipeline.batch.resume`).
    """
    files = list_manifest(output_uri, storage_options)
    if not files.paths:
        return SCHEMA.empty_table()
    table = latest_rows(files.dataset().to_table()).cast(SCHEMA)
    return table.sort_by([(k, "ascending") for k in KEY_COLUMNS])


# -- writing --------------------------------------------------------------------------------------


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    # Without the Arrow schema stored, dictionary-encoded columns read back as plain strings.
    pq.write_table(table, buf, row_group_size=ROW_GROUP, store_schema=False)
    return buf.getvalue()


def write_parquet(uri: str, tables: Iterable[pa.Table], storage_options: dict[str, Any] | None = None) -> int:
    """Write ``tables`` (one schema) as one Parquet file at ``uri``, atomically, streaming them.

    Returns:
        The rows written.
    """
    rows = 0
    with local_output(uri, storage_options) as path:
        writer: pq.ParquetWriter | None = None
        try:
            for table in tables:
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema, store_schema=False)
                writer.write_table(table, row_group_size=ROW_GROUP)
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
    return rows


def _default(field: pa.Field, n: int) -> pa.Array:
    """A column of ``n`` of :class:`ManifestRow`'s defaults for ``field`` (empty, 0, or null for a time)."""
    if pa.types.is_string(field.type):
        return pa.array([""] * n, field.type)
    if pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
        return pa.array(np.zeros(n), field.type)
    return pa.nulls(n, field.type)


def _rows_table(rows: Sequence[ManifestRow] | pa.Table, run_id: str, now: dt.datetime) -> pa.Table:
    """``rows`` (objects, or a table of some of :data:`SCHEMA`'s columns) as a :data:`SCHEMA`-ordered
    table stamped with ``run_id``, ``finished_at`` filled, ``settings`` dictionary-encoded."""
    if not isinstance(rows, pa.Table):
        rows = pa.Table.from_pylist([{f.name: getattr(r, f.name) for f in fields(r)} for r in rows], schema=SCHEMA)
    n = rows.num_rows
    columns = {}
    for f in SCHEMA:
        column = rows[f.name].combine_chunks() if f.name in rows.column_names else _default(f, n)
        if f.name == "settings":
            column = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
        elif pa.types.is_dictionary(column.type):
            column = column.cast(f.type)
        columns[f.name] = column
    columns["run_id"] = pa.array([run_id] * n, pa.string())
    columns["finished_at"] = pc.fill_null(columns["finished_at"], pa.scalar(now, SCHEMA.field("finished_at").type))
    return pa.table(columns)


class ManifestWriter:
    """Writes one run's rows under ``<output_uri>/_manifest/runs/<run id>/`` and never stops the job.

    Each :meth:`write` stores the rows given (and any held back) as one Parquet part, written
    atomically, before returning, so every row the job reports is on storage. Parts are
    compacted as the run goes (:data:`COMPACT_PARTS`, :data:`COMPACT_ROWS`) and into one file
    by :meth:`close`. A storage fault never raises out of here: a transient one is retried
    with backoff; rows that still cannot be written are held and written with the next call
    once storage is back (calls in between do not wait on a store that is down), and
    :meth:`close` says what could not be written.

    Args:
        output_uri: the job's output prefix.
        run_id: this run's id (from :func:`new_run_id`), stamped on every row.
        storage_options: passed to fsspec.
        backoff: tries of each write and the waits between them.
        clock: seconds for the waits (a test may pass a fake one).
    """

    def __init__(
        self,
        output_uri: str,
        *,
        run_id: str,
        storage_options: dict[str, Any] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.output_uri = output_uri
        self.folder = join_uri(output_uri, MANIFEST_DIR, RUNS_DIR, run_id)
        self.run_id = run_id
        self.storage_options = storage_options
        self.backoff = backoff
        self.error = ""
        self.rows_written = 0
        self._clock = clock
        self._pending: list[pa.Table] = []
        self._held: list[pa.Table] = []
        self._parts: list[str] = []
        self._chunks: list[str] = []
        self._count = 0
        self._failures = 0
        self._next_try = 0.0

    @property
    def pending(self) -> int:
        """Rows not on storage yet."""
        return sum(t.num_rows for t in self._pending)

    def write(self, rows: Sequence[ManifestRow] | pa.Table) -> bool:
        """Store ``rows`` (and rows held back) as one part.

        Returns:
            Whether every row given so far is on storage. When not, the rows are held and
            :attr:`error` says why; this call has not waited for the store to come back.
        """
        table = _rows_table(rows, self.run_id, dt.datetime.now(dt.timezone.utc))
        if table.num_rows:
            self._pending.append(table)
        return self._flush(wait=False)

    def _uri(self, kind: str) -> str:
        self._count += 1
        return join_uri(self.folder, f"{kind}-{self._count:06d}.parquet")

    def _store(self, uri: str, tables: Sequence[pa.Table]) -> None:
        data = _parquet_bytes(pa.concat_tables(tables))
        retry_transient(lambda: write_bytes(uri, data, self.storage_options), backoff=self.backoff,
                        what=f"manifest write {uri}")

    def _flush(self, *, wait: bool) -> bool:
        if not self._pending:
            return True
        if not wait and self._clock() < self._next_try:
            return False
        uri = self._uri("part")
        try:
            self._store(uri, self._pending)
        except Exception as e:
            self._failures += 1
            self._next_try = self._clock() + self.backoff.wait(self._failures)
            if not self.error:
                kind = "storage fault" if is_transient(e) else "error"
                log.warning("manifest: %s writing %s (%s); %d rows held, written once it succeeds", kind, uri,
                            one_line_error(e), self.pending)
            self.error = one_line_error(e)
            return False
        if self.error:
            log.warning("manifest: writes succeed again; %d held rows written", self.pending)
        self.error, self._failures = "", 0
        self.rows_written += self.pending
        self._held += self._pending
        self._parts.append(uri)
        self._pending = []
        if len(self._parts) >= COMPACT_PARTS or sum(t.num_rows for t in self._held) >= COMPACT_ROWS:
            self._compact()
        return True

    def _remove(self, uris: Sequence[str]) -> None:
        """Remove files whose rows are in a file written since (a file left behind is read twice, harmlessly)."""
        fs, _ = url_to_fs(self.folder, **(self.storage_options or {}))
        for uri in uris:
            try:
                fs.rm_file(url_to_fs(uri, **(self.storage_options or {}))[1])
            except Exception as e:
                log.debug("manifest: could not remove %s (%s)", uri, one_line_error(e))

    def _compact(self) -> None:
        """The parts written since the last compaction as one file (rows held in memory); then,
        when there are :data:`CHUNK_FANIN` such files, those as one."""
        if len(self._parts) > 1:
            uri = self._uri("chunk")
            try:
                self._store(uri, self._held)
            except Exception as e:  # the parts stay; compacting is only an optimisation
                log.debug("manifest: compacting into %s failed (%s)", uri, one_line_error(e))
                return
            self._remove(self._parts)
            self._chunks.append(uri)
        else:
            self._chunks += self._parts
        self._held, self._parts = [], []
        if len(self._chunks) >= CHUNK_FANIN:
            self._merge_chunks()

    def _merge_chunks(self) -> None:
        fs, _ = url_to_fs(self.folder, **(self.storage_options or {}))
        paths = [url_to_fs(uri, **(self.storage_options or {}))[1] for uri in self._chunks]
        uri = self._uri("chunk")
        try:
            batches = ds.dataset(paths, schema=SCHEMA, format="parquet", filesystem=fs).to_batches()
            write_parquet(uri, (pa.Table.from_batches([b]) for b in batches), self.storage_options)
        except Exception as e:
            log.debug("manifest: merging into %s failed (%s)", uri, one_line_error(e))
            return
        self._remove(self._chunks)
        self._chunks = [uri]

    def close(self, *, patience: float = 300.0) -> bool:
        """Write what is held, waiting up to ``patience`` seconds for storage, and compact the run into one file.

        Returns:
            Whether every row is on storage (when not, :meth:`save_local` keeps them).
        """
        deadline = self._clock() + patience
        while not self._flush(wait=True) and self._clock() < deadline:
            time.sleep(max(0.0, min(self._next_try, deadline) - self._clock()))
        if self._pending:
            return False
        self._compact()
        if len(self._chunks) > 1:
            self._merge_chunks()
        return True

    def save_local(self, folder: str = ".") -> str:
        """Write the rows not on storage to ``<folder>/ultrastyle-manifest-<run id>.parquet``; its path."""
        path = os.path.join(folder, f"ultrastyle-manifest-{self.run_id}.parquet")
        pq.write_table(pa.concat_tables(self._pending), path, store_schema=False)
        return path


# -- the run's closing line -------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """The job's closing line: pairs per status, megapixels written, wall seconds."""

    ok: int
    skipped: int
    failed: int
    megapixels: float
    seconds: float

    @property
    def pairs(self) -> int:
        return self.ok + self.skipped + self.failed

    def line(self) -> str:
        rate = self.megapixels / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.pairs} pairs: {self.ok} ok, {self.skipped} skipped, {self.failed} failed; "
            f"{self.megapixels:.2f} MP stylized in {self.seconds:.1f} s ({rate:.3f} MP/s)"
        )
