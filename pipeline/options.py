"""The options of a stylization, as frozen, typed objects that the edges build once.

:class:`StyleOptions` holds everything that shapes the picture and how the engine runs it
(weights, alpha, style size, mode, tile, precision, device, the creative controls, and the
storage options the engine reads with). :class:`BatchOptions` holds one batch job: its input,
output and style URIs, its :class:`StyleOptions`, and how it uses the cluster. The command line
(``jobs/stylize.py``, ``jobs/bench.py``) and the batch job build them from flags, a Python caller
from keyword arguments named like the fields, with the command line's defaults; below that,
the library takes these objects (or their fields), never an ``argparse.Namespace``.

Each object checks its values when it is made, and a bad one raises :class:`OptionError`: one
line naming the option and what arrived (``alpha must be a number in [0, 1], got 1.5``), which
the command line rewrites with the option's flag (``--alpha ...``).

This module is a leaf: it imports nothing of torch, Ray or the rest of the pipeline, so a
driver or a notebook can build and check options cheaply, and every layer can read the option
vocabulary (modes, precisions, defaults) from here.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_PRECISION",
    "DEFAULT_QUALITY",
    "DEFAULT_TILE",
    "MODES",
    "PRECISIONS",
    "BatchOptions",
    "Mode",
    "OptionError",
    "Precision",
    "StyleOptions",
    "check_device",
    "check_mode",
    "check_precision",
]

MODES = ("auto", "whole", "exact", "thumbnail")
Mode = Literal["auto", "whole", "exact", "thumbnail"]
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
Precision = Literal["fp32", "tf32", "bf16", "fp16"]
DEFAULT_PRECISION: Precision = "fp32"
DEFAULT_TILE = 1024
DEFAULT_QUALITY = 95
DEFAULT_MAX_PIXELS = 1_000_000_000
# Tile cores are multiples of this: pipeline.imaging.tiles.TILE_ALIGN (the cascade's four 2x2
# pooling grids), repeated so that checking options does not import torch; a test keeps them equal.
_TILE_ALIGN = 16
# ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; pipeline.engine.device.resolve_device turns it into a device.
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class OptionError(ValueError):
    """An option's value is wrong in itself, or does not go with another one.

    Attributes:
        options: the option names involved (field names such as ``"style_weights"``).
        problem: what is wrong, without the names (``"must be at least 1, got 0"``).
    """

    def __init__(self, options: str | Sequence[str], problem: str) -> None:
        self.options = (options,) if isinstance(options, str) else tuple(options)
        self.problem = problem
        super().__init__(self.describe(lambda name: name))

    def __reduce__(self) -> tuple[type[OptionError], tuple[tuple[str, ...], str]]:
        # Raised in a Ray actor, it travels pickled to the driver.
        return type(self), (self.options, self.problem)

    def describe(self, name_of: Callable[[str], str]) -> str:
        """The message with each option named by ``name_of(option)`` (the CLI passes its flag names)."""
        return f"{' and '.join(name_of(o) for o in self.options)} {self.problem}"


def check_mode(mode: Any) -> Mode:
    """Return ``mode`` when it is one of :data:`MODES`.

    Raises:
        OptionError: naming ``mode``, the allowed values and what arrived.
    """
    return _choice("mode", mode, MODES)


def check_precision(precision: Any) -> Precision:
    """Return ``precision`` when it is one of :data:`PRECISIONS`.

    Raises:
        OptionError: naming ``precision``, the allowed values and what arrived.
    """
    return _choice("precision", precision, PRECISIONS)


def check_device(device: Any) -> str:
    """Return ``device`` when it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (not yet resolved).

    Raises:
        OptionError: naming ``device`` and what arrived.
    """
    if not (isinstance(device, str) and _DEVICE.fullmatch(device)):
        raise OptionError("device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


@dataclass(frozen=True, kw_only=True)
class StyleOptions:
    """What the picture looks like and how the engine makes it; defaults are the command line's.

    Attributes:
        weights: weights folder, bundle or ``<publish>/latest`` URI; ``None``:
            ``$ULTRASTYLE_WEIGHTS``, else the CD 16x files embedded in the package.
        alpha: style strength in [0, 1] (0 keeps the content).
        style_size: resize each style's longer side to this many pixels; ``None`` keeps it.
        mode: one of :data:`MODES` (``auto``: whole-image when the image fits in one tile,
            else exact tiled).
        tile: tile core side in pixels, a positive multiple of 16. Memory grows with its square.
        precision: one of :data:`PRECISIONS`; ``fp32`` is exact.
        device: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``;
            resolved where the models load (:func:`pipeline.engine.device.resolve_device`).
        tile_batch: equal-size tile regions per network call; ``None``: 4 on CUDA, 1 on the CPU.
        max_pixels: larger images (content, style or mask) are refused before decoding.
        quality: JPEG/WebP quality in [1, 100].
        style_weights: blend several styles into one output with these weights (one per style,
            non-negative with a positive sum; normalised when used); ``None``: no blend.
        mask: a label image (single image) or a folder of ``<content stem>.png`` (batch)
            whose value ``i`` picks the ``i``-th style; ``None``: no mask.
        preserve_color: keep the content's chroma, take the stylized luminance.
        storage_options: passed to fsspec for every URI the engine reads or writes (copied;
            never shown by ``repr``, since it may hold secrets).

    Raises:
        OptionError: the first bad value, or ``style_weights`` together with ``mask``.
    """

    weights: str | None = None
    alpha: float = 1.0
    style_size: int | None = None
    mode: Mode = "auto"
    tile: int = DEFAULT_TILE
    precision: Precision = DEFAULT_PRECISION
    device: str = "auto"
    tile_batch: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    quality: int = DEFAULT_QUALITY
    style_weights: tuple[float, ...] | None = None
    mask: str | None = None
    preserve_color: bool = False
    storage_options: dict[str, Any] | None = field(default=None, repr=False, hash=False)

    def __post_init__(self) -> None:
        _set(self, "weights", _uri("weights", self.weights, optional=True))
        _set(self, "alpha", _real("alpha", self.alpha, high=1.0))
        _set(self, "style_size", _integer("style_size", self.style_size, low=1, optional=True))
        check_mode(self.mode)
        tile = self.tile
        if not _is_integer(tile) or tile <= 0 or tile % _TILE_ALIGN:
            raise OptionError("tile", f"must be a positive multiple of {_TILE_ALIGN}, got {tile!r}")
        _set(self, "tile", int(tile))
        check_precision(self.precision)
        check_device(self.device)
        _set(self, "tile_batch", _integer("tile_batch", self.tile_batch, low=1, optional=True))
        _set(self, "max_pixels", _integer("max_pixels", self.max_pixels, low=1))
        _set(self, "quality", _integer("quality", self.quality, low=1, high=100))
        _set(self, "style_weights", _blend_weights(self.style_weights))
        _set(self, "mask", _uri("mask", self.mask, optional=True))
        _flag("preserve_color", self.preserve_color)
        _set(self, "storage_options", _storage_options(self.storage_options))
        if self.style_weights is not None and self.mask is not None:
            raise OptionError(("style_weights", "mask"), "do not go together: the mask picks one style per pixel")

    def check_style_count(self, styles: int) -> None:
        """Refuse ``style_weights`` that are not one per style.

        Raises:
            OptionError: naming ``style_weights``, its values and the number of styles.
        """
        if self.style_weights is not None and len(self.style_weights) != styles:
            shown = ",".join(f"{w:g}" for w in self.style_weights)
            raise OptionError("style_weights", f"has {len(self.style_weights)} values ({shown}) for {styles} styles: "
                              "give one per style")


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """One batch job: every image under ``input_uri`` with every style, and how it uses the cluster.

    Attributes:
        input_uri: folder or prefix of content images (any fsspec URI); masks are found by each
            content image's path below it.
        output_uri: folder or prefix the outputs and the manifest go under.
        style_uris: the style images (a single string is one style).
        style_options: the picture and the engine (:class:`StyleOptions`).
        format: output extension (``png``, ``jpg``, ...); ``None``: the input's. Checked against
            the formats the writer knows by :func:`pipeline.batch.preflight.check_format`.
        overwrite: redo every pair, also those an earlier run finished with the same settings.
        workers: model actors; ``None``: one per GPU, else one per ``cpus_per_worker`` CPUs.
        gpus_per_worker: GPUs each model actor reserves; ``None``: 1 when the device is
            ``cuda``, or ``auto`` on a cluster with GPUs, else 0. GPU actors run on CUDA, CPU
            actors on the CPU.
        cpus_per_worker: CPUs each model actor reserves, also its torch threads.
        io_cpus: CPUs each read/cut and write task reserves (0: bounded by admission only).
        max_in_flight: images in flight at once.
        max_in_flight_mp: megapixels in flight at once; ``None``: half the cluster's object store.
        retries: actor restarts and retries of calls, tasks and pairs lost with a worker or to a
            storage fault.
        progress_seconds: interval of the progress line when stderr is not a terminal.
        dry_run: list, plan and resume, report what would run and why, and stop: no Ray, no writes.
        batch_images: images of at most one tile sent to a model actor in one call.
        header_threads: image headers read at once ahead of admission.
        manifest_wait: seconds the job waits at its end for manifest storage that fails before it
            saves the rows it could not write to a local file.

    Note:
        ``jobs/stylize.py`` builds one of these from any command line, so every flag is checked
        before anything runs; for a single image it uses the input, output, styles, style
        options and progress interval. Whether the device suits the cluster's actors is the
        batch job's own check (:func:`pipeline.batch.preflight.check_actor_device`).

    Raises:
        OptionError: the first bad value, or ``style_weights`` not one per style.
    """

    input_uri: str
    output_uri: str
    style_uris: tuple[str, ...]
    style_options: StyleOptions = field(default_factory=StyleOptions)
    format: str | None = None
    overwrite: bool = False
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    io_cpus: float = 0.0
    max_in_flight: int = 4
    max_in_flight_mp: float | None = None
    retries: int = 3
    progress_seconds: float = 10.0
    dry_run: bool = False
    batch_images: int = 4
    header_threads: int = 16
    manifest_wait: float = 300.0

    def __post_init__(self) -> None:
        _set(self, "input_uri", _uri("input_uri", self.input_uri))
        _set(self, "output_uri", _uri("output_uri", self.output_uri))
        styles = (self.style_uris,) if isinstance(self.style_uris, str | os.PathLike) else self.style_uris
        if not isinstance(styles, Sequence) or not styles:
            raise OptionError("style_uris", f"must be one or more style image URIs, got {self.style_uris!r}")
        _set(self, "style_uris", tuple(_uri("style_uris", s) for s in styles))
        if not isinstance(self.style_options, StyleOptions):
            raise OptionError("style_options", f"must be a StyleOptions, got {type(self.style_options).__name__}")
        if self.format is not None and not (isinstance(self.format, str) and self.format.strip(". ")):
            raise OptionError("format", f"must be an image extension such as png or jpg, got {self.format!r}")
        _flag("overwrite", self.overwrite)
        _set(self, "workers", _integer("workers", self.workers, low=1, optional=True))
        _set(self, "gpus_per_worker", _real("gpus_per_worker", self.gpus_per_worker, optional=True))
        _set(self, "cpus_per_worker", _real("cpus_per_worker", self.cpus_per_worker, positive=True))
        _set(self, "io_cpus", _real("io_cpus", self.io_cpus))
        _set(self, "max_in_flight", _integer("max_in_flight", self.max_in_flight, low=1))
        _set(self, "max_in_flight_mp",
             _real("max_in_flight_mp", self.max_in_flight_mp, positive=True, optional=True))
        _set(self, "retries", _integer("retries", self.retries, low=0))
        _set(self, "progress_seconds", _real("progress_seconds", self.progress_seconds, positive=True))
        _flag("dry_run", self.dry_run)
        _set(self, "batch_images", _integer("batch_images", self.batch_images, low=1))
        _set(self, "header_threads", _integer("header_threads", self.header_threads, low=1))
        _set(self, "manifest_wait", _real("manifest_wait", self.manifest_wait))
        self.style_options.check_style_count(len(self.style_uris))


def _set(options: object, name: str, value: Any) -> None:
    """Store a checked, normalised value on a frozen options object (from ``__post_init__``)."""
    object.__setattr__(options, name, value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> Any:
    if value not in choices:
        raise OptionError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise OptionError(name, f"must be True or False, got {value!r}")


def _uri(name: str, value: Any, *, optional: bool = False) -> str | None:
    """A URI or local path (``os.PathLike`` becomes its string), non-empty."""
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise OptionError(name, f"must be a URI or path, got {value!r}")
    return value


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _integer(name: str, value: Any, *, low: int, high: int | None = None, optional: bool = False) -> int | None:
    """``value`` as an ``int`` in ``[low, high]`` (``None`` passes when ``optional``)."""
    if value is None and optional:
        return None
    if not _is_integer(value):
        raise OptionError(name, f"must be a whole number, got {value!r}")
    if high is not None and not low <= value <= high:
        raise OptionError(name, f"must be in [{low}, {high}], got {value}")
    if value < low:
        raise OptionError(name, f"must be at least {low}, got {value}" if low else f"cannot be negative, got {value}")
    return int(value)


def _real(
    name: str, value: Any, *, high: float | None = None, positive: bool = False, optional: bool = False
) -> float | None:
    """``value`` as a finite, non-negative ``float``, at most ``high``, above 0 when ``positive``."""
    if value is None and optional:
        return None
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise OptionError(name, f"must be a finite number, got {value!r}")
    if high is not None and not 0 <= value <= high:
        raise OptionError(name, f"must be in [0, {high:g}], got {value:g}")
    if positive and value <= 0:
        raise OptionError(name, f"must be positive, got {value:g}")
    if value < 0:
        raise OptionError(name, f"cannot be negative, got {value:g}")
    return float(value)


def _blend_weights(weights: Any) -> tuple[float, ...] | None:
    """``style_weights`` as a tuple of floats, non-negative with a positive sum."""
    if weights is None:
        return None
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence) or not weights:
        raise OptionError("style_weights", f"must be a sequence of numbers, one per style, got {weights!r}")
    values = [w if isinstance(w, numbers.Real) and not isinstance(w, bool) else None for w in weights]
    if any(v is None for v in values):
        raise OptionError("style_weights", f"must be numbers, got {weights!r}")
    floats = tuple(float(v) for v in values)
    if not all(map(math.isfinite, floats)) or min(floats) < 0 or not sum(floats) > 0:
        shown = ",".join(f"{w:g}" for w in floats)
        raise OptionError("style_weights", f"must be non-negative with a positive sum, got {shown}")
    return floats


def _storage_options(options: Any) -> dict[str, Any] | None:
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise OptionError("storage_options", f"must be a mapping of fsspec options, got {type(options).__name__}")
    return dict(options)
