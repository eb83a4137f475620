"""Fetching checkpoint files from any fsspec URI, verified by sha256 and cached by digest.

A checkpoint is a torch file (loaded with ``weights_only=True``) or a safetensors file; the
format is told by the bytes, so a cache entry needs no suffix of its own.

Local paths, ``file://``, ``http(s)://`` and ``s3://`` all go through
:func:`fsspec.core.url_to_fs`, with ``storage_options`` passed on untouched. A file whose
digest is pinned is looked up in the cache first, so a pinned set downloaded once works
offline afterwards.

Trust is checked where the bytes are used, not only where they arrive: a cache entry is
hashed again each time it is looked up (one that no longer matches its name is fetched
again, never used), and :func:`load_state_dict` hashes the very bytes it deserialises, so a
file changed between the check and the load is refused too.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors.torch import load as load_safetensors

__all__ = [
    "WEIGHTS_ENV",
    "WeightsError",
    "cache_dir",
    "download",
    "fetch",
    "load_state_dict",
    "one_line",
    "sha256_file",
]

log = logging.getLogger(__name__)

WEIGHTS_ENV = "ULTRASTYLE_WEIGHTS"
CACHE_ENV = "ULTRASTYLE_CACHE"
_HINT = f"pass --weights DIR or set {WEIGHTS_ENV}=DIR to use a local copy"


class WeightsError(RuntimeError):
    """A checkpoint could not be found, fetched, verified or read."""


def cache_dir() -> Path:
    """Folder of the digest-keyed cache (``$ULTRASTYLE_CACHE`` or ``~/.cache/ultrastyle``)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ultrastyle"
    return Path(root) / "weights"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line (the first line of a multi-line message), for error texts."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def fetch(uri: str, sha256: str | None = None, storage_options: dict[str, Any] | None = None) -> Path:
    """Return a local path holding the bytes of ``uri``, verified against ``sha256``.

    Args:
        uri: any fsspec URI or local path.
        sha256: expected hex digest, or ``None`` to skip verification (unpinned local files).
        storage_options: passed to the filesystem of ``uri``.

    Returns:
        The local file: ``uri`` itself for local files, else the cache entry
        ``<cache>/<sha256>.pth`` (remote files without a digest are cached by their own).
        A cache entry is hashed again before it is returned; one whose bytes no longer match
        its name is replaced by a fresh download (with a warning), never returned.

    Raises:
        WeightsError: the file is missing or unreachable (the message says how to point at a
            local copy), or its digest differs from ``sha256`` (the message names the URI and
            both digests).
    """
    if _is_local(uri):
        path = Path(uri.removeprefix("file://"))
        if not path.is_file():
            raise WeightsError(f"weights file not found: {uri} ({_HINT})")
        _verify(path, uri, sha256)
        return path
    if sha256:
        cached = cache_dir() / f"{sha256}.pth"
        if cached.is_file():
            actual = sha256_file(cached)
            if actual == sha256:
                return cached
            # download() replaces the entry atomically: a reader never sees it missing.
            log.warning("weights cache entry %s holds sha256 %s, not the %s its name pins: fetching %s again",
                        cached, actual, sha256, uri)
    return download(uri, sha256, storage_options)


def _verify(path: Path, uri: str, sha256: str | None) -> None:
    if sha256 is None:
        return
    actual = sha256_file(path)
    if actual != sha256:
        raise WeightsError(f"sha256 mismatch for {uri}: expected {sha256}, got {actual}")


def download(uri: str, sha256: str | None = None, storage_options: dict[str, Any] | None = None) -> Path:
    """Copy ``uri`` (remote or local) into the digest-keyed cache and return the cache entry.

    Raises:
        WeightsError: unreachable source or digest mismatch (nothing is left in the cache).
    """
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into the weights cache %s", uri, folder)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, fsspec.open(uri, "rb", **(storage_options or {})) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                out.write(block)
        actual = sha256_file(tmp)
        if sha256 is not None and actual != sha256:
            raise WeightsError(f"sha256 mismatch for {uri}: expected {sha256}, got {actual}")
        final = folder / f"{actual}.pth"
        os.replace(tmp, final)
        return final
    except WeightsError:
        raise
    except Exception as e:  # fsspec raises many kinds: FileNotFoundError, ClientError, OSError
        raise WeightsError(f"cannot fetch weights from {uri}: {one_line(e)} ({_HINT})") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _is_safetensors(data: bytes) -> bool:
    """A safetensors file starts with its header's length (8 bytes) and then its JSON header."""
    return len(data) >= 9 and data[8:9] == b"{"


def load_state_dict(path: str | Path, *, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors on the CPU, unwrapping a ``{"model": ...}`` envelope.

    Torch files load with ``weights_only=True`` and safetensors files hold tensors only: a
    checkpoint is data, never code to run. The file is read once; with ``sha256`` those bytes
    are hashed before they are deserialised, so what loads is what was verified.

    Args:
        path: a local checkpoint file (torch or safetensors, told by its bytes).
        sha256: expected hex digest of the file, or ``None`` not to check.

    Raises:
        WeightsError: the digest differs from ``sha256``, or the file is not a readable
            checkpoint of tensors.
    """
    data = Path(path).read_bytes()
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise WeightsError(f"sha256 mismatch for {path}: expected {sha256}, got {actual}")
    try:
        if _is_safetensors(data):
            return dict(sorted(load_safetensors(data).items()))  # the file's order, as safe_open lists it
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"cannot read checkpoint {path}: {one_line(e)}") from e
    if isinstance(obj, dict) and "model" in obj:
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise WeightsError(f"checkpoint {path} holds {type(obj).__name__}, expected a state dict")
    return obj
