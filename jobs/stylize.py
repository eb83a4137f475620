"""``python -m jobs.stylize`` / ``ultrastyle stylize``: stylize one image or a whole prefix.

- ``ultrastyle stylize photo.jpg --style s.jpg --output out.png`` runs in this process.
- ``python -m jobs.stylize --input s3://bucket/photos/ --style s3://bucket/style.jpg
  --output s3://bucket/out/`` is the batch job: a Ray job over every image under the prefix
  (``ray job submit -- python -m jobs.stylize ...`` on a cluster; a local Ray without one).
- With no arguments it runs the embedded default: the project's sample images under
  ``./ultrastyle-samples``, output to ``./ultrastyle-out``, on a local Ray.

An expected failure (a bad flag, a missing file, an unwritable output, weights that do not
verify) is one line on stderr, ``ultrastyle stylize: error: ...``, and exit status 2 for a bad
flag, 1 otherwise; it is found before any pixel is stylized. Any other failure is one line too
(``--verbose`` adds its traceback). SIGTERM, SIGINT or SIGHUP stop the job with one line,
``ultrastyle stylize: stopped by SIGTERM``, and status 128 + the signal's number, leaving
nothing in ``TMPDIR`` (docs/faults.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import PurePosixPath
from typing import Any

from fsspec.core import url_to_fs

from jobs.cli import VersionAction
from jobs.flags import default, flag_message, options_from
from jobs.logs import setup_logging
from jobs.signals import Stopped, stop_on_signals
from pipeline.api import stylize_file
from pipeline.batch.preflight import UsageError
from pipeline.errors import LocationError, escape_controls, one_line_error
from pipeline.imaging.imageio import IMAGE_EXTENSIONS, ImageError, output_format
from pipeline.options import MODES, PRECISIONS, BatchOptions, OptionError, StyleOptions

__all__ = ["build_options", "build_parser", "main"]

log = logging.getLogger("ultrastyle")

SAMPLES_DIR = "ultrastyle-samples"
DEFAULT_OUTPUT = "ultrastyle-out"
PROG = "ultrastyle stylize"
DESCRIPTION = """\
Stylize one image in this process, or every image under a folder or prefix (local or any fsspec
URI such as s3://) as a batch job on Ray: on the cluster of RAY_ADDRESS, else on a local Ray.
With no arguments it stylizes the project's sample images into ./ultrastyle-out."""
EXAMPLES = """\
examples:
  your own photo, in this process (the output's extension picks its format):
    ultrastyle stylize photo.jpg --style painting.jpg --output photo-styled.png
  a lighter touch, the style taken at 512 px, the photo's colours kept:
    ultrastyle stylize photo.jpg --style painting.jpg --output out.jpg --alpha 0.7 --style-size 512 \\
        --preserve-color
  two styles blended 70/30 into one output:
    ultrastyle stylize photo.jpg --style a.jpg --style b.jpg --style-weights 0.7,0.3 --output out.png
  every photo under a prefix, as a Ray job on a cluster (add --dry-run first to see what would run and why):
    ray job submit -- python -m jobs.stylize --input s3://bucket/photos/ --style s3://bucket/style.jpg \\
        --output s3://bucket/styled/
  the sample images, on a local Ray:
    ultrastyle stylize"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage block), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _style(option: str) -> Any:
    return default(StyleOptions, option)


def _batch(option: str) -> Any:
    return default(BatchOptions, option)


def build_parser() -> argparse.ArgumentParser:
    """The flags, grouped; each one that sets an option has the option's name as its destination and its default."""
    p = _Parser(prog=PROG, description=DESCRIPTION, epilog=EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=VersionAction)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug lines, a traceback with each failure, and libvips' and Ray's own warnings")
    io = p.add_argument_group("input and output")
    io.add_argument("content", nargs="?", help="content image, folder or prefix (same as --input)")
    io.add_argument("--input", help="content image, folder or prefix (any fsspec URI)")
    io.add_argument("--style", action="append", help="style image URI (repeat for several styles)")
    io.add_argument("--output", help="output file (single image: its extension picks the format) or prefix (batch)")
    io.add_argument("--quality", type=int, default=_style("quality"), help="JPEG/WebP quality (default 95)")
    io.add_argument("--max-pixels", type=int, default=_style("max_pixels"),
                    help="refuse larger images, before decoding them (default 1e9)")
    io.add_argument("--storage-options", type=_json_object, default=_style("storage_options"),
                    help='JSON passed to fsspec, e.g. \'{"client_kwargs": {"endpoint_url": "http://..."}}\'')
    io.add_argument("--progress-seconds", type=float, default=_batch("progress_seconds"),
                    help="interval of the progress line when stderr is not a terminal (default 10; on a terminal "
                    "a progress bar is redrawn below the log)")
    look = p.add_argument_group("look")
    look.add_argument("--alpha", type=float, default=_style("alpha"),
                      help="style strength in [0, 1] (default 1; 0 keeps the content)")
    look.add_argument("--style-size", type=int, default=_style("style_size"),
                      help="resize the style's longer side to N px before taking its statistics, which sets the "
                      "scale of its strokes (default: as it is)")
    look.add_argument("--style-weights", default=None, metavar="W1,W2,...",
                      help="blend the --style images into one output with these weights (one per style, "
                      "non-negative, normalised to sum 1)")
    look.add_argument("--mask", default=_style("mask"), metavar="URI",
                      help="single image: a greyscale image of the content's size whose value i picks the i-th "
                      "--style (from 0); batch: a folder or prefix holding <content stem>.png for each content "
                      "image")
    look.add_argument("--preserve-color", action="store_true",
                      help="keep the content's colours: the output takes the stylized luminance and the content's "
                      "chroma (YCbCr)")
    look.add_argument("--weights", default=_style("weights"),
                      help="weights folder, bundle or <publish>/latest (default: $ULTRASTYLE_WEIGHTS, "
                      "else the CD 16x files embedded in the package: no download)")
    perf = p.add_argument_group("performance")
    perf.add_argument("--mode", choices=MODES, default=_style("mode"),
                      help="whole: in memory; exact: tiled, same result; auto (default): exact when larger than one "
                      "tile; thumbnail: tiled in one pass with statistics from a 1024-px copy (faster, approximate)")
    perf.add_argument("--tile", type=int, default=_style("tile"),
                      help="tile core side in px, multiple of 16 (default 1024); memory grows with its square")
    perf.add_argument("--device", default=_style("device"), metavar="auto|cpu|cuda[:N]",
                      help="where the networks run: auto (default) takes CUDA when torch sees a GPU, else the CPU; "
                      "batch: each model actor runs on CUDA when it has a GPU (--gpus-per-worker), else on the CPU")
    perf.add_argument("--precision", choices=PRECISIONS, default=_style("precision"),
                      help="arithmetic of the networks: fp32 (exact, TF32 off), tf32 (TF32 allowed on GPUs), bf16 "
                      "or fp16 (convolutions in that dtype; statistics stay float64). Default fp32")
    perf.add_argument("--tile-batch", type=int, default=_style("tile_batch"),
                      help="equal-size tile regions put through a network at once (default: 4 on a GPU, where one "
                      "tile leaves it idle; 1 on the CPU, where batching does not help)")
    batch = p.add_argument_group("cluster and batch", "used when the input is a folder or prefix (a Ray job)")
    batch.add_argument("--format", default=_batch("format"), help="output extension (default: the input's)")
    batch.add_argument("--overwrite", action="store_true",
                       help="redo every pair, also those an earlier run finished with the same settings")
    batch.add_argument("--workers", type=int, default=_batch("workers"),
                       help="model actors (default: one per GPU, else one per --cpus-per-worker CPUs)")
    batch.add_argument("--gpus-per-worker", type=float, default=_batch("gpus_per_worker"),
                       help="GPUs per model actor (default 1 when the cluster has GPUs and --device is auto, "
                       "or with --device cuda; else 0)")
    batch.add_argument("--cpus-per-worker", type=float, default=_batch("cpus_per_worker"),
                       help="CPUs per model actor, also its torch threads (default 1)")
    batch.add_argument("--io-cpus", type=float, default=_batch("io_cpus"),
                       help="CPUs per read/cut and write task (default 0: I/O bound, bounded by admission)")
    batch.add_argument("--max-in-flight", type=int, default=_batch("max_in_flight"),
                       help="images in flight at once (default 4)")
    batch.add_argument("--max-in-flight-mp", type=float, default=_batch("max_in_flight_mp"),
                       help="megapixels in flight at once, read from the headers (default: half the cluster's "
                       "object store at 32 bytes per pixel; a larger image runs alone)")
    batch.add_argument("--retries", type=int, default=_batch("retries"),
                       help="actor restarts, and retries of calls, tasks and pairs lost with a worker or to a storage "
                       "fault (default 3)")
    batch.add_argument("--batch-images", type=int, default=_batch("batch_images"),
                       help="images of at most one tile sent to a model actor per call (default 4)")
    batch.add_argument("--header-threads", type=int, default=_batch("header_threads"),
                       help="image headers read at once ahead of admission (default 16; more on a large cluster "
                       "reading from S3)")
    batch.add_argument("--manifest-wait", type=float, default=_batch("manifest_wait"),
                       help="seconds the job waits at its end for manifest storage that is failing before it saves "
                       "the unwritten rows to a local file (default 300)")
    batch.add_argument("--dry-run", action="store_true",
                       help="list, plan and resume, say what would run and why, and exit without starting Ray or "
                       "writing anything")
    return p


def _json_object(text: str) -> Any:
    """``--storage-options``' JSON; a malformed one is refused with where it breaks, never with
    its text (which may hold a secret key)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                                         "its text is not shown, as it may hold secrets") from None


def _parse_weights(text: str | None) -> tuple[float, ...] | None:
    """``"0.7,0.3"`` -> ``(0.7, 0.3)``; the options check the values."""
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError as e:
        raise OptionError("style_weights", f"must be comma-separated numbers, got {text!r}") from e


def build_options(args: argparse.Namespace, content: str) -> BatchOptions:
    """The command line as options, checked before loading models, listing inputs or starting Ray.

    Args:
        args: the parsed flags.
        content: the content image, folder or prefix (``CONTENT`` or ``--input``).

    Raises:
        UsageError: ``--style`` or ``--output`` missing.
        OptionError: the first bad value (names the option; :func:`~jobs.flags.flag_message`
            names its flag).
    """
    if not args.style:
        raise UsageError("--style is required")
    if not args.output:
        raise UsageError("--output is required (an image file, or an output prefix for a batch)")
    style_options = options_from(StyleOptions, args, style_weights=_parse_weights(args.style_weights))
    return options_from(BatchOptions, args, input_uri=content, output_uri=args.output, style_uris=args.style,
                        style_options=style_options)


def _is_single(uri: str, storage_options: dict | None) -> bool:
    """A file, or a name with an image extension that is not a folder (so a typo says 'no such file').

    Raises:
        LocationError: the input cannot be looked at (no credentials, an unreachable endpoint).
    """
    try:
        fs, path = url_to_fs(uri, **(storage_options or {}))
        if fs.isfile(path):
            return True
        return _names_an_image(path) and not fs.isdir(path)
    except Exception as e:
        raise LocationError(f"input {uri} cannot be read: {one_line_error(e)}") from e


def _names_an_image(uri: str) -> bool:
    """Whether ``uri`` ends like an image file (an input or output extension), not like a folder."""
    if uri.endswith("/"):
        return False
    try:
        output_format(uri)
    except ImageError:
        return PurePosixPath(uri).suffix.lower() in IMAGE_EXTENSIONS
    return True


def _run_single(options: BatchOptions) -> int:
    """Stylize the one image ``options.input_uri`` into ``options.output_uri`` in this process
    (:func:`pipeline.api.stylize_file`, which checks everything it can before the models load)."""
    style_options = options.style_options
    controls = style_options.style_weights is not None or style_options.mask is not None
    if len(options.style_uris) > 1 and not controls:
        raise UsageError("a single image takes one --style, or several with --style-weights (one blended output) "
                         "or --mask (a style per region); give an input folder or prefix for one output per style")
    start = time.perf_counter()
    report = stylize_file(options.input_uri, options.style_uris, options.output_uri, options=style_options,
                          progress_seconds=options.progress_seconds)
    log.info(
        "wrote %s (%dx%d, %s mode, %d tiles) in %.1f s (%.3f MP/s)",
        options.output_uri, report.width, report.height, report.mode, report.tiles, time.perf_counter() - start,
        report.width * report.height / 1e6 / report.seconds["stylize"],
    )
    return 0


def _run_batch(options: BatchOptions) -> int:
    from pipeline.batch.driver import run_batch

    return run_batch(options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    try:
        with stop_on_signals():
            return _main(args)
    except Stopped as e:
        print(f"{PROG}: stopped by {e.name}", file=sys.stderr)
        return e.status


def _main(args: argparse.Namespace) -> int:
    content = args.content or args.input
    try:
        if content is None:
            from jobs.samples import write_samples

            content_dir, style_dir = write_samples(SAMPLES_DIR)
            content, args.style = str(content_dir), [str(style_dir / "strokes.png")]
            args.output = args.output or DEFAULT_OUTPUT
            log.info("no --input: stylizing the sample images in %s into %s", SAMPLES_DIR, args.output)
        options = build_options(args, content)
        if _is_single(content, options.style_options.storage_options):
            if options.dry_run:
                raise UsageError("--dry-run is for a batch: give an input folder or prefix")
            return _run_single(options)
        if _names_an_image(options.output_uri):
            raise UsageError(f"--output {options.output_uri} names an image, but the input {content} is a folder or "
                             "prefix: give an output folder or prefix, which gets one image per content image and "
                             "style (end it with / to use this name as a folder)")
        return _run_batch(options)
    except Exception as e:
        log.debug("%s failed", PROG, exc_info=True)
        message = escape_controls(flag_message(e)) if isinstance(e, OptionError) else one_line_error(e)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2 if isinstance(e, UsageError | OptionError) else 1


if __name__ == "__main__":
    sys.exit(main())
