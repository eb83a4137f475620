"""What made a picture: the settings a batch output depends on, and their fingerprint.

A rerun of the batch job may skip a pair only when the picture already written is the one
this run would write. Every manifest row therefore records the settings that change pixels
(as readable JSON) and a short digest of them; a rerun compares them and redoes the pair,
saying which setting changed, when they differ. Settings that change only speed or
scheduling (tile size, workers, in-flight images) are left out, so changing them never redoes
work. Nothing here knows about Ray.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from fsspec.core import url_to_fs

from models import WeightSet
from models.checkpoint import fetch, sha256_file
from pipeline.imaging.imageio import output_format
from pipeline.version import CODE_VERSION_ENV, code_version

__all__ = [
    "CODE_VERSION_ENV",
    "SettingsBook",
    "changes",
    "code_version",
    "fingerprint",
    "pair_settings",
    "style_digest",
    "weights_digests",
]

# Formats whose bytes depend on --quality; for the others the flag changes nothing.
_LOSSY = ("JPEG", "WEBP")
# Digests are shown this long in a reason: enough to tell two apart at a glance.
_SHOWN = 12


def weights_digests(weights: WeightSet, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """``{"1SE": sha256, ...}`` for every file of ``weights``, each fetched and verified.

    Pinned files are checked against their pin (the local cache serves repeated calls); an
    unpinned file is hashed as fetched.

    Raises:
        WeightsError: a file is missing, unreachable or differs from its pin.
    """
    digests = {}
    for name, spec in sorted(weights.files.items()):
        path = fetch(spec.uri, spec.sha256, storage_options)
        digests[name] = spec.sha256 or sha256_file(path)
    return digests


def style_digest(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """What identifies a style file's content: ``etag:<ETag>`` where the filesystem keeps one
    (S3, GCS, HTTP), else ``sha256:<digest of the bytes>``.

    Raises:
        FileNotFoundError: ``uri`` does not exist.
    """
    fs, path = url_to_fs(uri, **(storage_options or {}))
    info = fs.info(path)
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return "etag:" + str(etag).strip('"')
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def pair_settings(
    *,
    model_id: str,
    weights: Mapping[str, str],
    alpha: float,
    style_size: int | None,
    mode: str,
    quality: int,
    style: str,
    output_uri: str,
    code: str,
    precision: str,
    controls: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings one output depends on, as a JSON-ready dict (the manifest's ``settings``).

    Args:
        model_id, weights: the weight set's id and per-file sha256 (:func:`weights_digests`).
        alpha, style_size, mode: the stylization flags.
        quality: ``--quality``; kept only for lossy output formats.
        style: the style's content digest (:func:`style_digest`).
        output_uri: the pair's output; its extension gives the format.
        code: :func:`code_version`.
        precision: ``--precision`` (:mod:`pipeline.engine.precision`): the reduced modes change pixels.
        controls: the creative controls (:func:`pipeline.engine.controls.control_settings`); absent
            without any, so outputs made without controls keep their fingerprint.
    """
    fmt = output_format(output_uri)
    settings = {
        "model_id": model_id,
        "weights": dict(sorted(weights.items())),
        "alpha": float(alpha),
        "style_size": style_size,
        "mode": mode,
        "format": fmt,
        "quality": quality if fmt in _LOSSY else None,
        "style": style,
        "code": code,
        "precision": precision,
    }
    if controls:
        settings["controls"] = dict(sorted(controls.items()))
    return settings


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A 16-hex-digit digest of ``settings`` (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 2 * _SHOWN else text[: 2 * _SHOWN] + "..."


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Each setting that differs, as ``"alpha 1.0 -> 0.5"``; weight files by name
    (``"weights 3SD a69bea9a3961 -> 1c0ffee12345"``)."""
    found = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            names = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
            found += [f"{key} {n} {str(before.get(n))[:_SHOWN]} -> {str(after.get(n))[:_SHOWN]}" for n in names]
        else:
            found.append(f"{key} {_shown(before)} -> {_shown(after)}")
    return found


class SettingsBook:
    """The distinct settings of a run's pairs, each kept once and named by a small id.

    The pairs of a bucket share a handful of settings (one per style and output format; one
    per content image only with ``--mask``), so a planned pair carries the id, an ``int32``
    column, instead of its own copy of kilobyte-long JSON.

    Attributes:
        settings: canonical JSON (:func:`json.dumps` with sorted keys) per id.
        fingerprints: :func:`fingerprint` per id.
    """

    def __init__(self) -> None:
        self.settings: list[str] = []
        self.fingerprints: list[str] = []
        self._ids: dict[str, int] = {}

    def add(self, settings: Mapping[str, Any]) -> int:
        """The id of ``settings`` (a new one the first time they are seen)."""
        text = json.dumps(settings, sort_keys=True)
        found = self._ids.get(text)
        if found is None:
            found = self._ids[text] = len(self.settings)
            self.settings.append(text)
            self.fingerprints.append(fingerprint(settings))
        return found

    def column(self, ids: pa.Array, *, what: str = "fingerprints") -> pa.Array:
        """The ``fingerprints`` (or ``settings``) of each id in ``ids``, as a dictionary-encoded column."""
        values: Sequence[str] = self.fingerprints if what == "fingerprints" else self.settings
        return pa.DictionaryArray.from_arrays(ids.cast(pa.int32()), pa.array(values, pa.string()))
