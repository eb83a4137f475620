"""ultrastyle's stylization engine, in three layers.

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
