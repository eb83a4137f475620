"""Listing a prefix in bounded memory: batches of relative keys, in byte order.

A bucket of ten million photos cannot be listed into one Python list on the driver (a
``set`` of ten million paths is gigabytes). :func:`iter_keys` yields the keys below a prefix
a batch at a time, so whoever consumes them (planning, the output check) keeps only a batch:

- on S3 it pages through ``ListObjectsV2`` (1,000 keys a request) without a delimiter, keeping
  each key exactly as stored: a folder marker (a zero-byte key ending in ``/``) is not a file
  and is left out, and a key with an empty segment (``a//b.jpg``) is yielded as such, for the
  planner to refuse, rather than normalised into another key;
- on a local disk it walks the tree with ``os.scandir``, each folder's entries sorted with a
  ``/`` after folder names, which gives the same order as sorting the full paths (S3's order);
- any other fsspec filesystem is listed with ``find`` (the whole listing held once) and
  yielded in batches.

Hidden files (including the job's own ``.tmp-*`` partial writes), ``_manifest`` folders and
anything under an excluded prefix are left out. Nothing here knows about Ray.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fsspec.asyn import sync
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

__all__ = ["LIST_BATCH", "MANIFEST_DIR", "is_listed", "iter_keys"]

MANIFEST_DIR = "_manifest"
# Keys per yielded batch: a few MB of strings, and enough rows for Arrow's kernels to pay off.
LIST_BATCH = 65_536


def is_listed(relative: str) -> bool:
    """Whether a key below the listed prefix is a candidate file: not hidden, not in a manifest."""
    parts = relative.split("/")
    return not parts[-1].startswith(".") and MANIFEST_DIR not in parts[:-1]


def _root(uri: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    fs, root = url_to_fs(uri, **(storage_options or {}))
    return fs, root.rstrip("/")


def _excluded(root: str, exclude: Iterable[str], storage_options: dict[str, Any] | None) -> tuple[str, ...]:
    """The excluded prefixes that lie below ``root``, relative to it and ending in ``/``."""
    found = []
    for uri in exclude:
        path = _root(uri, storage_options)[1]
        if path.startswith(root + "/"):
            found.append(path[len(root) + 1 :] + "/")
    return tuple(found)


def _local_keys(root: str, excluded: tuple[str, ...]) -> Iterator[str]:
    """Listed files below a local ``root``: hidden files are skipped here, and neither ``_manifest``
    nor an excluded folder is entered."""
    if not os.path.isdir(root):
        raise FileNotFoundError(root)
    skipped = {folder[:-1] for folder in excluded}
    stack: list[Iterator[tuple[str, bool]]] = [iter(_local_entries(root, ""))]
    while stack:
        for relative, is_dir in stack[-1]:
            if is_dir:
                if relative not in skipped and not relative.endswith("/" + MANIFEST_DIR) and relative != MANIFEST_DIR:
                    stack.append(iter(_local_entries(root, relative)))
                    break
            else:
                yield relative
        else:
            stack.pop()


def _local_entries(root: str, folder: str) -> list[tuple[str, bool]]:
    """``(relative path, is folder)`` of one folder's entries, hidden files left out, in full-path byte order
    (a folder sorts as its name followed by ``/``)."""
    prefix = folder + "/" if folder else ""
    with os.scandir(os.path.join(root, folder) if folder else root) as entries:
        found = [(e.name + "/", True) if e.is_dir() else (e.name, False) for e in entries]
    found.sort()
    return [(prefix + name[:-1], True) if is_dir else (prefix + name, False) for name, is_dir in found
            if is_dir or not name.startswith(".")]


async def _next_page(pages: Any, size: int) -> list[dict[str, Any]]:
    """Up to ``size`` entries from s3fs' listing generator (empty when it is done)."""
    found: list[dict[str, Any]] = []
    while len(found) < size:
        try:
            found.append(await pages.__anext__())
        except StopAsyncIteration:
            break
    return found


def _s3_keys(fs: Any, root: str, batch: int) -> Iterator[str]:
    bucket, key, _ = fs.split_path(root)
    prefix = key + "/" if key else ""
    pages = fs._iterdir(bucket, delimiter="", prefix=prefix)
    while entries := sync(fs.loop, _next_page, pages, batch):
        for entry in entries:
            relative = entry["name"][len(bucket) + 1 + len(prefix) :]
            if relative.endswith("/") and not entry.get("size"):
                continue  # a folder marker, not a file
            yield relative


def _other_keys(fs: Any, root: str) -> Iterator[str]:
    for path in sorted(fs.find(root)):
        if path.startswith(root + "/"):
            yield path[len(root) + 1 :]


def _listed_keys(fs: Any, root: str, excluded: tuple[str, ...], batch: int) -> Iterator[str]:
    """The candidate files' keys: the local walk leaves the others out as it goes, the other listings here."""
    if isinstance(fs, LocalFileSystem):
        return _local_keys(root, excluded)
    protocols = fs.protocol if isinstance(fs.protocol, (list, tuple)) else [fs.protocol]
    keys = _s3_keys(fs, root, batch) if "s3" in protocols and not getattr(fs, "version_aware", False) \
        else _other_keys(fs, root)
    return (key for key in keys if is_listed(key) and not key.startswith(excluded))


def iter_keys(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    exclude: Sequence[str] = (),
    batch: int = LIST_BATCH,
) -> Iterator[list[str]]:
    """Every file below ``uri``, as keys relative to it, sorted, ``batch`` at a time.

    Args:
        uri: a folder or prefix (local path or any fsspec URI).
        storage_options: passed to fsspec.
        exclude: prefixes (URIs of the same filesystem) whose files are left out, e.g. the
            job's output when it lies inside its input.
        batch: keys per yielded list.

    Raises:
        FileNotFoundError: ``uri`` does not exist (missing bucket or folder).
        Exception: whatever the filesystem raised (unreachable endpoint, access denied).
    """
    fs, root = _root(uri, storage_options)
    keys = _listed_keys(fs, root, _excluded(root, exclude, storage_options), batch)
    while found := list(itertools.islice(keys, batch)):
        yield found
