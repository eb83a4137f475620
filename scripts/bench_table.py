"""Run ``ultrastyle bench`` over the README's configurations and print the Markdown table.

Each configuration runs in a fresh process (peak memory is per process). Usage:
``python scripts/bench_table.py [--weights URI] [--quick]``; measure on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None)
    parser.add_argument("--quick", action="store_true", help="only the 4K rows")
    args = parser.parse_args()
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
