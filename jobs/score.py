"""``ultrastyle score IMAGE --style S [--content C] [--view 1024]``: does a picture read as its style?

Prints the Gram distance of the picture to the style seen whole (shrunk to ``--view`` px) and
on 1:1 crops, the crops' detail (mean gradient), and with ``--content`` the distance to the
photo it was made from (:mod:`pipeline.engine.score`), so alpha, stroke scale and style size
can be chosen with a number. Lower distances read more as the style (or the content).

A bad input is one line on stderr, ``ultrastyle score: error: ...``, exit status 2 for a bad
flag and 1 for a file that cannot be scored.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from jobs.flags import flag_message
from pipeline.engine.models import load_model_set
from pipeline.engine.score import STYLE_SIZE, VIEW_SIZE, Score, score_image
from pipeline.imaging.imageio import DEFAULT_MAX_PIXELS, ImageError
from pipeline.options import OptionError

__all__ = ["build_parser", "main"]

PROG = "ultrastyle score"
# The smallest --view and --style-size: the cascade's smallest side.
_MIN_SIZE = 32


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage block), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("image", help="the stylized picture (any fsspec URI)")
    p.add_argument("--style", required=True, help="the style image it was made with")
    p.add_argument("--content", default=None, help="the photo it was made from: also print the content distance")
    p.add_argument("--view", type=int, default=VIEW_SIZE,
                   help="longer side of the picture seen whole, and side of the 1:1 crops, in px "
                   f"(default {VIEW_SIZE})")
    p.add_argument("--style-size", type=int, default=STYLE_SIZE,
                   help=f"longer side the style is compared at (default {STYLE_SIZE})")
    p.add_argument("--weights", default=None, help="encoders to measure with (default: $ULTRASTYLE_WEIGHTS, else the "
                   "embedded CD 16x files)")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help="where the encoders run (default auto: CUDA when torch sees a GPU, else the CPU)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default 1e9)")
    p.add_argument("--storage-options", type=json.loads, default=None, help="JSON passed to fsspec")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def _lines(score: Score, args: argparse.Namespace) -> list[str]:
    crops = len(score.crops)
    side = f"{score.crops[0].width}x{score.crops[0].height}"
    lines = [
        f"style distance (Gram, lower reads more as the style): {score.style_view:.3f} seen whole at {score.view} px, "
        f"{score.style_crops:.3f} on {crops} 1:1 crop(s) of {side}",
        f"detail (mean gradient of the 1:1 crops): {score.detail:.4f}",
    ]
    if score.content_view is not None:
        on_crops = "n/a (the content's size differs)" if score.content_crops is None else f"{score.content_crops:.3f}"
        lines.append(f"content distance to {args.content}: {score.content_view:.3f} seen whole, {on_crops} on the "
                     "1:1 crops")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (("--view", args.view), ("--style-size", args.style_size)):
        if value < _MIN_SIZE:
            print(f"{PROG}: error: {flag} must be at least {_MIN_SIZE} px, got {value}", file=sys.stderr)
            return 2
    try:
        models = load_model_set(args.weights, device=args.device, storage_options=args.storage_options)
        score = score_image(args.image, args.style, models, view=args.view, style_size=args.style_size,
                            content_uri=args.content, storage_options=args.storage_options,
                            max_pixels=args.max_pixels)
    except (ImageError, ValueError, OSError, RuntimeError) as e:  # WeightsError is a RuntimeError
        message = flag_message(e) if isinstance(e, OptionError) else str(e)
        print(f"{PROG}: error: {' '.join(message.split()) or type(e).__name__}", file=sys.stderr)
        return 2 if isinstance(e, OptionError) else 1
    if args.json:
        found = asdict(score)
        found["crops"] = [[r.x0, r.y0, r.width, r.height] for r in score.crops]
        print(json.dumps(found))
    else:
        print("\n".join(_lines(score, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
