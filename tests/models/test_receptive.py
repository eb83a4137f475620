"""models/receptive.py: the computed reach checked against a measured one.

The measurement perturbs one input pixel (or feature cell) of a real encoder/decoder and sees
which outputs change. With signed random weights a change can die in a ReLU or lose a
max-pool, so the networks get random *positive* weights, zero biases and an all-zero input:
then every value is >= 0, every cell that depends on the perturbed one becomes strictly
positive, a max-pool passes it on, and the set of changed outputs is exactly the dependency
cone. The weakest paths (about 1e-14) stay far above float32's underflow.

Reach is measured as :func:`reach` defines it: how far a changed output's input lies beyond the
aligned block (cell of the plan's coarsest grid, ``2**(level-1)`` px) that holds the output.
"""

from __future__ import annotations

import pytest
import torch

from models.family import LEVELS, Decoder, Encoder, decoder_plan, encoder_plan
from models.receptive import (
    HALO_ALIGN,
    decoder_halo,
    decoder_reach,
    encoder_halo,
    encoder_reach,
    level_halo,
    reach,
)

# Height 32 keeps level 5 at 2 cells (reflection padding works); only columns are measured.
HEIGHT = 32
# Image width per level: over twice the level's reach plus a grid cell, fixed here rather than
# derived from the code under test, so that a cone wider than computed still fits.
WIDTH = {1: 64, 2: 96, 3: 128, 4: 256, 5: 384}

# Measured reach (pixels) of each level, recorded when the test was written.
MEASURED = {
    # level: (encoder, decoder, encoder + decoder)
    1: (1, 1, 2),
    2: (4, 4, 8),
    3: (10, 12, 22),
    4: (30, 32, 62),
    5: (70, 80, 150),
}


def _positive(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight"):
                p.uniform_(0.5, 1.5).div_(p[0].numel())
            else:
                p.zero_()
    return module.eval()


def _changed_columns(out: torch.Tensor) -> list[torch.Tensor]:
    """Per batch item, the columns where ``out`` is non-zero in any channel or row."""
    hit = out.abs().amax(dim=(1, 2)) > 0
    return [torch.nonzero(row).flatten() for row in hit]


def _beyond(in_lo: torch.Tensor | int, in_hi: torch.Tensor | int, block: torch.Tensor, size: int) -> int:
    """How far the input pixels ``[in_lo, in_hi]`` lie outside the aligned blocks ``block``."""
    lo, hi = block * size, block * size + size - 1
    return int(torch.clamp(torch.maximum(lo - in_lo, in_hi - hi), min=0).max())


@pytest.fixture(scope="module")
def measured() -> dict[int, tuple[int, int, int, list[int]]]:
    """Measured (encoder, decoder, composed, composed per phase) reach of every level.

    Every phase of the perturbed pixel within the level's block is tried, one batch item
    each; other positions repeat one of them by translation.
    """
    torch.manual_seed(0)
    result = {}
    for level in LEVELS:
        enc, dec = _positive(Encoder(level)), _positive(Decoder(level))
        s, width = 2 ** (level - 1), WIDTH[level]
        origin = width // 2
        impulses = torch.zeros(s, 3, HEIGHT, width)
        for phase in range(s):
            impulses[phase, :, HEIGHT // 2, origin + phase] = 1.0
        cells = torch.zeros(1, dec.in_channels, HEIGHT // s, width // s)
        cell = origin // s
        cells[0, :, HEIGHT // s // 2, cell] = 1.0
        with torch.inference_mode():
            features = enc(impulses)
            decoded = dec(features)
            from_cell = dec(cells)
        # Encoder: a feature cell's block is its own footprint.
        enc_reach = max(
            _beyond(origin + phase, origin + phase, cols, s) for phase, cols in enumerate(_changed_columns(features))
        )
        # Decoder: the perturbed cell's whole footprint against each changed pixel's block.
        (cols,) = _changed_columns(from_cell)
        dec_reach = _beyond(cell * s, cell * s + s - 1, cols // s, s)
        # Encoder + decoder: the perturbed pixel against each changed pixel's block.
        per_phase = [
            _beyond(origin + phase, origin + phase, cols // s, s)
            for phase, cols in enumerate(_changed_columns(decoded))
        ]
        result[level] = (enc_reach, dec_reach, max(per_phase), per_phase)
    return result


@pytest.mark.parametrize("level", LEVELS)
def test_reach_matches_measurement(level: int, measured) -> None:
    enc_m, dec_m, both_m, per_phase = measured[level]
    print(f"level {level}: measured enc/dec/both {enc_m}/{dec_m}/{both_m}, per phase {per_phase}")
    # The computed reach covers the measured one and is tight: equal for the worst phase.
    assert encoder_reach(level) == enc_m == MEASURED[level][0]
    assert decoder_reach(level) == dec_m == MEASURED[level][1]
    assert reach(encoder_plan(level) + decoder_plan(level)) == both_m == MEASURED[level][2]


@pytest.mark.parametrize("level", LEVELS)
def test_halos_are_aligned_and_cover_reach(level: int) -> None:
    composed = reach(encoder_plan(level) + decoder_plan(level))
    for halo, needed in (
        (level_halo(level), composed),
        (encoder_halo(level), encoder_reach(level)),
        (decoder_halo(level), decoder_reach(level)),
    ):
        assert halo % HALO_ALIGN == 0
        assert needed <= halo < needed + HALO_ALIGN
    assert [level_halo(k) for k in LEVELS] == [16, 16, 32, 64, 160]


def test_reach_of_elementary_plans() -> None:
    assert reach([]) == 0
    assert reach(["conv11"]) == 1
    assert reach(["conv11", "conv12"]) == 2
    # A pool's output footprint is its own 2x2 window: no reach beyond it.
    assert reach(["pool"]) == 0
    # conv after a pool reads one coarse cell (2 px) either side of the footprint.
    assert reach(["pool", "conv21"]) == 2
    # An upsampled pixel reads the coarse cell that is its own block...
    assert reach(["up"]) == 0
    # ...and a conv before the upsampling reads one coarse cell (2 px) beyond it.
    assert reach(["conv51", "up"]) == 2
