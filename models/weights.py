"""Weights as data: pinned official checkpoints, distilled bundles, and the builders that load them.

``--weights`` (or ``$ULTRASTYLE_WEIGHTS``) names a location; :func:`resolve_weights` turns it
into a :class:`WeightSet`, whose files are fetched hash-checked by :mod:`models.checkpoint`:

- nothing: the official CD 16x files embedded in this package as safetensors (``models/cd16x``,
  MIT licence, see ``LICENSE`` there), pinned by sha256: no download;
- the authors' repository itself (:data:`CD16xWeights.OFFICIAL`, downloaded once into the cache);
- a directory or prefix holding ``{k}SE.pth``/``{k}SD.pth`` (a copy of the upstream files) or
  ``{k}SE.safetensors``/``{k}SD.safetensors`` (a copy of the embedded ones): checked against
  the same pins;
- a bundle written by ``distill`` (``card.json`` beside the files, digests from the card),
  ``<publish>/latest`` (a small file naming the current run id and pinning its card), or a
  bundle pinned by hand, ``<bundle>#sha256=<card digest>`` (see :mod:`models.bundle`).

A bundle's :attr:`WeightSet.location` is always pinned to the card that was read, so the
other processes of a job (Ray actors) load the same weights or fail, never other ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs

from models import bundle
from models.checkpoint import WEIGHTS_ENV, WeightsError, fetch, load_state_dict, one_line
from models.family import CD16X, LEVELS, Decoder, Encoder, FamilySpec

__all__ = [
    "EMBEDDED_DIR",
    "OFFICIAL_BASE_URL",
    "OFFICIAL_FILES",
    "CD16xWeights",
    "WeightSet",
    "WeightSpec",
    "official_weight_set",
    "resolve_weights",
    "small_decoder",
    "small_encoder",
]

OFFICIAL_BASE_URL = "https://github.com/MingSun-Tse/Collaborative-Distillation/raw/master/"

# file name -> (path in the authors' repository, sha256). The {k}SE/{k}SD names upstream are
# symbolic links, so the download names the real files.
_SE = "trained_models/wct_se_16x_new/"
_SD = "trained_models/wct_se_16x_new_sd/"
OFFICIAL_FILES: dict[str, tuple[str, str]] = {
    "1SE": (_SE + "20191110-133713_E20.pth", "f74755a65164a88e0db8cbb7d99d7078b9fa505df0953fac5123bfc7c84e0ea4"),
    "2SE": (_SE + "20191110-132713_E20.pth", "cb654af6bae77176f8c7721c965483e865b987f2f1612dda1ba0d0b5c3819a61"),
    "3SE": (_SE + "20191110-132705_E20.pth", "269cdd0e2634e3e1e5d3005b9e7eca0f4cc8077653fee1ac8c0cf1cbe9ab8758"),
    "4SE": (_SE + "20191110-132643_E20.pth", "d2f059cbcd6669556a43aadef58d20c8b280462c18b60a9e7424a14dd271cd6b"),
    "5SE": (_SE + "20191109-211322_E20.pth", "9417c34d0d8d621bc6af78be745f1b8d30f5f210efa01e50655c60eb3770816b"),
    "1SD": (_SD + "20191111-091942_E20.pth", "05f26ad40044c019da0cf731372d5bd2ee4b477825c7f45508da70b1cd5a95fd"),
    "2SD": (_SD + "20191111-091932_E20.pth", "94dd26f0e69857f79bf284a43a3708aa05c09c2593427c7f6e400ad12ce314e6"),
    "3SD": (_SD + "20191111-091929_E20.pth", "005faba27859435762a8a9386116c00629cd8835a01617d0a71defa577c42174"),
    "4SD": (_SD + "20191111-092553_E20.pth", "902f65e2c6033d803d02df552eb898e5985190a7ae67d155e384826eec6f04cb"),
    "5SD": (_SD + "20191110-204615_E20.pth", "17fd0f81622f01366eb21cb4d40140ee38cf988ed6eaf266629709c397a8b485"),
}

EMBEDDED_DIR = Path(__file__).resolve().parent / "cd16x"
# file name -> sha256 of ``EMBEDDED_DIR/{name}.safetensors``, as ``models.packing.pack_official``
# writes it from the upstream file above (the upstream digest is in each file's metadata).
_EMBEDDED_SHA256: dict[str, str] = {
    "1SE": "7e90f48634cdf2dc21c060a249ea070b2b560d12f6fef6b4f47117e4cc6085fb",
    "2SE": "38b82794738041933f8331c500c87721dee8a75f58185eba82f5800c830872da",
    "3SE": "a011686bc41ff8f987c03847ad457fdc6a00f0f42e398f504057a17b00a81d34",
    "4SE": "4e37ed5b77a58507777884e048200e3c08e458bbe355add434629b0d69e1f079",
    "5SE": "37b4941a80d4911436bb13bb05901ef4c3b9849e9aaf5c6fa9ae5475bd48ae0e",
    "1SD": "ea735fc62d0dbfc0ca5d0c1dd146275686ff6571a97a28b37e7163a8151ccb09",
    "2SD": "3178c7135a7ff2370a4cad8fb17d5ef76bda958ebf5a4d52ce46e8567d412617",
    "3SD": "a69bea9a3961a02673f3394446484d5e605c9d66f87fd03e3a8df25117172671",
    "4SD": "9b7b1609fc9f5e0b3527e33f500d18db3dcbf1a8671a92f0975cdd1eea9fe5e6",
    "5SD": "71d0df7291fd8c01a50fa35792cd91749612e972a9db4f990d631ec9ba5ce4c4",
}


@dataclass(frozen=True)
class WeightSpec:
    """One checkpoint file: where it is, its digest (``None``: not pinned) and free metadata."""

    uri: str
    sha256: str | None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class WeightSet:
    """Encoders and decoders for some levels, with the family widths that build them.

    Args:
        model_id: short name recorded in manifests (``cd16x`` or ``bundle:<run id>``).
        family: channel widths of the encoders/decoders.
        files: ``"{k}SE"``/``"{k}SD"`` -> :class:`WeightSpec`.
        location: the ``--weights`` location it was resolved from, a ``latest`` pointer
            replaced by the bundle it named and a bundle pinned to its card
            (``<bundle>#sha256=<card digest>``; ``None`` for the embedded files), so that other
            processes can load the same set. Not part of equality: the files say which weights
            these are.
    """

    model_id: str
    family: FamilySpec
    files: dict[str, WeightSpec]
    location: str | None = field(default=None, compare=False)

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(k for k in LEVELS if f"{k}SE" in self.files and f"{k}SD" in self.files)

    def spec(self, name: str) -> WeightSpec:
        if name not in self.files:
            raise WeightsError(f"weights {self.model_id} have no {name}.pth (levels: {self.levels})")
        return self.files[name]


def official_weight_set(base_uri: str = OFFICIAL_BASE_URL, *, layout: str = "upstream") -> WeightSet:
    """The pinned CD 16x set, read from the authors' repository, a copy of it, or the embedded files.

    Args:
        base_uri: URL or folder prefix the files live under.
        layout: ``"upstream"`` (the repository's real file paths), ``"flat"``
            (``{k}SE.pth``/``{k}SD.pth`` side by side, as in a local copy) or ``"safetensors"``
            (``{k}SE.safetensors``/``{k}SD.safetensors``, as in :data:`EMBEDDED_DIR`).
    """
    if layout not in ("upstream", "flat", "safetensors"):
        raise ValueError(f"layout must be 'upstream', 'flat' or 'safetensors', got {layout!r}")
    base = base_uri.rstrip("/") + "/"
    files = {}
    for name, (path, digest) in OFFICIAL_FILES.items():
        where = {"upstream": path, "flat": f"{name}.pth", "safetensors": f"{name}.safetensors"}[layout]
        pin = _EMBEDDED_SHA256[name] if layout == "safetensors" else digest
        files[name] = WeightSpec(base + where, pin, {"upstream": path})
    return WeightSet("cd16x", CD16X, files)


class CD16xWeights(Enum):
    """The released Collaborative Distillation 16x encoders and decoders (MIT licence).

    ``EMBEDDED`` ships in this package (no download) and is the default; ``OFFICIAL`` is the
    same release fetched from the authors' repository into the cache.
    """

    EMBEDDED = official_weight_set(str(EMBEDDED_DIR), layout="safetensors")
    OFFICIAL = official_weight_set()
    DEFAULT = EMBEDDED


def resolve_weights(uri: str | None = None, storage_options: dict[str, Any] | None = None) -> WeightSet:
    """Turn a ``--weights`` location into a :class:`WeightSet` (see the module docstring).

    Raises:
        WeightsError: the location cannot be listed (unreachable or missing), a ``latest``
            pointer is malformed or names a run outside its folder, or a bundle's card is not
            the one its pointer or pin names (one line each, naming the URI).
    """
    uri = uri or os.environ.get(WEIGHTS_ENV) or None
    if uri is None:
        return CD16xWeights.DEFAULT.value
    try:
        folder, pin = bundle.split_pin(bundle.resolve_pointer(uri, storage_options))
        has_card = bundle.is_bundle(folder, storage_options)
        fs, path = url_to_fs(folder, **(storage_options or {}))
        is_dir = not has_card and fs.isdir(path)
        names = [n.rsplit("/", 1)[-1] for n in fs.ls(path, detail=False)] if is_dir else []
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(f"cannot read weights location {uri}: {one_line(e)}") from e
    if has_card:
        return _bundle_set(folder, pin, storage_options)
    if pin is not None:
        raise WeightsError(f"weights location {uri} pins a bundle card, but {folder} has no {bundle.CARD_FILE}")
    if not is_dir:
        raise WeightsError(
            f"weights location {uri} is not a folder of {{k}}SE.pth/{{k}}SD.pth "
            "(or .safetensors) files nor a bundle"
        )
    packed = not any(n.endswith(".pth") for n in names) and any(n.endswith(".safetensors") for n in names)
    return replace(official_weight_set(uri, layout="safetensors" if packed else "flat"), location=uri)


def _bundle_set(folder: str, pin: str | None, storage_options: dict[str, Any] | None) -> WeightSet:
    """The weight set of the bundle in ``folder``, its card checked against ``pin`` and pinned from then on."""
    try:
        card, digest = bundle.read_card(folder, storage_options, sha256=pin)
        family = bundle.card_family(card)
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(f"cannot read the card of bundle {folder}: {one_line(e)}") from e
    files = {name: WeightSpec(bundle.weight_uri(folder, name), sha) for name, sha in card["files"].items()}
    return WeightSet(f"bundle:{card['run_id']}", family, files, bundle.pin_uri(folder, digest))


def _load(module, weights: WeightSet, name: str, storage_options: dict[str, Any] | None):
    spec = weights.spec(name)
    state = load_state_dict(fetch(spec.uri, spec.sha256, storage_options), sha256=spec.sha256)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{spec.uri} does not fit a level-{module.level} {type(module).__name__}: {e}") from e
    return module.eval()


def small_encoder(
    level: int,
    *,
    weights: WeightSet | None = None,
    family: FamilySpec = CD16X,
    storage_options: dict[str, Any] | None = None,
) -> Encoder:
    """Encoder ``level`` of ``weights`` (hash-checked), or randomly initialised if ``None``."""
    if weights is None:
        return Encoder(level, family)
    return _load(Encoder(level, weights.family), weights, f"{level}SE", storage_options)


def small_decoder(
    level: int,
    *,
    weights: WeightSet | None = None,
    family: FamilySpec = CD16X,
    storage_options: dict[str, Any] | None = None,
) -> Decoder:
    """Decoder ``level`` of ``weights`` (hash-checked), or randomly initialised if ``None``."""
    if weights is None:
        return Decoder(level, family)
    return _load(Decoder(level, weights.family), weights, f"{level}SD", storage_options)
