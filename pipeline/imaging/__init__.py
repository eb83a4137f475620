"""Images in and out, and the canvases a tiled run keeps them on: no torch math, no Ray."""
