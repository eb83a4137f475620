"""Tile planning on the padded canvas: 16-aligned cores, halos clipped to the canvas.

Cores partition the canvas (the image reflect-padded to a multiple of 16). A tile's region is
its core grown by a halo on every side and clipped to the canvas, so at the canvas border a
tile pads by reflection exactly as the whole image does, and inside it the halo keeps the
tile's own padding away from the core.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.receptive import HALO_ALIGN

__all__ = ["TILE_ALIGN", "Rect", "Tile", "canvas_size", "plan_tiles"]

# Cores and halos are multiples of this, so all four 2x2 max-pool grids of a tile coincide
# with the whole image's (the halo arithmetic's own alignment).
TILE_ALIGN = HALO_ALIGN


@dataclass(frozen=True)
class Rect:
    """Half-open pixel rectangle ``[y0, y1) x [x0, x1)``."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def area(self) -> int:
        return self.height * self.width

    def grow(self, margin: int, bounds: Rect) -> Rect:
        """This rectangle grown by ``margin`` on every side, clipped to ``bounds``."""
        return Rect(
            max(self.y0 - margin, bounds.y0),
            max(self.x0 - margin, bounds.x0),
            min(self.y1 + margin, bounds.y1),
            min(self.x1 + margin, bounds.x1),
        )

    def scaled(self, factor: int) -> Rect:
        """Coordinates divided by ``factor`` (exact for rectangles aligned to it)."""
        if any(v % factor for v in (self.y0, self.x0, self.y1, self.x1)):
            raise ValueError(f"{self} is not aligned to {factor}")
        return Rect(self.y0 // factor, self.x0 // factor, self.y1 // factor, self.x1 // factor)

    def relative_to(self, outer: Rect) -> Rect:
        """This rectangle in the coordinates of ``outer`` (which must contain it)."""
        return Rect(self.y0 - outer.y0, self.x0 - outer.x0, self.y1 - outer.y0, self.x1 - outer.x0)

    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices for indexing the last two axes of an array."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


@dataclass(frozen=True)
class Tile:
    """One tile: ``index`` (row, col) in the grid and its ``core`` on the canvas."""

    index: tuple[int, int]
    core: Rect


def canvas_size(height: int, width: int) -> tuple[int, int]:
    """Size of the reflect-padded canvas: each side rounded up to a multiple of 16."""
    return -(-height // TILE_ALIGN) * TILE_ALIGN, -(-width // TILE_ALIGN) * TILE_ALIGN


def plan_tiles(height: int, width: int, *, tile: int) -> list[Tile]:
    """Cut the canvas of an ``height`` x ``width`` image into cores of at most ``tile`` px.

    Args:
        height, width: the image size (the canvas is :func:`canvas_size` of it).
        tile: core side in pixels, a positive multiple of 16; edge cores are smaller.

    Returns:
        Tiles in row-major order whose cores partition the canvas.
    """
    if tile <= 0 or tile % TILE_ALIGN:
        raise ValueError(f"tile must be a positive multiple of {TILE_ALIGN}, got {tile}")
    ch, cw = canvas_size(height, width)
    tiles = []
    for row, y in enumerate(range(0, ch, tile)):
        for col, x in enumerate(range(0, cw, tile)):
            tiles.append(Tile((row, col), Rect(y, x, min(y + tile, ch), min(x + tile, cw))))
    return tiles
