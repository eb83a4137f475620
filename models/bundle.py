"""The bundle format, read and written here alone (the publisher writes, ``--weights`` reads).

A bundle root ``<publish>`` holds one folder per run and a pointer::

    <publish>/<run id>/{k}SE.pth, {k}SD.pth   plain state dicts, one encoder/decoder per level
    <publish>/<run id>/card.json              widths, files (name -> sha256), metrics, provenance
    <publish>/latest                          a small text file naming the current run id

``latest`` is a file rather than a link because object stores have none. The weights are
written before the card, so a folder without its card is an unfinished bundle, and the card's
digests are what :func:`models.resolve_weights` checks each file against.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import uuid
from collections.abc import Mapping
from typing import Any

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from models.family import LEVELS, FamilySpec

__all__ = [
    "CARD_FILE",
    "LATEST_FILE",
    "bundle_uri",
    "card_family",
    "card_levels",
    "is_bundle",
    "latest_uri",
    "read_card",
    "read_latest",
    "resolve_pointer",
    "weight_name",
    "weight_uri",
    "write_bundle",
    "write_latest",
]

CARD_FILE = "card.json"
LATEST_FILE = "latest"


def bundle_uri(publish_uri: str, run_id: str) -> str:
    """``<publish>/<run id>``: the folder of one run's bundle."""
    return f"{publish_uri.rstrip('/')}/{run_id}"


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

    Args:
        publish_uri: bundle root (local folder or fsspec URI).
        run_id: the bundle's folder name.
        states: ``"{k}SE"``/``"{k}SD"`` -> state dict (plain tensors, names as the modules give them).
        card: the card's other keys (at least ``widths`` and ``level1_width``); ``run_id``,
            ``levels`` and ``files`` (name -> sha256) are filled in here.

    Returns:
        The bundle's URI.
    """
    bundle = bundle_uri(publish_uri, run_id)
    files = {}
    for name, state in sorted(states.items()):
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
        _put(weight_uri(bundle, name), buf.getvalue(), storage_options)
        files[name] = hashlib.sha256(buf.getvalue()).hexdigest()
    full = {**card, "run_id": run_id, "files": files}
    full["levels"] = list(card_levels(full))
    _put(f"{bundle}/{CARD_FILE}", json.dumps(full, indent=2, sort_keys=True).encode(), storage_options)
    return bundle


def read_card(bundle: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``card.json`` of the bundle folder ``bundle``.

    Raises:
        FileNotFoundError: the folder has no card (not a bundle, or an unfinished one).
    """
    fs, path = url_to_fs(f"{bundle.rstrip('/')}/{CARD_FILE}", **(storage_options or {}))
    with fs.open(path, "r") as f:
        return json.load(f)


def is_bundle(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``uri`` is a bundle folder (it holds a card)."""
    fs, path = url_to_fs(f"{uri.rstrip('/')}/{CARD_FILE}", **(storage_options or {}))
    return fs.exists(path)


def _read_run_id(fs: Any, path: str) -> str:
    with fs.open(path, "r") as f:
        return f.read().strip()


def read_latest(publish_uri: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """The run id ``<publish>/latest`` names, or ``None`` when nothing was promoted yet."""
    fs, path = url_to_fs(latest_uri(publish_uri), **(storage_options or {}))
    return _read_run_id(fs, path) if fs.exists(path) else None


def write_latest(publish_uri: str, run_id: str, *, storage_options: dict[str, Any] | None = None) -> None:
    """Point ``<publish>/latest`` at ``run_id`` (atomically: see :func:`_put`)."""
    _put(latest_uri(publish_uri), run_id.encode(), storage_options)


def resolve_pointer(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """``uri`` itself, or, when it is a ``latest`` pointer file, the bundle folder it names."""
    fs, path = url_to_fs(uri, **(storage_options or {}))
    if not fs.isfile(path):
        return uri
    return bundle_uri(uri.rstrip("/").rsplit("/", 1)[0], _read_run_id(fs, path))
