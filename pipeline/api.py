"""The Python API: stylize pictures in memory or file to file, with the command line's engine.

Three entry points, re-exported by :mod:`pipeline`::

    from pipeline import Stylizer, stylize, stylize_file

    picture = stylize(photo, "style.jpg", alpha=0.8)            # an array or a PIL image in, the same kind out
    report = stylize_file("in.jpg", "style.jpg", "out.png")     # any fsspec URIs, streamed, exact tiled
    stylizer = Stylizer(style_size=512)                          # models loaded once, for many calls
    for uri in photos:
        stylizer.stylize_file(uri, "style.jpg", uri.replace(".jpg", "-styled.png"))

The keyword arguments are the fields of :class:`~pipeline.options.StyleOptions` (weights,
alpha, style size, mode, tile, precision, device, controls, ...), with the command line's
defaults; an unknown one is a :class:`TypeError` that lists the valid ones, a bad value an
:class:`~pipeline.options.OptionError` naming the option. :func:`stylize_file` is what
``ultrastyle stylize IN --style S --output OUT`` runs, so both write the same pixels.
Several styles are a list: blended with ``style_weights``, or one per region of a ``mask``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields, replace
from typing import Any

import numpy as np
from PIL import Image

from pipeline.batch.preflight import check_output_location
from pipeline.engine.controls import StyleLevel, check_mask_size, read_mask, style_levels
from pipeline.engine.device import resolve_device
from pipeline.engine.models import ModelSet, load_models
from pipeline.engine.runner import (
    RunReport,
    StyleStats,
    choose_mode,
    load_style,
    read_content,
    style_from_rgb,
    stylize_image,
)
from pipeline.engine.runner import stylize_file as run_file
from pipeline.engine.tiled import read_rgb, tile_rounds
from pipeline.imaging.canvas import Canvas
from pipeline.imaging.imageio import ImageError, LoadedImage, StreamedImage, image_size, output_format
from pipeline.imaging.output import canvas_to_uint8
from pipeline.imaging.tiles import plan_tiles
from pipeline.options import OptionError, StyleOptions
from pipeline.progress import TileProgress

__all__ = ["MODEL_OPTIONS", "Picture", "RunReport", "Styles", "Stylizer", "make_options", "stylize", "stylize_file"]

log = logging.getLogger("ultrastyle.api")

# A picture: an (H, W, 3) array (uint8, or float in [0, 1]), a PIL image, or a URI / path of an image file.
Picture = np.ndarray | Image.Image | str | os.PathLike
# One picture, or a list of them (several styles: blended, or one per mask region).
Styles = Picture | Sequence[Picture]
_PICTURE_KINDS = (str, os.PathLike, np.ndarray, Image.Image)
# Options fixed by the models a Stylizer loads: another value needs another Stylizer.
MODEL_OPTIONS = ("weights", "device", "precision", "tile_batch")


def make_options(options: StyleOptions | None = None, /, **keywords: Any) -> StyleOptions:
    """The frozen options of a call: ``options`` (or the defaults) with ``keywords`` replacing fields.

    Args:
        options: a :class:`~pipeline.options.StyleOptions` to start from; ``None``: the defaults.
        **keywords: fields of :class:`~pipeline.options.StyleOptions` (``alpha=0.8``, ...).

    Returns:
        The checked options.

    Raises:
        TypeError: ``options`` is not a StyleOptions, or a keyword is not an option (the
            message names it and lists the valid ones).
        OptionError: a value is out of range or does not go with another (names the option).
    """
    if options is not None and not isinstance(options, StyleOptions):
        raise TypeError(f"options must be a StyleOptions, got {type(options).__name__}")
    valid = [f.name for f in fields(StyleOptions) if f.init]
    unknown = sorted(set(keywords) - set(valid))
    if unknown:
        raise TypeError(f"unknown option {', '.join(map(repr, unknown))}; the options are {', '.join(valid)}")
    if options is None:
        return StyleOptions(**keywords)
    return replace(options, **keywords) if keywords else options


def _style_list(style: Styles) -> list[Picture]:
    """One style, or a list of them, as a list (a string or an array is one style, not a sequence).

    Raises:
        TypeError: neither a picture nor a non-empty list of pictures.
    """
    styles = [style] if isinstance(style, _PICTURE_KINDS) else list(style) if isinstance(style, Sequence) else []
    if not styles or not all(isinstance(s, _PICTURE_KINDS) for s in styles):
        raise TypeError(f"style must be an image (array, PIL image or URI) or a list of them, got {style!r:.80}")
    return styles


def _check_style_count(count: int, options: StyleOptions) -> None:
    """Several styles make one picture only when blended (``style_weights``) or masked (``mask``)."""
    if count > 1 and options.style_weights is None and options.mask is None:
        raise ValueError(f"{count} styles for one picture need style_weights (one blend) or mask (a style per "
                         "region)")
    options.check_style_count(count)


def _unit_array(name: str, value: np.ndarray) -> np.ndarray:
    """Check an ``(H, W, 3)`` picture: uint8 as it is, float in [0, 1] as float32.

    Raises:
        ValueError: another shape, dtype or range (names ``name``).
    """
    if value.ndim != 3 or value.shape[2] != 3:
        raise ValueError(f"{name} must be an (H, W, 3) RGB array, got shape {value.shape}")
    if value.dtype == np.uint8:
        return value
    if not np.issubdtype(value.dtype, np.floating):
        raise ValueError(f"{name} must be uint8, or float in [0, 1], got {value.dtype}")
    low, high = (float(value.min()), float(value.max())) if value.size else (0.0, 0.0)
    if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
        raise ValueError(f"{name} must be uint8, or float in [0, 1], got {value.dtype} values in [{low:g}, {high:g}]")
    return np.asarray(value, np.float32)


def _pil_rgb(image: Image.Image) -> tuple[np.ndarray, Image.Image | None]:
    """A PIL image as ``(H, W, 3)`` uint8 and its alpha band (``None`` when it has none)."""
    has_alpha = "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return np.asarray(image.convert("RGB")), None
    rgba = image.convert("RGBA")
    return np.asarray(rgba.convert("RGB")), rgba.getchannel("A")


def _tile_progress(
    options: StyleOptions, models: ModelSet, height: int, width: int, seconds: float | None
) -> TileProgress | None:
    """Tile progress for an image run in a tiled mode (``None`` for whole-image runs or ``seconds=None``)."""
    mode = choose_mode(options.mode, height, width, options.tile)
    if seconds is None or mode == "whole":
        return None
    tiles = len(plan_tiles(height, width, tile=options.tile))
    return TileProgress(tile_rounds(tiles, len(models.levels), exact=mode == "exact"), log, seconds=seconds)


def _log_level(level: int, seconds: float) -> None:
    log.info("level %d done in %.2f s", level, seconds)


class Stylizer:
    """Loads the models once and stylizes many pictures; style statistics are cached.

    Args:
        options: a :class:`~pipeline.options.StyleOptions`; ``None``: the defaults.
        **keywords: fields of :class:`~pipeline.options.StyleOptions` replacing those of ``options``
            (``weights``, ``alpha``, ``style_size``, ``mode``, ``tile``, ``precision``, ``device``, ...).

    Each call may change any option but those fixed by the loaded models (:data:`MODEL_OPTIONS`:
    weights, device, precision, tile batch). A style's statistics are computed once per
    (style, style size) and reused: a style given by URI is read once, so a file rewritten
    under the same URI needs a new Stylizer; one given as pixels is known by their digest.

    Attributes:
        options: the options every call starts from.
        models: the encoders and decoders, on their device.

    Note:
        One call at a time: the style cache is not locked, so give each thread its own Stylizer.

    Raises:
        TypeError: an unknown keyword (the message lists the valid ones).
        OptionError: a bad value, or ``device`` asks for a GPU where there is none.
        WeightsError: the weights cannot be found or do not verify.

    Example:
        >>> stylizer = Stylizer(style_size=512, alpha=0.9)
        >>> stylizer.stylize_file("photo.jpg", "style.jpg", "out.png").mode
        'exact'
    """

    def __init__(self, options: StyleOptions | None = None, /, **keywords: Any) -> None:
        self.options = make_options(options, **keywords)
        start = time.perf_counter()
        self.models = load_models(self.options)
        self._styles: dict[tuple[Any, ...], StyleStats] = {}
        log.info("models %s loaded (on %s, %s, %d tile(s) per network call) in %.1f s", self.models.model_id,
                 self.models.device, self.models.precision, self.models.tile_batch, time.perf_counter() - start)

    def _call_options(self, overrides: dict[str, Any]) -> StyleOptions:
        fixed = sorted(set(overrides) & set(MODEL_OPTIONS))
        if fixed:
            raise TypeError(f"{', '.join(fixed)} cannot change per call: the Stylizer's models are loaded with "
                            f"them; make another Stylizer")
        return make_options(self.options, **overrides)

    def _style(self, style: Picture, options: StyleOptions) -> StyleStats:
        """One style's statistics at ``options.style_size``, from the cache or computed; the
        cache knows a style by its URI, or by a digest of its pixels."""
        if isinstance(style, str | os.PathLike):
            uri = os.fspath(style)
            key: tuple[Any, ...] = ("uri", uri, options.style_size)
            if key not in self._styles:
                self._styles[key] = load_style(uri, self.models, style_size=options.style_size,
                                               storage_options=options.storage_options,
                                               max_pixels=options.max_pixels)
            return self._styles[key]
        rgb = np.ascontiguousarray(_pil_rgb(style)[0] if isinstance(style, Image.Image) else
                                   _unit_array("style", style))
        key = ("pixels", rgb.shape, str(rgb.dtype), hashlib.sha256(rgb.data).hexdigest(), options.style_size)
        if key not in self._styles:
            self._styles[key] = style_from_rgb(rgb, self.models, style_size=options.style_size)
        return self._styles[key]

    def _style_levels(self, styles: list[Picture], options: StyleOptions) -> dict[int, StyleLevel]:
        """What the cascade colours with: one style, a blend, or one colouring per mask label."""
        start = time.perf_counter()
        stats = [self._style(s, options) for s in styles]
        levels = style_levels(stats, weights=options.style_weights, masked=options.mask is not None)
        log.info("style statistics ready in %.1f s", time.perf_counter() - start)
        return levels

    def stylize(
        self, content: Picture, style: Styles, *, progress_seconds: float | None = None, **overrides: Any
    ) -> np.ndarray | Image.Image:
        """Stylize a picture in memory (or read from a URI) and return it in memory.

        Args:
            content: ``(H, W, 3)`` uint8 or float (in [0, 1]) array, a PIL image, or a URI /
                path of an image file (decoded as files are: orientation applied, colour
                converted to sRGB). Both sides at least 32 px.
            style: a picture of the same kinds, or a list of them (blended with
                ``style_weights``, or one per region of a ``mask``).
            progress_seconds: show tile progress of tiled runs (a bar on a terminal, else a log
                line this often); ``None``: none.
            **overrides: options for this call (see the class).

        Returns:
            The stylized picture, the size of ``content``: a PIL image (RGB, with the content's
            alpha when it has one) for a PIL image; for an array, an array of its dtype (uint8
            rounded as files are written, float in [0, 1]); for a URI, uint8 for an 8-bit
            file, else float32 in [0, 1]. Arrays are RGB: alpha and ICC profiles are kept by
            :meth:`stylize_file` only.

        Note:
            Arrays and PIL images are taken as sRGB values as they are (an ICC profile in a PIL
            image's ``info`` is not applied); files and URIs are colour-converted to sRGB when
            decoded, as the command line does.

        Raises:
            TypeError: an unknown option or one fixed by the models (see the class).
            ValueError: a picture of the wrong shape, dtype or range; several styles without
                ``style_weights`` or ``mask``; :class:`~pipeline.options.OptionError` for a bad option.
            ImageError: a URI that cannot be read, or a mask that does not fit.
        """
        options = self._call_options(overrides)
        styles = _style_list(style)
        _check_style_count(len(styles), options)
        alpha = None
        if isinstance(content, Image.Image):
            rgb, alpha = _pil_rgb(content)
        elif isinstance(content, np.ndarray):
            rgb = _unit_array("content", content)
        elif not isinstance(content, str | os.PathLike):
            raise TypeError(f"content must be an array, a PIL image or a URI, got {type(content).__name__}")
        colour = self._style_levels(styles, options)
        workdir = tempfile.gettempdir()  # disk canvases are unlinked files: none is left, however the run ends
        with contextlib.ExitStack() as stack:
            if isinstance(content, str | os.PathLike):
                image: LoadedImage | StreamedImage = read_content(
                    os.fspath(content), options.storage_options, workdir=workdir, max_pixels=options.max_pixels)
                stack.callback(image.close)
            else:
                image = LoadedImage(rgb)
            canvas = stack.enter_context(self._stylized(image, colour, len(styles), options, workdir,
                                                        progress_seconds))
            out = _picture(canvas, image)
        if isinstance(content, Image.Image):
            picture = Image.fromarray(out)
            if alpha is not None:
                picture.putalpha(alpha)
            return picture
        if isinstance(content, np.ndarray) and content.dtype != out.dtype:
            return out.astype(content.dtype)
        return out

    @contextlib.contextmanager
    def _stylized(
        self,
        image: LoadedImage | StreamedImage,
        colour: dict[int, StyleLevel],
        styles: int,
        options: StyleOptions,
        workdir: str,
        progress_seconds: float | None,
    ) -> Iterator[Canvas]:
        """The stylized canvas of an image in memory or on a canvas (closed on exit)."""
        with contextlib.ExitStack() as stack:
            mask = None
            if options.mask is not None:
                mask = read_mask(options.mask, height=image.height, width=image.width, styles=styles,
                                 workdir=workdir, storage_options=options.storage_options,
                                 max_pixels=options.max_pixels)
                stack.callback(mask.close)
            progress = _tile_progress(options, self.models, image.height, image.width, progress_seconds)
            if progress is not None:
                stack.enter_context(contextlib.closing(progress))
            canvas, _ = stylize_image(image, colour, self.models, mode=options.mode, tile=options.tile,
                                      alpha=options.alpha, workdir=workdir, on_level=_log_level, on_tile=progress,
                                      mask=mask, preserve_color=options.preserve_color)
            stack.callback(canvas.close)
            yield canvas

    def stylize_file(
        self, input_uri: str | os.PathLike, style_uri: str | os.PathLike | Sequence[str | os.PathLike],
        output_uri: str | os.PathLike, *, progress_seconds: float | None = None, **overrides: Any,
    ) -> RunReport:
        """Stylize the image file ``input_uri`` into ``output_uri``, streamed, as the command line does.

        With ``mode="auto"`` an image larger than one tile runs exact tiled. The input is
        decoded a strip at a time onto disk canvases and the output encoded the same way, so
        memory is bounded by the tile size, not the image; the output keeps the input's alpha
        and ICC profile, and its format follows its extension. Everything that can be checked
        from headers (output format and size limit, a writable output folder, the mask's size)
        is checked before a pixel is stylized.

        Args:
            input_uri: the content image (local path or any fsspec URI).
            style_uri: a style image URI, or a list of them (blend or mask).
            output_uri: where the result goes (``.png``, ``.jpg``, ``.webp``, ``.tif``, ...).
            progress_seconds: show tile progress (a bar on a terminal, else a log line this
                often); ``None``: none.
            **overrides: options for this call (see the class).

        Returns:
            The run's :class:`~pipeline.engine.runner.RunReport`: size, mode, tiles and seconds
            per stage (``style``, ``read``, ``stylize``, ``write``).

        Raises:
            TypeError, OptionError, ValueError: as :meth:`stylize`; ``output_uri`` with an
                extension no writer knows is an OptionError naming it.
            ImageError: the input, a style or the mask cannot be read or is refused.
            OSError: the output's folder cannot be written.
        """
        options = self._call_options(overrides)
        uris = [os.fspath(u) for u in _style_list(style_uri)]
        size = _check_file_run(os.fspath(input_uri), uris, os.fspath(output_uri), options)
        return self._run_file(os.fspath(input_uri), uris, os.fspath(output_uri), options, size, progress_seconds)

    def _run_file(
        self,
        input_uri: str,
        style_uris: list[str],
        output_uri: str,
        options: StyleOptions,
        size: tuple[int, int],
        progress_seconds: float | None,
    ) -> RunReport:
        """The file-to-file run after :func:`_check_file_run`; ``size`` (width, height) sizes the progress."""
        start = time.perf_counter()
        colour = self._style_levels(list(style_uris), options)
        style_seconds = time.perf_counter() - start
        progress = _tile_progress(options, self.models, size[1], size[0], progress_seconds)
        with contextlib.closing(progress) if progress is not None else contextlib.nullcontext():
            report = run_file(input_uri, output_uri, colour, self.models, mode=options.mode, tile=options.tile,
                              alpha=options.alpha, max_pixels=options.max_pixels, quality=options.quality,
                              storage_options=options.storage_options, on_level=_log_level, on_tile=progress,
                              mask_uri=options.mask, preserve_color=options.preserve_color)
        report.seconds = {"style": style_seconds, **report.seconds}
        return report


def _picture(canvas: Canvas, image: LoadedImage | StreamedImage) -> np.ndarray:
    """The stylized image as an ``(H, W, 3)`` array: uint8 (the writer's rounding) for 8-bit
    content, else float32 in [0, 1]."""
    source = image.rgb.dtype if isinstance(image, LoadedImage) else image.canvas.dtype
    if source == np.uint8:
        return canvas_to_uint8(canvas, image.height, image.width)
    return read_rgb(canvas, image.height, image.width)


def _check_file_run(
    input_uri: str, style_uris: Sequence[str], output_uri: str, options: StyleOptions
) -> tuple[int, int]:
    """Check a file-to-file run from headers alone, before models load or a pixel is stylized.

    Returns:
        The input's ``(width, height)``.

    Raises:
        ValueError: several styles without ``style_weights`` or ``mask``.
        OptionError: ``output_uri`` has an extension no writer knows; ``device`` asks for a
            GPU where there is none.
        OSError: the output's folder cannot be written.
        ImageError: the input, a style or the mask is missing or cannot be read, or the mask
            differs in size from the input.
    """
    _check_style_count(len(style_uris), options)
    resolve_device(options.device)
    try:
        output_format(output_uri)
    except ImageError as e:
        raise OptionError("output_uri", str(e)) from e
    check_output_location(output_uri, options.storage_options, folder=False)
    # The headers of every input: a missing or unreadable file is said before the models load.
    size = image_size(input_uri, options.storage_options)
    for uri in style_uris:
        image_size(uri, options.storage_options)
    if options.mask is not None:
        check_mask_size(options.mask, size[1], size[0], options.storage_options)
    return size


def stylize(
    content: Picture,
    style: Styles,
    *,
    options: StyleOptions | None = None,
    progress_seconds: float | None = None,
    **keywords: Any,
) -> np.ndarray | Image.Image:
    """Stylize one picture in memory: :meth:`Stylizer.stylize` with models loaded for this call.

    Args:
        content: an ``(H, W, 3)`` array (uint8, or float in [0, 1]), a PIL image, or a URI.
        style: a picture of the same kinds, or a list of them (``style_weights`` or ``mask``).
        options: a :class:`~pipeline.options.StyleOptions` to start from; ``None``: the defaults.
        progress_seconds: show tile progress (see :meth:`Stylizer.stylize`); ``None``: none.
        **keywords: fields of :class:`~pipeline.options.StyleOptions` (``alpha=0.8``, ``style_size=512``, ...).

    Returns:
        The stylized picture as the content's kind (see :meth:`Stylizer.stylize`).

    Raises:
        TypeError, ValueError, OptionError, ImageError, WeightsError: see :class:`Stylizer`
            and :meth:`Stylizer.stylize`.

    Example:
        >>> import numpy as np
        >>> photo = np.asarray(Image.open("photo.jpg").convert("RGB"))
        >>> stylize(photo, "style.jpg", alpha=0.8).dtype
        dtype('uint8')
    """
    return Stylizer(make_options(options, **keywords)).stylize(content, style, progress_seconds=progress_seconds)


def stylize_file(
    input_uri: str | os.PathLike,
    style_uri: str | os.PathLike | Sequence[str | os.PathLike],
    output_uri: str | os.PathLike,
    *,
    options: StyleOptions | None = None,
    progress_seconds: float | None = None,
    **keywords: Any,
) -> RunReport:
    """Stylize an image file into another, as ``ultrastyle stylize`` does (the command runs this).

    The run is checked from headers before the models load (see :meth:`Stylizer.stylize_file`
    for what is checked and how the files are streamed).

    Args:
        input_uri: the content image (local path or any fsspec URI).
        style_uri: a style image URI, or a list of them (``style_weights`` or ``mask``).
        output_uri: the result's URI; its extension picks the format.
        options: a :class:`~pipeline.options.StyleOptions` to start from; ``None``: the defaults.
        progress_seconds: show tile progress (a bar on a terminal, else a log line this often);
            ``None``: none.
        **keywords: fields of :class:`~pipeline.options.StyleOptions`.

    Returns:
        The run's :class:`~pipeline.engine.runner.RunReport` (size, mode, tiles, seconds per stage).

    Raises:
        TypeError, ValueError, OptionError, ImageError, OSError, WeightsError: see
            :meth:`Stylizer.stylize_file` and :class:`Stylizer`.

    Example:
        >>> report = stylize_file("s3://photos/in.jpg", "style.jpg", "s3://photos/out.png", style_size=512)
        >>> (report.width, report.height, report.mode, report.tiles)
        (6000, 4000, 'exact', 24)
    """
    chosen = make_options(options, **keywords)
    inputs, outputs = os.fspath(input_uri), os.fspath(output_uri)
    uris = [os.fspath(u) for u in _style_list(style_uri)]
    size = _check_file_run(inputs, uris, outputs, chosen)
    return Stylizer(chosen)._run_file(inputs, uris, outputs, chosen, size, progress_seconds)
