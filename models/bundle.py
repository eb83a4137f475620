"""The bundle format, read and written here alone (the publisher writes, ``--weights`` reads).

A bundle root ``<publish>`` holds one folder per run and a pointer::

    <publish>/<run id>/{k}SE.pth, {k}SD.pth   plain state dicts, one encoder/decoder per level
    <publish>/<run id>/card.json              widths, files (name -> sha256), metrics, provenance
    <publish>/latest                          one line: <run id>#sha256=<sha256 of that card.json>

``latest`` is a file rather than a link because object stores have none. The weights are
written before the card, so a folder without its card is an unfinished bundle.

The chain of trust runs from outside the bundle inwards: the pointer pins the card by its
digest, and the card pins every weights file by its digest, so changing a file or the card
of a promoted bundle is detected at load. ``<bundle>#sha256=<card digest>`` (the form pip uses
for hashes in URLs) pins any bundle reference the same way; a bundle named without a pin is
pinned when it is first read, so every process of one job loads the same card. A pointer may
name only a run folder beside it (one plain name, never a path or a URI), and a published
bundle is never rewritten, so a pin stays valid.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import uuid
from collections.abc import Mapping
from typing import Any

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from models.checkpoint import WeightsError
from models.family import LEVELS, FamilySpec

__all__ = [
    "CARD_FILE",
    "LATEST_FILE",
    "PIN",
    "bundle_uri",
    "card_family",
    "card_levels",
    "check_run_id",
    "is_bundle",
    "latest_uri",
    "pin_uri",
    "read_card",
    "read_latest",
    "resolve_pointer",
    "split_pin",
    "weight_name",
    "weight_uri",
    "write_bundle",
    "write_latest",
]

CARD_FILE = "card.json"
LATEST_FILE = "latest"
PIN = "#sha256="

# A run id is one plain path segment: it cannot climb out of its publish prefix ("..", "/"),
# name another bucket or scheme ("s3://", ":"), or hide characters a log would render.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PINNED = re.compile(r"(?P<uri>.*)#sha256=(?P<digest>[0-9a-f]{64})", re.DOTALL)
_POINTER = re.compile(r"(?P<run>[^#\s]+)#sha256=(?P<digest>[0-9a-f]{64})")
_WEIGHT_NAME = re.compile(rf"[{LEVELS[0]}-{LEVELS[-1]}](SE|SD)")
# A pointer is one short line and a card a few KiB: anything far larger is not one.
_MAX_POINTER_BYTES = 1024
_MAX_CARD_BYTES = 1 << 20


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is one plain folder name, else raise.

    Raises:
        ValueError: ``run_id`` is empty, longer than 128 characters, starts with anything but
            a letter or digit, holds anything but letters, digits, ``.``, ``_`` and ``-``
            (so no ``/``, ``..`` or URI), or is the pointer's own name.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or run_id == LATEST_FILE:
        raise ValueError(
            f"run id {_shown(run_id)} is not a plain folder name: use up to 128 letters, digits, '.', '_' "
            f"or '-', starting with a letter or digit, and not {LATEST_FILE!r}"
        )
    return run_id


def _shown(value: object) -> str:
    """``value`` quoted with control characters escaped, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def bundle_uri(publish_uri: str, run_id: str) -> str:
    """``<publish>/<run id>``: the folder of one run's bundle (``run_id`` checked by :func:`check_run_id`)."""
    return f"{publish_uri.rstrip('/')}/{check_run_id(run_id)}"


def pin_uri(bundle: str, card_sha256: str) -> str:
    """``<bundle>#sha256=<card digest>``: a bundle reference that loads only that card."""
    return f"{bundle.rstrip('/')}{PIN}{card_sha256}"


def split_pin(uri: str) -> tuple[str, str | None]:
    """``(uri without its pin, card sha256)``, or ``(uri, None)`` when ``uri`` carries no pin."""
    found = _PINNED.fullmatch(uri)
    return (found["uri"], found["digest"]) if found else (uri, None)


def latest_uri(publish_uri: str) -> str:
    """``<publish>/latest``: the pointer naming the current run id."""
    return f"{publish_uri.rstrip('/')}/{LATEST_FILE}"


def weight_name(level: int, kind: str) -> str:
    """The name of one weights file without ``.pth``: ``weight_name(2, "SE") == "2SE"``."""
    return f"{level}{kind}"


def weight_uri(bundle: str, name: str) -> str:
    """The URI of weights file ``name`` (``"2SE"``) inside the bundle folder ``bundle``."""
    return f"{bundle.rstrip('/')}/{name}.pth"


def card_levels(card: Mapping[str, Any]) -> tuple[int, ...]:
    """The levels a bundle can stylize with: those whose encoder and decoder are both in its card."""
    files = card.get("files", {})
    return tuple(k for k in LEVELS if weight_name(k, "SE") in files and weight_name(k, "SD") in files)


def card_family(card: Mapping[str, Any]) -> FamilySpec:
    """The channel widths that build the bundle's encoders and decoders."""
    return FamilySpec(
        widths=tuple(card["widths"]),
        level1_width=card["level1_width"],
        embed_widths=tuple(card["embed_widths"]) if card.get("embed_widths") else None,
        level1_embed_width=card.get("level1_embed_width"),
    )


def _put(uri: str, data: bytes, storage_options: dict[str, Any] | None) -> None:
    """Write ``data`` so a reader sees the old file or the new one, never half of one: a temp
    file renamed over the target locally, one PUT on an object store."""
    fs, path = url_to_fs(uri, **(storage_options or {}))
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}")
    try:
        fs.pipe_file(tmp, data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bundle(
    publish_uri: str,
    run_id: str,
    states: Mapping[str, Mapping[str, torch.Tensor]],
    card: Mapping[str, Any],
    *,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write ``<publish>/<run id>/`` with one ``.pth`` per state dict, then ``card.json``.

    A published bundle is never rewritten (a pointer or a manifest may pin its card): when
    the folder already has a card, the call succeeds only if that card lists the same files
    with the same digests, and writes nothing.

    Args:
        publish_uri: bundle root (local folder or fsspec URI).
        run_id: the bundle's folder name (see :func:`check_run_id`).
        states: ``"{k}SE"``/``"{k}SD"`` -> state dict (plain tensors, names as the modules give them).
        card: the card's other keys (at least ``widths`` and ``level1_width``); ``run_id``,
            ``levels`` and ``files`` (name -> sha256) are filled in here.

    Returns:
        The bundle's URI.

    Raises:
        ValueError: ``run_id`` is not a plain folder name, or a state's name is not ``{k}SE``/``{k}SD``.
        FileExistsError: the bundle exists with other weights.
    """
    bundle = bundle_uri(publish_uri, run_id)
    blobs = {}
    for name, state in sorted(states.items()):
        if not _WEIGHT_NAME.fullmatch(name):
            raise ValueError(f"weights name {_shown(name)} is not {{k}}SE or {{k}}SD")
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
        blobs[name] = buf.getvalue()
    files = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
    if is_bundle(bundle, storage_options):
        if read_card(bundle, storage_options)[0]["files"] == files:
            return bundle
        raise FileExistsError(f"bundle {bundle} already holds other weights; a published bundle is never "
                              "rewritten: publish under another run id")
    for name, blob in blobs.items():
        _put(weight_uri(bundle, name), blob, storage_options)
    full = {**card, "run_id": run_id, "files": files}
    full["levels"] = list(card_levels(full))
    _put(f"{bundle}/{CARD_FILE}", json.dumps(full, indent=2, sort_keys=True).encode(), storage_options)
    return bundle


def _read_at_most(uri: str, limit: int, what: str, storage_options: dict[str, Any] | None) -> bytes:
    """The bytes of ``uri``, refusing a file longer than ``limit``: it cannot be the ``what`` it claims to be."""
    fs, path = url_to_fs(uri, **(storage_options or {}))
    with fs.open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise WeightsError(f"{uri} is not a {what}: it holds over {limit} bytes")
    return data


def _check_card(card: Any, uri: str) -> dict[str, Any]:
    """``card`` if it has the shape :func:`write_bundle` writes (file names and digests checked)."""
    files = card.get("files") if isinstance(card, dict) else None
    if not isinstance(files, dict) or not isinstance(card.get("run_id"), str):
        raise WeightsError(f"{uri} is not a bundle card: it needs 'run_id' and 'files' (name -> sha256)")
    for name, digest in files.items():
        if not _WEIGHT_NAME.fullmatch(name) or not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise WeightsError(f"{uri} lists {_shown(name)}: {_shown(digest)}; expected '{{k}}SE'/'{{k}}SD' "
                               "mapped to a hex sha256")
    return card


def read_card(
    bundle: str, storage_options: dict[str, Any] | None = None, *, sha256: str | None = None
) -> tuple[dict[str, Any], str]:
    """The ``card.json`` of the bundle folder ``bundle``, and the sha256 of its bytes.

    Args:
        bundle: the bundle folder (no pin: see :func:`split_pin`).
        sha256: the digest the card must have (from a pointer or a pinned reference), or
            ``None`` to take the card as found.

    Raises:
        FileNotFoundError: the folder has no card (not a bundle, or an unfinished one).
        WeightsError: the card's digest differs from ``sha256`` (both digests named), or it is
            not a card (too large, not JSON, or files that are not ``{k}SE``/``{k}SD`` -> sha256).
    """
    uri = f"{bundle.rstrip('/')}/{CARD_FILE}"
    data = _read_at_most(uri, _MAX_CARD_BYTES, "bundle card", storage_options)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise WeightsError(f"bundle card {uri} is not the one pinned: expected sha256 {sha256}, got {digest}")
    try:
        card = json.loads(data)
    except ValueError as e:
        raise WeightsError(f"{uri} is not JSON: {e}") from e
    return _check_card(card, uri), digest


def is_bundle(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``uri`` is a bundle folder (it holds a card)."""
    fs, path = url_to_fs(f"{uri.rstrip('/')}/{CARD_FILE}", **(storage_options or {}))
    return fs.exists(path)


def _describe(data: bytes) -> str:
    """What a pointer file holds, for an error: a short line quoted, else only its size (never a page of HTML)."""
    text = data.decode("utf-8", "replace").strip()
    if len(text) <= 80 and text.isprintable() and "<" not in text:
        return repr(text)
    return f"{len(data)} bytes that are not one short line"


def _read_pointer(pointer_uri: str, storage_options: dict[str, Any] | None) -> tuple[str, str]:
    """``(run id, card sha256)`` from the pointer file ``pointer_uri``, confined to its folder."""
    data = _read_at_most(pointer_uri, _MAX_POINTER_BYTES, "bundle pointer", storage_options)
    found = _POINTER.fullmatch(data.decode("utf-8", "replace").strip())
    publish = pointer_uri.rstrip("/").rsplit("/", 1)[0]
    if found is None:
        raise WeightsError(f"{pointer_uri} is not a bundle pointer: expected one line 'RUN_ID#sha256=CARD_SHA256', "
                           f"found {_describe(data)}")
    if not _RUN_ID.fullmatch(found["run"]) or found["run"] == LATEST_FILE:
        raise WeightsError(f"{pointer_uri} names {_shown(found['run'])}, not a run folder inside {publish}: "
                           "a pointer may only name a run id beside it")
    return found["run"], found["digest"]


def read_latest(publish_uri: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """The run id ``<publish>/latest`` names, or ``None`` when nothing was promoted yet.

    Raises:
        WeightsError: the pointer is malformed or names something outside ``publish_uri``.
    """
    uri = latest_uri(publish_uri)
    fs, path = url_to_fs(uri, **(storage_options or {}))
    return _read_pointer(uri, storage_options)[0] if fs.exists(path) else None


def write_latest(publish_uri: str, run_id: str, *, storage_options: dict[str, Any] | None = None) -> None:
    """Point ``<publish>/latest`` at ``run_id``, pinning its card (atomically: see :func:`_put`).

    Raises:
        ValueError: ``run_id`` is not a plain folder name.
        FileNotFoundError: ``<publish>/<run id>`` has no card (only a published bundle can be promoted).
    """
    _, digest = read_card(bundle_uri(publish_uri, run_id), storage_options)
    _put(latest_uri(publish_uri), f"{run_id}{PIN}{digest}\n".encode(), storage_options)


def resolve_pointer(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """``uri`` itself, or, when it names a ``latest`` pointer, the pinned bundle it names.

    A pointer is told by its name (``.../latest``), never by probing: an HTTP folder answers
    a GET with a page, which must not be read as a pointer.

    Returns:
        ``<publish>/<run id>#sha256=<card digest>`` for a pointer, else ``uri`` unchanged.

    Raises:
        WeightsError: the pointer is malformed or names something outside its folder.
    """
    if uri.rstrip("/").rsplit("/", 1)[-1] != LATEST_FILE:
        return uri
    pointer = uri.rstrip("/")
    run_id, digest = _read_pointer(pointer, storage_options)
    return pin_uri(bundle_uri(pointer.rsplit("/", 1)[0], run_id), digest)
