"""Measure the stroke scale on a large photo: how the picture reads seen whole, its 1:1 detail,
and the time and peak memory from encoded file to encoded file. Prints docs/stroke-scale.md's tables.

``python scripts/stroke_table.py [--size 12000x8000 | --content PHOTO] [--style STYLE] [--repeats 2] [--keep DIR]``

- The input is a photo of ``--size`` made by :func:`jobs.bench.photo_file` (scikit-image's coffee,
  upscaled with fine grain, JPEG), or ``--content``; the style is ``--style`` or the project's
  painted sample (:func:`jobs.samples.paint_style`, 512 px).
- ``ultrastyle stylize --tile 512`` runs under ``/usr/bin/time -v`` without and with
  ``--stroke-scale auto`` (and any ``--scales``), alternated ``--repeats`` times in one run:
  medians of the wall time, of the CPU time (user + system) and of the maximum resident set size.
- The photo shrunk to 1024 px and then stylized is the yardstick of a picture that reads as
  the style seen whole.
- ``ultrastyle score`` (:func:`pipeline.engine.score.score_image`, view 1024) scores the photo,
  each output and the yardstick.

``--plain OUT --auto OUT`` (outputs of ``--content`` made earlier) skips the runs and prints the scores
only. ``--sweep 1,2,3,4,6`` instead runs the in-process engine over several stroke scales on
``--content`` (the reference-size sweep, no timing). Measure on an idle machine where you can.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

from jobs.bench import photo_file
from jobs.samples import paint_style
from pipeline.engine.models import load_model_set
from pipeline.engine.score import Score, score_image
from pipeline.imaging.imageio import encode_image, image_size, read_view

VIEW = 1024


def _painted_style(folder: str) -> str:
    """The project's painted sample style, written into ``folder``."""
    path = os.path.join(folder, "strokes.png")
    paint_style().save(path)
    return path


def stylize(content: str, style: str, output: str, *flags: str) -> tuple[float, float, float]:
    """``(wall seconds, CPU seconds, peak RSS GiB)`` of one ``ultrastyle stylize --tile 512`` process.

    CPU seconds (user + system) are what the run cost; on a machine shared with other work they
    vary less than the wall time."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "jobs.cli", "stylize", content, "--style", style,
           "--output", output, "--tile", "512", *flags]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TMPDIR": os.path.dirname(output)})
    if run.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")

    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}: ([\d:.]+)", run.stderr).group(1)

    clock = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(clock.split(":"))))
    cpu = float(field("User time (seconds)")) + float(field("System time (seconds)"))
    return seconds, cpu, int(field("Maximum resident set size (kbytes)")) / 2**20


def direct(content: str, style: str, folder: str) -> tuple[str, str]:
    """The photo shrunk to :data:`VIEW` px and stylized: ``(shrunk photo, its stylized picture)``."""
    small, out = os.path.join(folder, "photo-1024.png"), os.path.join(folder, "direct-1024.png")
    with open(small, "wb") as f:
        f.write(encode_image(read_view(content, VIEW), "PNG"))
    stylize(small, style, out)
    return small, out


def quality_row(cells: list[str], score: Score, plain: Score | None) -> str:
    """A table row: ``cells``, then the score's distances and detail (also as a ratio to ``plain``'s)."""
    detail = "-" if plain is None else f"{score.detail / plain.detail:.2f}x"
    content = "-" if score.content_view is None else f"{score.content_view:.3f}"
    values = [f"{score.style_view:.3f}", f"{score.style_crops:.3f}", f"{score.detail:.4f}", detail, content]
    return "| " + " | ".join([*cells, *values]) + " |"


def files(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="strokes-") as folder:
        keep = args.keep or folder
        os.makedirs(keep, exist_ok=True)
        style = args.style or _painted_style(keep)
        content = args.content
        if content is None:
            width, height = (int(v) for v in args.size.split("x"))
            content = os.path.join(keep, f"photo-{args.size}.jpg")
            if not os.path.exists(content):
                photo_file(content, width, height)
        runs: dict[str, list[tuple[float, float, float]]] = {}
        if args.plain:  # an earlier run's outputs: scores only
            outputs = {"plain": args.plain, "--stroke-scale auto": args.auto}
        else:
            flags = {"plain": ["--stroke-scale", "1"]}
            flags.update({f"--stroke-scale {s}": ["--stroke-scale", s] for s in args.scales})
            outputs = {name: os.path.join(keep, f"out-{name.split()[-1]}.jpg") for name in flags}
            runs = {name: [] for name in flags}
            for _ in range(args.repeats):
                for name, given in flags.items():
                    runs[name].append(stylize(content, style, outputs[name], *given))
                    wall, cpu, rss = runs[name][-1]
                    print(f"{name}: {wall:.0f} s wall, {cpu:.0f} s CPU, {rss:.2f} GiB", file=sys.stderr, flush=True)
        shrunk, yardstick = direct(content, style, keep)
        models = load_model_set(None)

        def score(uri: str, photo: str = content) -> Score:
            return score_image(uri, style, models, view=VIEW, content_uri=photo)

        plain = score(outputs["plain"])
        print("| picture, seen at 1024 px and on five 1:1 crops of 1024 px | Gram distance seen whole "
              "| Gram distance on 1:1 crops | detail (mean gradient, 1:1) | detail vs plain | content distance |")
        print("| --- | --- | --- | --- | --- | --- |")
        print(quality_row(["the photo, not stylized"], score(content), plain))
        print(quality_row(["plain (`--stroke-scale 1`)"], plain, plain))
        for name, output in outputs.items():
            if name != "plain":
                print(quality_row([f"`{name}`"], score(output), plain))
        print(quality_row(["the photo shrunk to 1024 px, then stylized"], score(yardstick, shrunk), None))
        if not runs:
            return
        print()
        base = [statistics.median(run[i] for run in runs["plain"]) for i in range(3)]
        print("| run | wall s (median) | vs plain | CPU s (median) | vs plain | peak RSS GiB (median) | vs plain "
              "| every run (wall s / CPU s / GiB) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, found in runs.items():
            medians = [statistics.median(run[i] for run in found) for i in range(3)]
            cells = [f"{m:.0f} | {m / b:.2f}x" if i < 2 else f"{m:.2f} | {m / b:.2f}x"
                     for i, (m, b) in enumerate(zip(medians, base, strict=True))]
            every = ", ".join(f"{w:.0f} / {c:.0f} / {r:.2f}" for w, c, r in found)
            print(f"| {name} | {' | '.join(cells)} | {every} |")


def sweep(args: argparse.Namespace) -> None:
    """Several stroke scales on ``--content`` in this process; scores only."""
    from pipeline.engine.runner import load_style, stylize_file

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="strokes-") as folder:
        keep = args.keep or folder
        os.makedirs(keep, exist_ok=True)
        style = args.style or _painted_style(keep)
        models = load_model_set(None)
        stats = load_style(style, models)
        scores = {}
        for scale in args.sweep:
            out = os.path.join(keep, f"sweep-{scale}.png")
            stylize_file(args.content, out, stats, models, mode="exact", tile=512, stroke_scale=scale)
            scores[scale] = score_image(out, style, models, view=VIEW, content_uri=args.content)
        shrunk, yardstick = direct(args.content, style, keep)
        plain = scores.get(1)
        print("| stroke scale | coarse stage's longer side (px) | Gram distance seen whole | on 1:1 crops "
              "| detail (mean gradient, 1:1) | detail vs S = 1 | content distance |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        longer = max(image_size(args.content))
        for scale, found in scores.items():
            print(quality_row([str(scale), str(longer // scale)], found, plain))
        yardstick_score = score_image(yardstick, style, models, view=VIEW, content_uri=shrunk)
        print(quality_row(["the photo shrunk to 1024 px, then stylized", str(VIEW)], yardstick_score, None))
        photo = score_image(args.content, style, models, view=VIEW, content_uri=args.content)
        print(quality_row(["the photo, not stylized", "-"], photo, None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="12000x8000", help="WxH of the generated photo (default 12000x8000)")
    parser.add_argument("--content", default=None, help="a photo to use instead of a generated one")
    parser.add_argument("--style", default=None, help="the style (default: the project's painted sample, 512 px)")
    parser.add_argument("--scales", default="auto", help="stroke scales to run besides plain (default auto)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs of each (default 2)")
    parser.add_argument("--sweep", default=None, help="comma-separated stroke scales: the reference-size sweep")
    parser.add_argument("--workdir", default=None, help="folder for temporary files (inputs, outputs, canvases)")
    parser.add_argument("--keep", default=None, help="keep the photo, style and outputs in this folder")
    parser.add_argument("--plain", default=None, help="score this plain output of --content instead of running")
    parser.add_argument("--auto", default=None, help="with --plain: the --stroke-scale auto output to score")
    args = parser.parse_args()
    if bool(args.plain) != bool(args.auto):
        parser.error("--plain and --auto go together")
    args.scales = [s for s in args.scales.split(",") if s]
    if args.sweep:
        if not args.content:
            parser.error("--sweep needs --content")
        args.sweep = [int(s) for s in args.sweep.split(",")]
        sweep(args)
        return
    files(args)


if __name__ == "__main__":
    main()
