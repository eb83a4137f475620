"""Run the speed and memory measurements of docs/benchmarks.md and print their Markdown tables.

``python scripts/bench_table.py [--weights URI] [--quick]``: ``ultrastyle bench`` over the
cascade configurations, each in a fresh process (peak memory is per process).

``python scripts/bench_table.py --files [--gigapixel] --style URI``: from encoded file to
encoded file, the whole ``ultrastyle stylize --tile 512`` process under ``/usr/bin/time -v``
(its maximum resident set size and wall time), on JPEG and PNG inputs made from a real photo
by :func:`jobs.bench.photo_file` in a temporary folder (``--workdir``; a gigapixel PNG is
several GB). Measure on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

CONFIGS = [
    ("3840x2160", "whole", 1024),
    ("3840x2160", "exact", 1024),
    ("3840x2160", "exact", 512),
    ("3840x2160", "thumbnail", 1024),
    ("4096x4096", "whole", 512),
    ("4096x4096", "exact", 512),
    ("8192x4096", "exact", 512),
    ("8192x8192", "exact", 512),
]


FILE_SIZES = [(3264, 2448), (12000, 8000)]
# 0.998 gigapixel, within the default --max-pixels; one JPEG row (a PNG of it is 7 GB to write).
GIGAPIXEL = (38700, 25800)


def stylize_row(path: str, style: str, weights: str | None, workdir: str) -> tuple[float, float]:
    """``(peak RSS GiB, wall seconds)`` of one ``ultrastyle stylize --tile 512`` process."""
    stem, ext = os.path.splitext(path)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "jobs.cli", "stylize", path, "--style", style,
           "--output", f"{stem}.out{ext}", "--tile", "512"]
    if weights:
        cmd += ["--weights", weights]
    run = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "TMPDIR": workdir})
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", run.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(clock.split(":"))))
    return peak_kib / 2**20, seconds


def file_table(args: argparse.Namespace) -> None:
    from jobs.bench import photo_file

    print("| size | MP | format | seconds | peak RSS (GiB) |")
    print("| --- | --- | --- | --- | --- |")
    rows = [(size, ext) for size in FILE_SIZES for ext in ("jpg", "png")]
    for (width, height), ext in rows + ([(GIGAPIXEL, "jpg")] if args.gigapixel else []):
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-files-") as folder:
            path = os.path.join(folder, f"photo.{ext}")
            photo_file(path, width, height)
            peak, seconds = stylize_row(path, args.style, args.weights, folder)
        print(f"| {width}x{height} | {width * height / 1e6:.1f} | {ext.upper()} | {seconds:.0f} | {peak:.2f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None)
    parser.add_argument("--quick", action="store_true", help="only the 4K rows")
    parser.add_argument("--files", action="store_true", help="stylize encoded files under /usr/bin/time -v")
    parser.add_argument("--gigapixel", action="store_true", help="with --files: add a 1-gigapixel JPEG row")
    parser.add_argument("--style", default=None, help="with --files: the style image (required)")
    parser.add_argument("--workdir", default=None, help="with --files: folder for inputs, outputs and canvases")
    args = parser.parse_args()
    if args.files:
        if not args.style:
            parser.error("--files needs --style URI")
        file_table(args)
        return
    print("| size | MP | mode | tile | seconds | MP/s | peak RSS (GiB) | seconds per level 5/4/3/2/1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, mode, tile in CONFIGS[:4] if args.quick else CONFIGS:
        cmd = [sys.executable, "-m", "jobs.bench", "--size", size, "--mode", mode, "--tile", str(tile), "--json"]
        if args.weights:
            cmd += ["--weights", args.weights]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        levels = " / ".join(str(r["level_seconds"][k]) for k in ("5", "4", "3", "2", "1"))
        tile_cell = r["tile"] if r["tile"] is not None else "-"
        print(f"| {r['size']} | {r['megapixels']} | {r['mode']} | {tile_cell} | {r['seconds']} | {r['mp_per_s']} "
              f"| {r['peak_rss_gib']} | {levels} |", flush=True)


if __name__ == "__main__":
    main()
