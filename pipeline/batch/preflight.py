"""Checks run on the driver before any actor starts or any pixel is stylized.

A job that can only fail should fail at once, in one line, rather than after the cluster has
started actors, read images and spent minutes: each check here turns one way a run can be
doomed (a format we cannot write, an output location we cannot write to, weights that are not
there, a style that cannot be read, actors the cluster cannot place) into one exception whose
message names the flag or URI and says what to change. The CLI prints it as
``ultrastyle stylize: error: ...`` and exits 2 for a :class:`UsageError` or an
:class:`~pipeline.options.OptionError`, 1 for the rest.
Nothing here knows about Ray: the cluster's nodes come in as plain resource dicts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import posixpath
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from models import WeightSet, resolve_weights
from pipeline.batch.fingerprint import SettingsBook, code_version, pair_settings, style_digest, weights_digests
from pipeline.batch.manifest import join_uri
from pipeline.engine.controls import control_settings, join_styles, mask_for, split_styles
from pipeline.engine.models import check_cascade_levels
from pipeline.errors import LocationError, one_line_error
from pipeline.imaging.imageio import ImageError, check_pixels, image_size, output_format, write_bytes
from pipeline.options import BatchOptions, OptionError

__all__ = [
    "BatchChecks",
    "StyleCheck",
    "UsageError",
    "check_actor_device",
    "check_batch",
    "check_format",
    "check_output_location",
    "check_placement",
    "check_styles",
    "check_weights",
    "default_workers",
]

log = logging.getLogger("ultrastyle.preflight")

# Mask files whose digest is read at once (I/O bound: on S3 each is a request).
_MASK_THREADS = 16
# The probe's name starts with a dot, so listings of inputs and outputs never see it.
_PROBE = ".ultrastyle-probe-"


class UsageError(ValueError):
    """A flag's value is wrong in itself (the CLI exits 2, as argparse does)."""


def check_actor_device(device: str, gpus_per_worker: float | None) -> None:
    """Refuse a ``device`` the batch job's model actors cannot honour.

    Each actor runs on CUDA when it reserves GPUs and on the CPU otherwise, and Ray picks its
    GPU, so ``cuda:N`` has no meaning here, and ``cpu`` with GPUs or ``cuda`` without any
    contradict each other.

    Raises:
        OptionError: naming ``device`` (and ``gpus_per_worker``) and what arrived.
    """
    if device.startswith("cuda:"):
        raise OptionError("device", f"{device}: Ray gives each model actor its GPU, so the batch job takes auto, "
                          "cpu or cuda")
    if device == "cpu" and gpus_per_worker:
        raise OptionError(("device", "gpus_per_worker"), "do not go together: CPU actors would leave their GPUs "
                          f"idle, got cpu and {gpus_per_worker:g}")
    if device == "cuda" and gpus_per_worker == 0:
        raise OptionError(("device", "gpus_per_worker"), "do not go together: CUDA actors need a GPU, got cuda and 0")


def check_format(fmt: str | None) -> None:
    """Refuse an output ``format`` we cannot write.

    Raises:
        OptionError: naming ``format`` and the formats we write.
    """
    if fmt is None:
        return
    try:
        output_format("x." + fmt.lower().lstrip("."))
    except ImageError as e:
        raise OptionError("format", f"{fmt!r}: {str(e).split(': ', 1)[-1]}") from e


def check_output_location(uri: str, storage_options: dict[str, Any] | None = None, *, folder: bool = True) -> None:
    """Write and delete a small hidden probe object where outputs will go.

    Args:
        uri: the output prefix (``folder=True``) or the output file (its folder is probed).
        storage_options: passed to fsspec.
        folder: whether ``uri`` is a prefix.

    Raises:
        LocationError: the location is unreachable or not writable (missing bucket, read-only
            folder, denied); one line naming ``uri``.
    """
    base = uri if folder else (posixpath.dirname(uri.rstrip("/")) or ".")
    probe = join_uri(base, _PROBE + secrets.token_hex(4))
    fs, path = url_to_fs(probe, **(storage_options or {}))
    created = []  # local folders the probe makes, deepest first: removed again, so a doomed run leaves none
    if isinstance(fs, LocalFileSystem):
        folder = os.path.dirname(path)
        while folder and not os.path.exists(folder):
            created.append(folder)
            folder = os.path.dirname(folder)
    try:
        write_bytes(probe, b"", storage_options)
        fs.rm_file(path)
    except Exception as e:
        raise LocationError(f"output {uri} is not writable: {one_line_error(e)}") from e
    finally:
        for folder in created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def check_weights(uri: str | None, storage_options: dict[str, Any] | None = None) -> tuple[WeightSet, dict[str, str]]:
    """Resolve ``--weights`` and fetch and verify every file, once, on the driver.

    Returns:
        The weight set and its per-file sha256 (``{"1SE": ..., ...}``).

    Raises:
        WeightsError: the location is missing or unreachable, a file is missing or differs
            from its digest, or levels 1-5 are not all there (one line naming the URI).
    """
    weights = resolve_weights(uri, storage_options)
    check_cascade_levels(weights, uri or weights.model_id)
    return weights, weights_digests(weights, storage_options)


@dataclass(frozen=True)
class StyleCheck:
    """A style image as the driver found it.

    Attributes:
        uri: the ``--style`` URI.
        digest: its content digest (:func:`~pipeline.batch.fingerprint.style_digest`), empty on error.
        error: why it cannot be used (one line), empty when it can.
    """

    uri: str
    digest: str = ""
    error: str = ""


def check_styles(
    uris: Sequence[str], storage_options: dict[str, Any] | None = None, *, max_pixels: int
) -> dict[str, StyleCheck]:
    """Check each style exists, has a readable image header and is within ``max_pixels``.

    Returns:
        URI -> :class:`StyleCheck`, in the order given (duplicates once).

    Raises:
        ImageError: no style can be used; the message is the first style's error. (When
            some can, the others' pairs fail with a row each and the job runs the rest.)
    """
    found = {}
    for uri in dict.fromkeys(uris):
        try:
            width, height = image_size(uri, storage_options)
            check_pixels(uri, width, height, max_pixels)
            found[uri] = StyleCheck(uri, digest=style_digest(uri, storage_options))
        except Exception as e:
            found[uri] = StyleCheck(uri, error=one_line_error(e))
    if all(check.error for check in found.values()):
        raise ImageError(f"style image failed: {next(iter(found.values())).error}")
    for check in found.values():
        if check.error:
            log.warning("style %s cannot be used, its pairs fail: %s", check.uri, check.error)
    return found


@dataclass(frozen=True)
class BatchChecks:
    """What the driver found before starting anything: the weights and the styles.

    Attributes:
        weight_set: the resolved weights; the actors load its ``location``, so a
            ``<publish>/latest`` moved after the check does not reach them.
        weights: each weights file's digest, for the fingerprint.
        styles: each style's check.
        code: the code version (:func:`~pipeline.batch.fingerprint.code_version`).
    """

    weight_set: WeightSet
    weights: dict[str, str]
    styles: dict[str, StyleCheck]
    code: str = ""

    @property
    def model_id(self) -> str:
        return self.weight_set.model_id

    def stamp(self, pairs: pa.Table, options: BatchOptions, book: SettingsBook) -> pa.Table:
        """Give each planned pair its settings (:func:`~pipeline.batch.fingerprint.pair_settings`) as an id in
        ``book``, and a ``refusal`` when its style (or its mask) cannot be read.

        The pairs of a bucket share a few settings (one per style and output format, one per
        content image only with ``--mask``): each distinct one is built once.

        Args:
            pairs: a :data:`~pipeline.batch.planning.PAIR_SCHEMA` table.
            options: the job (its style options shape the settings; masks are found below its input).
            book: where the distinct settings are kept.

        Returns:
            ``pairs`` with an ``int32`` column ``group`` and a string column ``refusal`` (null when fine).
        """
        found = pc.extract_regex(pairs["output_uri"], r"(?P<ext>\.[^./]*)$").combine_chunks()
        extension = pc.utf8_lower(pc.fill_null(found.field("ext"), ""))
        style_options = options.style_options
        masks = self._mask_digests(pairs["content_uri"], options) if style_options.mask is not None else None
        parts = [pairs["style_uri"], extension] + ([masks[0]] if masks is not None else [])
        combos = pc.dictionary_encode(pc.binary_join_element_wise(*parts, "\n").combine_chunks())
        groups, refusals = [], []
        for combo in combos.dictionary.to_pylist():
            style_key, ext, *mask = combo.split("\n")
            styles = [self.styles[uri] for uri in split_styles(style_key)]
            controls = control_settings(style_weights=style_options.style_weights, mask=mask[0] if mask else None,
                                        preserve_color=style_options.preserve_color)
            groups.append(book.add(pair_settings(
                model_id=self.model_id, weights=self.weights, alpha=style_options.alpha,
                style_size=style_options.style_size, mode=style_options.mode, quality=style_options.quality,
                style=join_styles([style.digest for style in styles]), output_uri="x" + ext, code=self.code,
                precision=style_options.precision, controls=controls,
            )))
            failed = next((style.error for style in styles if style.error), "")
            refusals.append(f"style image failed: {failed}" if failed else None)
        group = pc.take(pa.array(groups, pa.int32()), combos.indices)
        refusal = pc.take(pa.array(refusals, pa.string()), combos.indices)
        if masks is not None:
            refusal = pc.coalesce(refusal, masks[1])
        return pairs.append_column("group", group).append_column("refusal", refusal)

    @staticmethod
    def _mask_digests(contents: pa.ChunkedArray, options: BatchOptions) -> tuple[pa.Array, pa.Array]:
        """Each pair's mask digest (``missing`` when it cannot be read) and why it cannot be used (else
        null), read once per content image, several at a time."""
        unique = pc.dictionary_encode(contents.combine_chunks())

        mask_uri, storage_options = options.style_options.mask, options.style_options.storage_options

        def digest(content: str) -> tuple[str, str | None]:
            uri = mask_for(content, input_uri=options.input_uri, mask_uri=mask_uri)
            try:
                return style_digest(uri, storage_options), None
            except Exception as e:
                return "missing", f"--mask: no mask {uri} for {content} ({one_line_error(e)})"

        with concurrent.futures.ThreadPoolExecutor(_MASK_THREADS) as pool:
            found = list(pool.map(digest, unique.dictionary.to_pylist()))
        digests = pa.array([d for d, _ in found], pa.string())
        errors = pa.array([e for _, e in found], pa.string())
        return pc.take(digests, unique.indices), pc.take(errors, unique.indices)


def check_batch(options: BatchOptions, *, probe_output: bool = True) -> BatchChecks:
    """The batch job's checks, cheapest first: output format known, output writable, weights
    verified, styles readable.

    Args:
        options: the job.
        probe_output: write (and remove) a probe where outputs go; a dry run writes nothing.

    Raises:
        OptionError: an output ``format`` we cannot write (:func:`check_format`).
        OSError, WeightsError, ImageError: one line, see :func:`check_output_location`,
            :func:`check_weights` and :func:`check_styles`.
    """
    style_options = options.style_options
    check_format(options.format)
    if probe_output:
        check_output_location(options.output_uri, style_options.storage_options)
    weights, digests = check_weights(style_options.weights, style_options.storage_options)
    styles = check_styles(options.style_uris, style_options.storage_options, max_pixels=style_options.max_pixels)
    return BatchChecks(weights, digests, styles, code_version())


def default_workers(nodes: Sequence[Mapping[str, float]], *, cpus: float, gpus: float, io_cpus: float) -> int:
    """How many model actors the cluster can place while one I/O task still fits (at least 1).

    Args:
        nodes: each alive node's resources (``{"CPU": 16.0, "GPU": 1.0, ...}``).
        cpus, gpus: one actor's reservation.
        io_cpus: one I/O task's reservation (0: I/O tasks need no CPU).
    """
    if cpus <= 0 and gpus <= 0:
        raise UsageError(f"a model actor must reserve some CPU or GPU, got {cpus:g} CPU and {gpus:g} GPU")
    free = [dict(node) for node in nodes]
    placed = 0
    while _place(free, cpus, gpus):
        placed += 1
    if io_cpus > 0 and placed and not _fits_somewhere(free, io_cpus, 0.0):
        placed -= 1
    return max(1, placed)


def check_placement(
    nodes: Sequence[Mapping[str, float]], *, workers: int, cpus: float, gpus: float, io_cpus: float
) -> None:
    """Refuse model actors and I/O tasks the cluster cannot all place (the job would wait forever).

    Every actor must fit on some node, one after another, and one I/O task must still fit
    beside them (``io_cpus`` > 0); the check counts each node's total resources, so it
    assumes the job has the cluster to itself.

    Raises:
        UsageError: saying what does not fit and which flags to change.
    """
    free = [dict(node) for node in nodes]
    total_cpu = sum(node.get("CPU", 0.0) for node in nodes)
    total_gpu = sum(node.get("GPU", 0.0) for node in nodes)
    have = f"the cluster has {total_cpu:g} CPUs and {total_gpu:g} GPUs on {len(nodes)} node(s)"
    placed = 0
    while placed < workers and _place(free, cpus, gpus):
        placed += 1
    if placed < workers:
        fit = f"at most {placed} fit" if placed else "none fits on any node"
        raise UsageError(
            f"--workers {workers} model actors of {cpus:g} CPU and {gpus:g} GPU each cannot all be placed "
            f"({fit}; {have}): lower --workers, --cpus-per-worker or --gpus-per-worker"
        )
    if io_cpus > 0 and not _fits_somewhere(free, io_cpus, 0.0):
        raise UsageError(
            f"no CPU is left for I/O tasks of --io-cpus {io_cpus:g} beside {workers} model actors of {cpus:g} CPU "
            f"({have}): lower --io-cpus (0 is fine: reads and writes are I/O bound), --workers or --cpus-per-worker"
        )


def _fits(node: Mapping[str, float], cpus: float, gpus: float) -> bool:
    return node.get("CPU", 0.0) >= cpus - 1e-9 and node.get("GPU", 0.0) >= gpus - 1e-9


def _fits_somewhere(free: list[dict[str, float]], cpus: float, gpus: float) -> bool:
    return any(_fits(node, cpus, gpus) for node in free)


def _place(free: list[dict[str, float]], cpus: float, gpus: float) -> bool:
    """Take ``cpus`` and ``gpus`` from the first node that has them; whether one did."""
    for node in free:
        if _fits(node, cpus, gpus):
            node["CPU"] = node.get("CPU", 0.0) - cpus
            node["GPU"] = node.get("GPU", 0.0) - gpus
            return True
    return False
