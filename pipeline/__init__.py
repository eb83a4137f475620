"""ultrastyle's stylization engine: the Python API on top, three layers below.

The API (:mod:`pipeline.api`), importable from here::

    from pipeline import Stylizer, stylize, stylize_file

- :func:`stylize`: a picture in memory (numpy array, PIL image) or a URI, stylized in memory;
- :func:`stylize_file`: image file to image file (any fsspec URIs), streamed and exact tiled,
  the same run as ``ultrastyle stylize``;
- :class:`Stylizer`: the models loaded once for many calls, with style statistics cached.

Their keyword arguments are the fields of :class:`StyleOptions` (:mod:`pipeline.options`). The
names are imported when first used, so ``import pipeline`` stays cheap (no torch).

The layers:

- :mod:`pipeline.imaging`: images in and out (libvips decode and encode, streamed by strips),
  the canvases a tiled run keeps each level's image on, and the rectangles that address them;
- :mod:`pipeline.engine`: the math of style transfer (feature statistics, the
  whitening-colouring transform, the whole-image cascade, the one tiled level loop, creative
  controls) and the in-process runner; it uses :mod:`pipeline.imaging`, never Ray;
- :mod:`pipeline.batch`: the batch job on Ray (driver, model actors, the Ray tile executor,
  the manifest, preflight checks and settings fingerprints), built on the two layers above.

Beside them, :mod:`pipeline.options` holds the settings every layer takes: the frozen
:class:`~pipeline.options.StyleOptions` and :class:`~pipeline.options.BatchOptions` that the
command line, the batch job and Python callers build (it imports neither torch nor Ray).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.api import RunReport, Stylizer, stylize, stylize_file
    from pipeline.options import OptionError, StyleOptions

__all__ = ["OptionError", "RunReport", "StyleOptions", "Stylizer", "__version__", "stylize", "stylize_file"]

# Public name -> the module that defines it, imported on first use (PEP 562).
_LAZY = {
    "OptionError": "pipeline.options",
    "RunReport": "pipeline.api",
    "StyleOptions": "pipeline.options",
    "Stylizer": "pipeline.api",
    "stylize": "pipeline.api",
    "stylize_file": "pipeline.api",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from pipeline.version import package_version

        return package_version()
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
