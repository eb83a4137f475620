"""What a :class:`pipeline.Stylizer` saves over one-off calls, and what ``import pipeline`` costs.

Stylizes scikit-image's astronaut (512 x 512) with the project's painted sample style
``--calls`` times each way, alternating in one process: one ``Stylizer`` serving every call
(models loaded and style statistics computed once), and ``pipeline.stylize`` per call (both
again each time). Prints the median seconds per call of each and their ratio. Then times
``import pipeline`` and ``from pipeline import stylize`` in fresh interpreters (median of
``--imports`` runs each, interpreter start included).

    python scripts/api_calls.py --calls 5 --imports 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np
from PIL import Image


def _fresh(statement: str, runs: int) -> float:
    """Median wall seconds of a fresh interpreter running ``statement``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5, help="calls of each kind (alternated)")
    parser.add_argument("--imports", type=int, default=5, help="fresh interpreters per import statement")
    args = parser.parse_args()

    from jobs.samples import paint_style, skimage_photo
    from pipeline import Stylizer, stylize

    photo = np.asarray(Image.open(skimage_photo("astronaut.png")).convert("RGB"))
    style = np.asarray(paint_style(512))
    stylizer = Stylizer()
    reused, fresh = [], []
    for _ in range(args.calls):
        start = time.perf_counter()
        a = stylizer.stylize(photo, style)
        reused.append(time.perf_counter() - start)
        start = time.perf_counter()
        b = stylize(photo, style)
        fresh.append(time.perf_counter() - start)
        assert np.array_equal(a, b)
    r, f = statistics.median(reused), statistics.median(fresh)
    print(f"one Stylizer: {r:.2f} s per call; stylize() per call: {f:.2f} s; ratio {f / r:.2f}")
    cheap = _fresh("import pipeline", args.imports)
    full = _fresh("from pipeline import stylize", args.imports)
    bare = _fresh("pass", args.imports)
    print(f"interpreter alone {bare:.2f} s; import pipeline {cheap:.2f} s; from pipeline import stylize {full:.2f} s")


if __name__ == "__main__":
    main()
