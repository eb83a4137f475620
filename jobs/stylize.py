"""``python -m jobs.stylize`` / ``ultrastyle stylize``: stylize one image or a whole prefix.

- ``ultrastyle stylize photo.jpg --style s.jpg --output out.png`` runs in this process.
- ``python -m jobs.stylize --input s3://bucket/photos/ --style s3://bucket/style.jpg
  --output s3://bucket/out/`` is the batch job: a Ray job over every image under the prefix
  (``ray job submit -- python -m jobs.stylize ...`` on a cluster; a local Ray without one).
- With no arguments it runs the embedded default: the project's sample images under
  ``./ultrastyle-samples``, output to ``./ultrastyle-out``, on a local Ray.

An expected failure (a bad flag, a missing file, an unwritable output, weights that do not
verify) is one line on stderr, ``ultrastyle stylize: error: ...``, and exit status 2 for a bad
flag, 1 otherwise; it is found before any pixel is stylized.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import PurePosixPath

from fsspec.core import url_to_fs

from pipeline.batch.preflight import UsageError, check_format, check_output_location
from pipeline.engine.controls import check_mask_size, check_weights, parse_weights, style_levels
from pipeline.engine.models import load_model_set
from pipeline.engine.precision import DEFAULT_PRECISION, PRECISIONS
from pipeline.engine.runner import MODES, choose_mode, load_style, stylize_file
from pipeline.engine.strokes import DEFAULT_STROKE_SCALE, parse_stroke_scale, resolve_stroke_scale, stroke_tile_rounds
from pipeline.imaging.imageio import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, image_size, output_format
from pipeline.imaging.tiles import TILE_ALIGN
from pipeline.progress import ProgressLine, TileProgress

__all__ = ["build_parser", "check_args", "main"]

log = logging.getLogger("ultrastyle")

SAMPLES_DIR = "ultrastyle-samples"
DEFAULT_OUTPUT = "ultrastyle-out"
PROG = "ultrastyle stylize"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage block), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("content", nargs="?", help="content image or prefix (same as --input)")
    p.add_argument("--input", help="content image, folder or prefix (any fsspec URI)")
    p.add_argument("--style", action="append", help="style image URI (repeat for several styles)")
    p.add_argument("--output", help="output file (single image) or prefix (batch)")
    p.add_argument("--weights", help="weights folder, bundle or <publish>/latest (default: $ULTRASTYLE_WEIGHTS, "
                   "else the CD 16x files embedded in the package: no download)")
    p.add_argument("--alpha", type=float, default=1.0, help="style strength in [0, 1] (default 1)")
    p.add_argument("--style-weights", default=None, metavar="W1,W2,...",
                   help="blend the --style images into one output with these weights (one per style, "
                   "non-negative, normalised to sum 1)")
    p.add_argument("--mask", default=None, metavar="URI",
                   help="single image: a greyscale image of the content's size whose value i picks the i-th "
                   "--style (from 0); batch: a folder or prefix holding <content stem>.png for each content image")
    p.add_argument("--preserve-color", action="store_true",
                   help="keep the content's colours: the output takes the stylized luminance and the content's "
                   "chroma (YCbCr)")
    p.add_argument("--style-size", type=int, default=None, help="resize the style's longer side to N px")
    p.add_argument("--stroke-scale", default=str(DEFAULT_STROKE_SCALE), metavar="S|auto",
                   help="brush strokes S times larger at the same output size (coarse to fine: the image shrunk by "
                   "S is stylized too and its low frequencies kept); auto: S from the image size, so that the "
                   "picture seen whole on a screen reads as the style (about 1 per 1024 px of its longer side). "
                   f"Default {DEFAULT_STROKE_SCALE}: the plain cascade")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="whole: in memory; exact: tiled, same result; auto: exact when larger than one tile; "
                   "thumbnail: tiled in one pass with statistics from a 1024-px copy (faster, approximate)")
    p.add_argument("--tile", type=int, default=1024, help="tile core side in px, multiple of 16 (default 1024)")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                   help="arithmetic of the networks: fp32 (exact, TF32 off), tf32 (TF32 allowed on GPUs), bf16 or "
                   "fp16 (convolutions in that dtype; statistics stay float64). Default fp32")
    p.add_argument("--tile-batch", type=int, default=None,
                   help="equal-size tile regions put through a network at once (default: 4 on a GPU, where one "
                   "tile leaves it idle; 1 on the CPU, where batching does not help)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default 1e9)")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    p.add_argument("--storage-options", type=json.loads, default=None,
                   help='JSON passed to fsspec, e.g. \'{"client_kwargs": {"endpoint_url": "http://..."}}\'')
    p.add_argument("--format", default=None, help="batch output extension (default: the input's)")
    p.add_argument("--overwrite", action="store_true",
                   help="batch: redo every pair, also those an earlier run finished with the same settings")
    p.add_argument("--workers", type=int, default=None,
                   help="model actors (batch; default: one per GPU, else one per --cpus-per-worker CPUs)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per model actor (batch; default 1 when the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="CPUs per model actor, also its torch threads (batch; default 1)")
    p.add_argument("--io-cpus", type=float, default=0.0,
                   help="CPUs per read/cut and write task (batch; default 0: I/O bound, bounded by admission)")
    p.add_argument("--max-in-flight", type=int, default=4, help="images in flight at once (batch; default 4)")
    p.add_argument("--max-in-flight-mp", type=float, default=None,
                   help="megapixels in flight at once, read from the headers (batch; default: half the cluster's "
                   "object store at 32 bytes per pixel; a larger image runs alone)")
    p.add_argument("--retries", type=int, default=3,
                   help="actor restarts and retries of calls and tasks lost with a worker (batch; default 3)")
    p.add_argument("--progress-seconds", type=float, default=10.0,
                   help="interval of the progress line when stderr is not a terminal (default 10)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad flags before loading models, listing inputs or starting Ray (each error names its flag).

    Raises:
        UsageError: the first bad flag found.
    """
    if not args.style:
        raise UsageError("--style is required")
    if not args.output:
        raise UsageError("--output is required (an image file, or an output prefix for a batch)")
    if args.style_size is not None and args.style_size < 1:
        raise UsageError(f"--style-size must be at least 1, got {args.style_size}")
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be in [1, 100], got {args.quality}")
    if args.tile <= 0 or args.tile % TILE_ALIGN:
        raise UsageError(f"--tile must be a positive multiple of {TILE_ALIGN}, got {args.tile}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    try:
        args.stroke_scale = parse_stroke_scale(args.stroke_scale)
    except ValueError as e:
        raise UsageError(str(e)) from e
    _check_controls(args)
    for name in ("max_in_flight", "max_pixels"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("workers", "tile_batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_in_flight_mp is not None and args.max_in_flight_mp <= 0:
        raise UsageError(f"--max-in-flight-mp must be positive, got {args.max_in_flight_mp}")
    if args.cpus_per_worker <= 0 or args.progress_seconds <= 0:
        raise UsageError("--cpus-per-worker and --progress-seconds must be positive, got "
                         f"{args.cpus_per_worker} and {args.progress_seconds}")
    if args.io_cpus < 0 or args.retries < 0 or (args.gpus_per_worker or 0) < 0:
        raise UsageError("--io-cpus, --retries and --gpus-per-worker cannot be negative, got "
                         f"{args.io_cpus}, {args.retries} and {args.gpus_per_worker}")
    check_format(args.format)


def _check_controls(args: argparse.Namespace) -> None:
    """Refuse bad ``--style-weights`` / ``--mask`` combinations (parsing the weights into a tuple)."""
    if isinstance(args.style_weights, str):
        try:
            args.style_weights = parse_weights(args.style_weights)
        except ValueError as e:
            raise UsageError(str(e)) from e
    if args.style_weights is not None:
        if args.mask is not None:
            raise UsageError("--style-weights and --mask do not go together: the mask picks one style per pixel")
        try:
            check_weights(args.style_weights, len(args.style))
        except ValueError as e:
            raise UsageError(str(e)) from e


def _is_single(uri: str, storage_options: dict | None) -> bool:
    """A file, or a name with an image extension that is not a folder (so a typo says 'no such file')."""
    fs, path = url_to_fs(uri, **(storage_options or {}))
    if fs.isfile(path):
        return True
    return PurePosixPath(path).suffix.lower() in IMAGE_EXTENSIONS and not fs.isdir(path)


def _run_single(args: argparse.Namespace, content: str) -> int:
    if len(args.style) > 1 and args.style_weights is None and args.mask is None:
        raise UsageError("a single image takes one --style, or several with --style-weights (one blended output) "
                         "or --mask (a style per region); give an input folder or prefix for one output per style")
    try:
        output_format(args.output)
    except ImageError as e:
        raise UsageError(f"--output {e}") from e
    check_output_location(args.output, args.storage_options, folder=False)
    try:
        size: tuple[int, int] | None = image_size(content, args.storage_options)
    except ImageError:
        if args.mask is not None:
            raise
        size = None  # stylize_file refuses the input below, with the decoder's own message
    if args.mask is not None:
        width, height = size
        check_mask_size(args.mask, height, width, args.storage_options)
    if size is not None:
        try:
            resolve_stroke_scale(args.stroke_scale, size[1], size[0])
        except ValueError as e:
            raise UsageError(str(e)) from e
    start = time.perf_counter()
    models = load_model_set(args.weights, storage_options=args.storage_options, precision=args.precision,
                            tile_batch=args.tile_batch)
    styles = [load_style(uri, models, style_size=args.style_size, storage_options=args.storage_options,
                         max_pixels=args.max_pixels) for uri in args.style]
    style = style_levels(styles, weights=args.style_weights, masked=args.mask is not None)
    log.info("models %s loaded (%s, %d tile(s) per network call) and style statistics ready in %.1f s",
             models.model_id, models.precision, models.tile_batch, time.perf_counter() - start)
    line = ProgressLine(log, seconds=args.progress_seconds)
    progress = None
    if size is not None:
        width, height = size
        mode = choose_mode(args.mode, height, width, args.tile)
        if mode != "whole":
            scale = resolve_stroke_scale(args.stroke_scale, height, width)
            rounds = stroke_tile_rounds(height, width, tile=args.tile, levels=len(models.levels), scale=scale,
                                        exact=mode == "exact")
            progress = TileProgress(rounds, line)
    report = stylize_file(
        content,
        args.output,
        style,
        models,
        mode=args.mode,
        tile=args.tile,
        alpha=args.alpha,
        stroke_scale=args.stroke_scale,
        max_pixels=args.max_pixels,
        quality=args.quality,
        storage_options=args.storage_options,
        on_level=lambda level, s: log.info("level %d done in %.2f s", level, s),
        on_tile=progress,
        mask_uri=args.mask,
        preserve_color=args.preserve_color,
    )
    line.close()
    total = time.perf_counter() - start
    log.info(
        "wrote %s (%dx%d, %s mode, %d tiles, stroke scale %d) in %.1f s (%.3f MP/s)",
        args.output, report.width, report.height, report.mode, report.tiles, report.stroke_scale, total,
        report.width * report.height / 1e6 / report.seconds["stylize"],
    )
    return 0


def _run_batch(args: argparse.Namespace, content: str) -> int:
    from pipeline.batch.driver import run_batch

    return run_batch(args, content)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    log.setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    content = args.content or args.input
    try:
        if content is None:
            from jobs.samples import write_samples

            content_dir, style_dir = write_samples(SAMPLES_DIR)
            content, args.style = str(content_dir), [str(style_dir / "strokes.png")]
            args.output = args.output or DEFAULT_OUTPUT
            log.info("no --input: stylizing the sample images in %s into %s", SAMPLES_DIR, args.output)
        check_args(args)
        if _is_single(content, args.storage_options):
            return _run_single(args, content)
        return _run_batch(args, content)
    except (ImageError, ValueError, OSError, RuntimeError) as e:  # WeightsError is a RuntimeError
        message = " ".join(str(e).split()) or type(e).__name__  # one line, however the library wrapped it
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
