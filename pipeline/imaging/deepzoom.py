"""A self-contained HTML page that shows a DeepZoom pyramid, written beside a ``.dzi`` output.

A gigapixel result is only useful if it can be looked at. libvips writes the DeepZoom
pyramid (``name.dzi`` and ``name_files/<level>/<col>_<row>.jpg``); this page, ``name.html``,
shows it zoomable (wheel or +/- to zoom, drag to pan, double-click to zoom in) with no
library and no network: the pyramid's geometry is written into the page, so it works opened
from a local folder as well as served from a bucket, and tiles load as ``<img>`` elements
relative to the page; while a new level loads, the previous level's tiles stay underneath.
``#view`` carries ``data-level`` (the level drawn) and ``data-tiles-loaded`` (tiles loaded).
"""

from __future__ import annotations

import html
import json

__all__ = ["viewer_page"]

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
html, body { margin: 0; height: 100%; overflow: hidden; background: #1e1e1e; }
#view { position: absolute; inset: 0; overflow: hidden; cursor: grab; touch-action: none; }
#view img { position: absolute; user-select: none; -webkit-user-drag: none; }
#info { position: absolute; left: 8px; bottom: 6px; color: #ccc; font: 12px sans-serif; }
</style>
</head>
<body>
<div id="view" data-tiles-loaded="0"></div>
<div id="info"></div>
<script>
"use strict";
const dz = __GEOMETRY__;
const view = document.getElementById("view");
const info = document.getElementById("info");
const maxLevel = Math.ceil(Math.log2(Math.max(dz.width, dz.height)));
const tiles = new Map();
let scale = 1, ox = 0, oy = 0, loaded = 0, current = 0, wanted = new Set();

function fit() {
  scale = Math.min(view.clientWidth / dz.width, view.clientHeight / dz.height);
  ox = (view.clientWidth - dz.width * scale) / 2;
  oy = (view.clientHeight - dz.height * scale) / 2;
}

function geometry(level) {
  const f = 2 ** (maxLevel - level);                  // image pixels per level pixel
  return { f: f, w: Math.ceil(dz.width / f), h: Math.ceil(dz.height / f) };
}

function place(img) {
  const [level, x, y] = img.dataset.key.split(/[/_]/).map(Number);
  const g = geometry(level), s = scale * g.f, t = dz.tile, o = dz.overlap;   // s: screen px per level px
  const left = x * t - (x > 0 ? o : 0), up = y * t - (y > 0 ? o : 0);
  img.style.left = (ox + left * s) + "px";
  img.style.top = (oy + up * s) + "px";
  img.style.width = ((Math.min(g.w, (x + 1) * t + o) - left) * s) + "px";
  img.style.height = ((Math.min(g.h, (y + 1) * t + o) - up) * s) + "px";
  img.style.zIndex = level === current ? 1 : 0;
}

// Tiles of other levels stay underneath until the current view's tiles have all loaded.
function tidy() {
  const ready = [...wanted].every((key) => tiles.get(key).complete);
  for (const [key, img] of tiles) {
    if (!wanted.has(key) && (ready || Number(key.split("/")[0]) === current)) { img.remove(); tiles.delete(key); }
  }
}

function draw() {
  current = Math.max(0, Math.min(maxLevel, maxLevel + Math.ceil(Math.log2(scale))));
  const g = geometry(current), s = scale * g.f, t = dz.tile;
  const x0 = Math.max(0, Math.floor(-ox / s / t));
  const x1 = Math.min(Math.ceil(g.w / t) - 1, Math.floor((view.clientWidth - ox) / s / t));
  const y0 = Math.max(0, Math.floor(-oy / s / t));
  const y1 = Math.min(Math.ceil(g.h / t) - 1, Math.floor((view.clientHeight - oy) / s / t));
  wanted = new Set();
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const key = current + "/" + x + "_" + y;
      wanted.add(key);
      if (!tiles.has(key)) {
        const img = new Image();
        img.dataset.key = key;
        img.onload = () => { loaded += 1; view.dataset.tilesLoaded = loaded; tidy(); };
        img.src = dz.url + key + "." + dz.format;
        tiles.set(key, img);
        view.appendChild(img);
      }
    }
  }
  for (const img of tiles.values()) place(img);
  tidy();
  view.dataset.level = current;
  info.textContent = dz.width + " x " + dz.height + " px, " + (100 * scale).toFixed(1) + " %";
}

function zoom(factor, cx, cy) {
  const smallest = 0.5 * Math.min(view.clientWidth / dz.width, view.clientHeight / dz.height);
  const next = Math.min(4, Math.max(smallest, scale * factor));
  ox = cx - (cx - ox) * next / scale;
  oy = cy - (cy - oy) * next / scale;
  scale = next;
  draw();
}

view.addEventListener("wheel", (e) => { e.preventDefault(); zoom(Math.exp(-e.deltaY / 300), e.clientX, e.clientY); },
                      { passive: false });
view.addEventListener("dblclick", (e) => zoom(2, e.clientX, e.clientY));
let drag = null;
view.addEventListener("pointerdown", (e) => { drag = [e.clientX, e.clientY]; view.setPointerCapture(e.pointerId); });
view.addEventListener("pointermove", (e) => {
  if (!drag) return;
  ox += e.clientX - drag[0]; oy += e.clientY - drag[1]; drag = [e.clientX, e.clientY]; draw();
});
view.addEventListener("pointerup", () => { drag = null; });
window.addEventListener("keydown", (e) => {
  if (e.key === "+" || e.key === "=") zoom(1.5, view.clientWidth / 2, view.clientHeight / 2);
  if (e.key === "-") zoom(1 / 1.5, view.clientWidth / 2, view.clientHeight / 2);
  if (e.key === "0") { fit(); draw(); }
});
window.addEventListener("resize", () => { fit(); draw(); });
fit();
draw();
</script>
</body>
</html>
"""


def viewer_page(name: str, width: int, height: int, *, tile: int, overlap: int, suffix: str) -> str:
    """The viewer page for the pyramid ``name.dzi`` / ``name_files/`` (``name`` without folder).

    Args:
        name: the pyramid's base name, as libvips' ``dzsave`` was given it.
        width, height: the full-resolution image size.
        tile, overlap: ``dzsave``'s ``tile_size`` and ``overlap``.
        suffix: the tiles' file extension without the dot (``jpg``, ``png``).
    """
    geometry = {"url": f"{name}_files/", "width": width, "height": height, "tile": tile, "overlap": overlap,
                "format": suffix}
    # The JSON sits inside a <script>: escape "<" so no value can close it.
    script_safe = json.dumps(geometry).replace("<", "\\u003c")
    return _PAGE.replace("__TITLE__", html.escape(name)).replace("__GEOMETRY__", script_safe)
