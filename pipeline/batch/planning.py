"""The (content, style) pairs of a bucket, planned a batch of keys at a time in Arrow.

Every content key below the input gives one pair per style, in content-major order, with
its output ``<output>/<content folder>/<content stem>__<style stem>.<ext>`` (``ext``: the
``--format``, else the content's own when it is a format we write, else PNG). The names are
built with Arrow's string kernels on a whole batch of keys, not one Python object per pair,
so planning ten million pairs costs seconds.

A key that cannot be one pair's input is refused here, before anything is read: a key with
an empty, ``.`` or ``..`` segment (S3 keeps them literally; read through a filesystem they
would name another key, and their output would land outside the output prefix), and a key
whose output name is longer than a file name can be (``NAME_MAX``: every output is also
staged as a local file, so S3 outputs have the limit too). Such a pair carries an
``error`` and gets a failed row instead of running.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.engine.controls import style_stem
from pipeline.imaging.imageio import ImageError, output_format

__all__ = ["NAME_MAX", "PAIR_SCHEMA", "PairPlanner"]

# Longest file name (bytes) of the local filesystems outputs are written or staged on.
NAME_MAX = 255
# Output formats that write a sibling with a longer name than the output's own
# (DeepZoom: ``<stem>.dzi`` beside ``<stem>_files/``): extra bytes over the output name.
_SIBLING_EXTRA = {".dzi": len("_files") - len(".dzi")}
_DEFAULT_EXT = ".png"
# A key quoted in an error is cut to this many characters.
_SHOWN_CHARS = 120
# folder (with its trailing slash), stem and extension of a key, as PurePosixPath splits a name.
_NAME = r"^(?P<folder>(?:.*/)?)(?P<stem>[^/]+?)(?P<ext>\.[^./]+)?$"
# A segment that is empty, "." or "..".
_BAD_SEGMENT = r"(^|/)\.{0,2}(/|$)"

PAIR_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("content_uri", pa.string()),
        ("style_uri", pa.string()),
        ("output_uri", pa.string()),
        ("error", pa.string()),
    ]
)


def _shown(key: str) -> str:
    """A key quoted for a one-line error: control characters escaped, a long one cut short."""
    text = repr(key)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 4] + "...'"


def _extension(ext: str, fmt: str | None) -> str:
    """The output extension for a content extension (``fmt`` when given)."""
    if fmt:
        return "." + fmt.lower().lstrip(".")
    try:
        output_format("x" + ext)
    except ImageError:
        return _DEFAULT_EXT
    return ext


class PairPlanner:
    """Plans the pairs of one job, a batch of content keys at a time.

    Args:
        input_uri: the listed folder or prefix; content URIs are ``<input_uri>/<key>``.
        output_uri: the output prefix.
        style_keys: one per output style: a style URI, or several joined by
            :func:`pipeline.engine.controls.join_styles` for one blended or masked output.
        fmt: ``--format`` (the output extension), or ``None`` for the content's own.

    Raises:
        ImageError: ``fmt`` is not a format we write.
    """

    def __init__(self, *, input_uri: str, output_uri: str, style_keys: Sequence[str], fmt: str | None = None) -> None:
        if fmt:
            output_format("x." + fmt.lower().lstrip("."))  # raises ImageError naming the extension
        self.input_base = input_uri.rstrip("/")
        self.output_uri = output_uri
        self.output_base = output_uri.rstrip("/")
        self.styles = list(style_keys)
        self.fmt = fmt
        self._stems = pa.array(["__" + style_stem(s) for s in self.styles], pa.string())

    def plan(self, keys: Sequence[str] | pa.Array, first_seq: int = 0) -> pa.Table:
        """The pairs of ``keys`` (relative to the input), numbered from ``first_seq``.

        Returns:
            A :data:`PAIR_SCHEMA` table, content-major: key ``i`` with style ``j`` is row
            ``i * len(style_keys) + j``; ``error`` is null for a pair that can run.
        """
        n, s = len(keys), len(self.styles)
        keys_arr = keys if isinstance(keys, pa.Array) else pa.array(keys, pa.string())
        parts = pc.extract_regex(keys_arr, _NAME)
        folder, stem, ext = (pc.fill_null(parts.field(f), "") for f in ("folder", "stem", "ext"))
        lowered = pc.dictionary_encode(pc.utf8_lower(ext))
        extensions = [_extension(e, self.fmt) for e in lowered.dictionary.to_pylist()]
        out_ext = pc.take(pa.array(extensions, pa.string()), lowered.indices)
        extra = pc.take(pa.array([_SIBLING_EXTRA.get(e, 0) for e in extensions], pa.int32()), lowered.indices)
        by_content = pa.array(np.repeat(np.arange(n, dtype=np.int64), s))
        by_style = pa.array(np.tile(np.arange(s, dtype=np.int64), n))
        name = pc.binary_join_element_wise(pc.take(stem, by_content), pc.take(self._stems, by_style),
                                           pc.take(out_ext, by_content), "")
        name_bytes = pc.add(pc.binary_length(name), pc.take(extra, by_content))
        output = pc.binary_join_element_wise(self.output_base + "/", pc.take(folder, by_content), name, "")
        content = pc.binary_join_element_wise(self.input_base + "/", keys_arr, "")
        bad_key = pc.match_substring_regex(keys_arr, _BAD_SEGMENT)
        return pa.table(
            [
                pa.array(np.arange(first_seq, first_seq + n * s, dtype=np.int64)),
                pc.take(content, by_content),
                pc.take(pa.array(self.styles, pa.string()), by_style),
                output,
                self._errors(keys_arr, pc.take(bad_key, by_content), name_bytes, by_content),
            ],
            schema=PAIR_SCHEMA,
        )

    def _errors(self, keys: pa.Array, bad_key: pa.Array, name_bytes: pa.Array, by_content: pa.Array) -> pa.Array:
        """Why each pair's key cannot be used (null when it can): a bad segment, a name too long."""
        bad = bad_key.to_numpy(zero_copy_only=False)
        long = pc.greater(name_bytes, NAME_MAX).to_numpy(zero_copy_only=False)
        flagged = np.flatnonzero(bad | long)
        if not len(flagged):
            return pa.nulls(len(bad), pa.string())
        errors: list[str | None] = [None] * len(bad)
        content_of = by_content.to_numpy()
        for i in flagged:
            key = _shown(keys[int(content_of[i])].as_py())
            if bad[i]:
                errors[i] = (f"content key {key} has an empty, '.' or '..' path segment: read through a "
                             f"filesystem it names another key, and its output would fall outside {self.output_uri}")
            else:
                errors[i] = (f"content key {key}: its output file name would be {name_bytes[i].as_py()} bytes, "
                             f"over the {NAME_MAX} a file name can hold; shorten the content's (or the style's) name")
        return pa.array(errors, pa.string())
