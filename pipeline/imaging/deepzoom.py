"""The viewer page written beside a DeepZoom output: OpenSeadragon, inlined, so it works offline.

A gigapixel result is only useful if it can be looked at. libvips writes the DeepZoom
pyramid (``name.dzi`` and ``name_files/<level>/<col>_<row>.jpg``); this page, ``name.html``,
shows it with OpenSeadragon 6.1.1 (vendored in ``openseadragon/``, BSD-3-Clause): wheel,
mouse drag, touch drag and pinch to pan and zoom, a navigator (the overview map), buttons for
zoom, home and full screen, and the keyboard (arrows or WASD pan, ``=``/``-`` zoom, ``0`` fits
the whole picture, ``r`` rotates, ``f`` flips).

The page is one file that needs nothing but its tiles:

- the library, its licence and the four buttons' images are inlined, not referenced from a
  copy written beside the page. An output is then ``name.dzi``, ``name_files/`` and
  ``name.html`` and nothing else: copied or downloaded on its own it still works; in a bucket
  of outputs no page depends on a shared script that a later run, of another version, could
  replace or delete; and the atomic publishing of an output
  (:func:`pipeline.imaging.imageio.local_output`) covers the page, as it writes no file
  outside the output's own names. The cost is 0.39 MB per page: 3.5 % of the 11 MB pyramid
  of a stylized 3840 x 2160 photo, about 0.03 % of a gigapixel one (docs/benchmarks.md);
- the pyramid's geometry is written into the page as an inline tile source rather than
  fetched from ``name.dzi``: a page opened from a folder (``file://``) may not read another
  file with a request, only load images, which is how the tiles arrive, relative to the page.
  Served from a bucket, the same relative URLs reach the tiles.

``#view`` carries ``data-tiles-loaded`` (tiles loaded so far) and ``data-fully-loaded``
(``true`` once every tile the view needs at its resolution is drawn), for tests and scripts.
"""

from __future__ import annotations

import base64
import html
import json
import re
from functools import cache
from importlib import resources

__all__ = ["viewer_page"]

_VENDOR = resources.files("pipeline.imaging") / "openseadragon"

# OpenSeadragon's navImages keys, and the file stems of the buttons the page shows.
_BUTTONS = {"zoomIn": "zoomin", "zoomOut": "zoomout", "home": "home", "fullpage": "fullpage"}
_STATES = {"REST": "rest", "GROUP": "grouphover", "HOVER": "hover", "DOWN": "pressed"}

_PLACEHOLDER = re.compile(r"__(TITLE|TILE_SOURCE|NAV_IMAGES|LICENSE|LIBRARY)__")

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<link rel="icon" href="data:,">
<style>
html, body { margin: 0; height: 100%; overflow: hidden; background: #1e1e1e; }
#view { position: absolute; inset: 0; }
</style>
</head>
<body>
<div id="view" data-tiles-loaded="0" data-fully-loaded="false"></div>
<script>
/*
OpenSeadragon, https://openseadragon.github.io/

__LICENSE__
*/
__LIBRARY__
</script>
<script>
"use strict";
const view = document.getElementById("view");
const viewer = OpenSeadragon({
  element: view,
  tileSources: __TILE_SOURCE__,
  prefixUrl: "",
  navImages: __NAV_IMAGES__,
  showNavigator: true,
  navigatorPosition: "BOTTOM_RIGHT",
  maxZoomPixelRatio: 4,
});
let loaded = 0;
viewer.addHandler("tile-loaded", () => { loaded += 1; view.dataset.tilesLoaded = loaded; });
viewer.addHandler("fully-loaded-change", (e) => { view.dataset.fullyLoaded = e.fullyLoaded; });
// Keys go to the focused viewer: take the focus at once, so they work without a first click.
viewer.addHandler("open", () => viewer.canvas.focus());
</script>
</body>
</html>
"""


def _script_safe(json_text: str) -> str:
    """JSON text unable to end the ``<script>`` element it sits in (``<`` escaped as ``\\u003c``)."""
    return json_text.replace("<", "\\u003c")


@cache
def _vendored() -> tuple[str, str, str]:
    """The library, its licence text and the buttons' ``navImages`` as JSON of data URIs."""
    library = (_VENDOR / "openseadragon.min.js").read_text(encoding="utf-8")
    licence = (_VENDOR / "LICENSE.txt").read_text(encoding="utf-8").strip()
    images = {
        key: {
            state: "data:image/png;base64,"
            + base64.b64encode((_VENDOR / "images" / f"{stem}_{suffix}.png").read_bytes()).decode("ascii")
            for state, suffix in _STATES.items()
        }
        for key, stem in _BUTTONS.items()
    }
    if "</script" in (library + licence).lower() or "*/" in licence:
        raise RuntimeError(f"the vendored OpenSeadragon in {_VENDOR} cannot be inlined in a <script> element")
    return library, licence, json.dumps(images)


def viewer_page(name: str, width: int, height: int, *, tile: int, overlap: int, suffix: str) -> str:
    """The viewer page for the pyramid ``name.dzi`` / ``name_files/`` (``name`` without folder).

    Args:
        name: the pyramid's base name, as libvips' ``dzsave`` was given it; the page finds the
            tiles at ``name_files/`` relative to itself.
        width, height: the full-resolution image size in pixels.
        tile, overlap: ``dzsave``'s ``tile_size`` and ``overlap`` in pixels.
        suffix: the tiles' file extension without the dot (``jpg``, ``png``).

    Returns:
        The HTML text of a page that needs no network and no other file than the tiles.
    """
    library, licence, nav_images = _vendored()
    source = {
        "Image": {
            "xmlns": "http://schemas.microsoft.com/deepzoom/2008",
            "Url": f"{name}_files/",
            "Format": suffix,
            "Overlap": str(overlap),
            "TileSize": str(tile),
            "Size": {"Width": str(width), "Height": str(height)},
        }
    }
    parts = {
        "__TITLE__": html.escape(name),
        "__TILE_SOURCE__": _script_safe(json.dumps(source)),
        "__NAV_IMAGES__": nav_images,
        "__LICENSE__": licence,
        "__LIBRARY__": library,
    }
    # One pass: no inserted text (a name, the library) is searched for placeholders again.
    return _PLACEHOLDER.sub(lambda match: parts[match.group(0)], _PAGE)
