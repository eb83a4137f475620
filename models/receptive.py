"""Receptive-field arithmetic: how far a tile's halo must reach for exact tiling.

A pixel of decoder k's output depends on a window of encoder k's input. A tile whose halo
covers that window on every side gives, inside its core, exactly the whole-image result: the
reflection padding a tile applies at its own (interior) edge then never reaches the core.
The reach is computed by walking the layer plan backwards, not taken from a table.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.family import decoder_plan, encoder_plan

__all__ = [
    "HALO_ALIGN",
    "decoder_halo",
    "decoder_reach",
    "encoder_halo",
    "encoder_reach",
    "level_halo",
    "reach",
]

# Tile origins and halos are multiples of this, so the 2x2 max-pools of a tile fall on the
# same grid as on the whole image (four pools before relu5_1).
HALO_ALIGN = 16


def reach(plan: Sequence[str]) -> int:
    """Largest distance, in full-resolution pixels, from an aligned block to an input it reads.

    ``plan`` lists layers in execution order: ``convXY`` (3x3, stride 1), ``pool`` (2x2,
    stride 2) or ``up`` (2x nearest). Grids are measured in full-resolution pixels, the finest
    grid of the plan having stride 1. Tile cores start and end on the plan's coarsest grid, so
    what a halo must cover is how far the inputs of any output pixel reach beyond the coarsest
    cell that contains it (worst case over the pixel's position in that cell).
    """
    strides = [1.0]
    for name in plan:
        if name == "pool":
            strides.append(strides[-1] * 2)
        elif name == "up":
            strides.append(strides[-1] / 2)
    finest, coarsest = min(strides), max(strides)
    s_out = int(strides[-1] / finest)
    period = int(coarsest / finest) // s_out  # output cells per coarsest cell
    worst = 0
    for phase in range(period):
        lo = hi = phase  # interval of cells on the current grid
        s = s_out
        for name in reversed(plan):
            if name.startswith("conv"):
                lo, hi = lo - 1, hi + 1
            elif name == "pool":  # output cell j covers input cells 2j and 2j + 1
                lo, hi, s = 2 * lo, 2 * hi + 1, s // 2
            elif name == "up":  # output cell j reads input cell j // 2
                lo, hi, s = lo // 2, hi // 2, s * 2
        block_end = period * s_out - 1  # the coarsest cell is [0, block_end] in pixels
        worst = max(worst, -lo * s, (hi + 1) * s - 1 - block_end)
    return worst


def encoder_reach(level: int) -> int:
    """Reach of encoder ``level`` (input pixels beyond a feature cell's own footprint)."""
    return reach(encoder_plan(level))


def decoder_reach(level: int) -> int:
    """Reach of decoder ``level``, measured in output pixels."""
    return reach(decoder_plan(level))


def level_halo(level: int) -> int:
    """Halo (pixels per side) that makes the encode-transform-decode of one tile exact.

    The decoder output at a core pixel needs feature cells within ``decoder_reach`` of it,
    and those cells need input within ``encoder_reach`` of their footprints, so the halo is
    the reach of the composed plan, rounded up to :data:`HALO_ALIGN`.
    """
    return _align(reach(encoder_plan(level) + decoder_plan(level)))


def _align(pixels: int) -> int:
    return -(-pixels // HALO_ALIGN) * HALO_ALIGN


def encoder_halo(level: int) -> int:
    """Halo that makes encoder ``level``'s features exact on a 16-aligned core."""
    return _align(encoder_reach(level))


def decoder_halo(level: int) -> int:
    """Halo of features (in pixels) that makes decoder ``level``'s output exact on a core."""
    return _align(decoder_reach(level))
