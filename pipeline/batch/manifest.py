"""The batch job's bookkeeping: which (content, style) pairs to run, and the Parquet manifest.

Every pair gets one output, ``<output>/<content dir>/<content stem>__<style stem>.<ext>``, and
one manifest row saying how it went. Rows are written as small Parquet files under
``<output>/_manifest/`` as pairs finish, each file written atomically, so a crash loses at
most the pairs still in flight and a rerun can tell finished pairs from the rest. Each row
also records what made its picture (the settings and their fingerprint, see
:mod:`pipeline.batch.fingerprint`), so a rerun redoes a pair whose settings changed and says why.
Nothing here knows about Ray: the same functions serve the job, its tests and anyone reading
a manifest.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import posixpath
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from pipeline.batch.fingerprint import changes, fingerprint
from pipeline.engine.controls import style_stem
from pipeline.errors import LocationError, MissingLocationError, one_line_error
from pipeline.imaging.imageio import ImageError, output_format, write_bytes

__all__ = [
    "MANIFEST_DIR",
    "SCHEMA",
    "STATUSES",
    "ManifestRow",
    "ManifestWriter",
    "Pair",
    "Summary",
    "existing_files",
    "join_uri",
    "list_inputs",
    "new_run_id",
    "plan_pairs",
    "read_manifest",
    "resume",
    "summarize",
    "with_settings",
]

MANIFEST_DIR = "_manifest"
STATUSES = ("ok", "skipped", "failed")
_DEFAULT_EXT = ".png"

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


@dataclass(frozen=True)
class Pair:
    """One unit of work: a content image, a style and where the result goes.

    Attributes:
        content_uri, style_uri, output_uri: URIs as the job will use them.
        error: why the pair cannot run at all (its output key would escape the output
            prefix, collides with another pair's, or its style cannot be read), empty when
            it can.
        settings: what its picture depends on, as canonical JSON (see :func:`with_settings`).
        fingerprint: the digest of ``settings``.
        reason: why this run (re)does it (see :func:`resume`).
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
        status: ``ok``, ``skipped`` (done by an earlier run, output present) or ``failed``.
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
        fingerprint, settings: what made the picture (:attr:`Pair.settings`); a skipped row
            repeats those of the run that made it.
        reason: why this run ran the pair (``new``, ``overwrite``, ``last run failed``,
            ``output missing``, ``settings changed: alpha 1.0 -> 0.5``, ...); empty when skipped.
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


def _skipped(relative: str) -> bool:
    """Hidden files (including our own ``.tmp-*`` partial writes) and manifests are not inputs."""
    parts = relative.split("/")
    return parts[-1].startswith(".") or MANIFEST_DIR in parts[:-1]


def list_inputs(
    input_uri: str, storage_options: dict[str, Any] | None = None, *, exclude_uri: str | None = None
) -> list[str]:
    """Every file under ``input_uri`` as a URI of the same form, sorted.

    Non-image files are listed too: the job gives each a failed row rather than ignoring it.
    Hidden files, ``_manifest`` folders and anything under ``exclude_uri`` (the output, when
    it lies inside the input) are left out.

    Raises:
        MissingLocationError: the input holds no file (missing bucket, prefix or folder);
            a ``FileNotFoundError``.
        LocationError: the listing itself failed (unreachable endpoint, access denied); the
            message names the URI and the cause in one line.
    """
    fs, root = url_to_fs(input_uri, **(storage_options or {}))
    root = root.rstrip("/")
    excluded = url_to_fs(exclude_uri, **(storage_options or {}))[1].rstrip("/") + "/" if exclude_uri else None
    try:
        found = fs.find(root)
    except FileNotFoundError as e:
        raise MissingLocationError(f"input {input_uri} does not exist ({e})") from e
    except Exception as e:
        raise LocationError(f"cannot list input {input_uri}: {one_line_error(e)}") from e
    uris = []
    for path in sorted(found):
        if excluded and (path + "/").startswith(excluded):
            continue
        relative = path[len(root) :].lstrip("/")
        if relative and not _skipped(relative):
            uris.append(join_uri(input_uri, relative))
    if not uris:
        raise MissingLocationError(f"input {input_uri} holds no files")
    return uris


def _extension(content_uri: str, fmt: str | None) -> str:
    if fmt:
        ext = "." + fmt.lower().lstrip(".")
        output_format("x" + ext)  # raises ImageError naming the extension when unsupported
        return ext
    ext = PurePosixPath(content_uri).suffix.lower()
    try:
        output_format("x" + ext)
    except ImageError:
        return _DEFAULT_EXT
    return ext


def plan_pairs(
    content_uris: Sequence[str], style_uris: Sequence[str], *, input_uri: str, output_uri: str, fmt: str | None = None
) -> list[Pair]:
    """Every (content, style) pair with its output URI, in content-major order.

    The output keeps the content's folder below ``input_uri`` and is named
    ``<content stem>__<style stem>.<ext>`` (``<stem>+<stem>`` for several styles joined by
    :func:`pipeline.engine.controls.join_styles`); ``ext`` is ``fmt`` or the content's own extension
    (PNG when that is not an image format we write).

    A content key with ``.``, ``..`` or empty components would put its output outside the
    output prefix (S3 keys may hold them literally), and two pairs may map to one output
    (styles with the same stem); such pairs get an ``error`` instead of running.
    """
    pairs: list[Pair] = []
    taken: dict[str, str] = {}
    base = input_uri.rstrip("/") + "/"
    for content in content_uris:
        relative = content[len(base) :] if content.startswith(base) else PurePosixPath(content).name
        folder, name = posixpath.split(relative)
        parts = relative.split("/")
        for style in style_uris:
            out = join_uri(output_uri, folder, f"{PurePosixPath(name).stem}__{style_stem(style)}")
            out += _extension(name, fmt)
            error = ""
            if any(p in ("", ".", "..") for p in parts):
                error = f"content key {relative!r} would write outside the output prefix {output_uri}"
            elif out in taken:
                error = f"output {out} would overwrite the output of {taken[out]}"
            else:
                taken[out] = f"{content} x {style}"
            pairs.append(Pair(content, style, out, error))
    return pairs


def existing_files(uri: str, storage_options: dict[str, Any] | None = None) -> set[str]:
    """Filesystem paths (as ``url_to_fs`` strips them) of every file under ``uri``.

    Raises:
        MissingLocationError, LocationError: the output location cannot be listed (missing
            bucket, unreachable endpoint); one line naming the URI.
    """
    fs, root = url_to_fs(uri, **(storage_options or {}))
    try:
        if not fs.exists(root):
            return set()
        return set(fs.find(root.rstrip("/")))
    except FileNotFoundError as e:
        raise MissingLocationError(f"output {uri} is not reachable ({e})") from e
    except Exception as e:
        raise LocationError(f"cannot list output {uri}: {one_line_error(e)}") from e


def _stripped(uri: str, storage_options: dict[str, Any] | None) -> str:
    return url_to_fs(uri, **(storage_options or {}))[1]


def read_manifest(output_uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Every row ever written under ``<output_uri>/_manifest/``, as one table (empty if none)."""
    fs, root = url_to_fs(join_uri(output_uri, MANIFEST_DIR), **(storage_options or {}))
    if not fs.exists(root):
        return SCHEMA.empty_table()
    tables = []
    for path in sorted(fs.find(root)):
        if path.endswith(".parquet") and not posixpath.basename(path).startswith("."):
            with fs.open(path, "rb") as f:
                tables.append(pq.read_table(f, schema=SCHEMA))
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def with_settings(pair: Pair, settings: Mapping[str, Any]) -> Pair:
    """``pair`` carrying ``settings`` (as canonical JSON) and their fingerprint."""
    return replace(pair, settings=json.dumps(settings, sort_keys=True), fingerprint=fingerprint(settings))


def _latest(table: pa.Table) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The most recent row of each ``(content_uri, style_uri, output_uri)``."""
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    rows = table.to_pylist()
    rows.sort(key=lambda r: (r["finished_at"] or dt.datetime.min.replace(tzinfo=dt.timezone.utc), r["run_id"] or ""))
    for row in rows:
        latest[(row["content_uri"], row["style_uri"], row["output_uri"])] = row
    return latest


def _redo_reason(pair: Pair, last: dict[str, Any] | None, output_exists: bool) -> str:
    """Why ``pair`` must run again, or ``""`` when its output is the one this run would write."""
    if last is None:
        return "new"
    if last["status"] not in ("ok", "skipped"):
        return "last run failed"
    if not output_exists:
        return "output missing"
    if not last["fingerprint"]:
        return "no settings recorded by the last run"
    if last["fingerprint"] != pair.fingerprint:
        changed = changes(json.loads(last["settings"] or "{}"), json.loads(pair.settings or "{}"))
        return "settings changed: " + ("; ".join(changed) or "fingerprint differs")
    return ""


def resume(
    pairs: Sequence[Pair],
    table: pa.Table,
    existing: set[str],
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> tuple[list[Pair], list[ManifestRow]]:
    """Split the plan into pairs to run (each with its ``reason``) and rows already decided.

    A pair is skipped only when its latest row is ``ok`` (or ``skipped``), its output exists
    and the row's fingerprint equals the pair's; a pair with a planning ``error`` gets a
    failed row; ``overwrite`` runs every other pair.

    Args:
        pairs: from :func:`plan_pairs`, given their settings by :func:`with_settings`.
        table: from :func:`read_manifest`.
        existing: from :func:`existing_files` on the output URI.
        overwrite: redo every pair (``--overwrite``).
        storage_options: to resolve output URIs to the paths in ``existing``.
    """
    latest = _latest(table)
    todo: list[Pair] = []
    decided: list[ManifestRow] = []
    for pair in pairs:
        if pair.error:
            decided.append(ManifestRow(*pair.key, "failed", error=pair.error, settings=pair.settings,
                                       fingerprint=pair.fingerprint))
            continue
        last = latest.get(pair.key)
        exists = _stripped(pair.output_uri, storage_options) in existing
        reason = "overwrite" if overwrite else _redo_reason(pair, last, exists)
        if reason:
            todo.append(replace(pair, reason=reason))
        else:
            decided.append(ManifestRow(*pair.key, "skipped", width=last["width"], height=last["height"],
                                       tiles=last["tiles"], mode=last["mode"], worker=last["worker"],
                                       model_id=last["model_id"], settings=pair.settings,
                                       fingerprint=pair.fingerprint))
    return todo, decided


class ManifestWriter:
    """Appends rows to ``<output_uri>/_manifest/`` as ``part-<run id>-<n>.parquet`` files.

    Each :meth:`write` is one small Parquet file written atomically, so every row reported
    is on storage before the job moves on, and concurrent readers never see half a file.

    Args:
        output_uri: the job's output prefix.
        run_id: this run's id (from :func:`new_run_id`), stamped on every row.
        storage_options: passed to fsspec.
        pairs: the pairs this run plans; a row of one of them that does not say its
            ``settings``, ``fingerprint`` or ``reason`` gets the pair's, so whichever part of
            the job makes a row, the manifest records what made the picture and why it ran.
    """

    def __init__(
        self,
        output_uri: str,
        *,
        run_id: str,
        storage_options: dict[str, Any] | None = None,
        pairs: Iterable[Pair] = (),
    ) -> None:
        self.folder = join_uri(output_uri, MANIFEST_DIR)
        self.run_id = run_id
        self.storage_options = storage_options
        self._pairs = {pair.key: pair for pair in pairs}
        self._count = 0

    def write(self, rows: Iterable[ManifestRow]) -> str | None:
        """Write ``rows`` as one Parquet file; returns its URI (``None`` when there were none)."""
        now = dt.datetime.now(dt.timezone.utc)
        records = []
        for row in rows:
            row.run_id = self.run_id
            row.finished_at = row.finished_at or now
            pair = self._pairs.get((row.content_uri, row.style_uri, row.output_uri))
            if pair is not None:
                row.settings = row.settings or pair.settings
                row.fingerprint = row.fingerprint or pair.fingerprint
                row.reason = row.reason or pair.reason
            records.append({f.name: getattr(row, f.name) for f in fields(row)})
        if not records:
            return None
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), buf)
        uri = join_uri(self.folder, f"part-{self.run_id}-{self._count:06d}.parquet")
        write_bytes(uri, buf.getvalue(), self.storage_options)
        self._count += 1
        return uri


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


def summarize(rows: Iterable[ManifestRow], seconds: float) -> Summary:
    """Count ``rows`` by status; megapixels are those stylized in this run (``ok`` rows)."""
    counts = dict.fromkeys(STATUSES, 0)
    megapixels = 0.0
    for row in rows:
        counts[row.status] += 1
        if row.status == "ok":
            megapixels += row.megapixels
    return Summary(counts["ok"], counts["skipped"], counts["failed"], megapixels, seconds)
