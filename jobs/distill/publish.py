"""Publishing a distilled bundle and the rule that moves ``<publish>/latest`` to it.

The bundle format itself (file names, card, pointer) belongs to :mod:`models.bundle`; this
module decides whether a new bundle may replace the current one. ``latest`` is what every
``stylize --weights <publish>/latest`` run loads, and stylize needs levels 1-5, so a bundle
is promoted only if it has every level the current one has and is no worse on each: a
``--levels 1,2`` run that beats ``latest`` on two levels must not replace a five-level bundle.

With no ``latest`` yet there is nothing to compare with, so the first bundle must clear a
quality floor instead: on every level it has, a held-out PSNR at most ``margin`` dB below
the CD 16x weights embedded in the package, measured on the same images (or an explicit
``promote_first``). A ten-step run is published under its run id but does not become
``latest``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jobs.distill.evaluate import weight_set_psnr
from models import CD16xWeights, bundle, resolve_weights

__all__ = ["DEFAULT_MARGIN_DB", "Promotion", "first_promotion_shortfall", "promote", "publish", "should_promote"]

log = logging.getLogger("ultrastyle.distill")

DEFAULT_MARGIN_DB = 6.0  # how far below the embedded CD 16x weights a first bundle may score


@dataclass(frozen=True)
class Promotion:
    """The promotion decision for one bundle.

    Attributes:
        promoted: whether ``latest`` now names the bundle.
        reason: one line saying why (or why not).
        current: held-out PSNR per level of the bundle ``latest`` named before, ``None`` if none.
        reference: held-out PSNR per level of the embedded CD 16x weights when there was no
            ``latest`` (the first-promotion floor's yardstick), else ``None``.
    """

    promoted: bool
    reason: str
    current: dict[int, float] | None = None
    reference: dict[int, float] | None = None


def should_promote(candidate: Mapping[int, float], current: Mapping[int, float] | None) -> bool:
    """Whether a bundle scoring ``candidate`` may replace one scoring ``current``.

    Args:
        candidate: held-out PSNR (dB) per level of the new bundle.
        current: the same for the current ``latest`` on the same images, ``None`` when there
            is no ``latest`` yet (then any bundle is promoted).

    Returns:
        True when the candidate has every level of ``current`` and, on each, a PSNR at least
        as high (equal counts as no worse). Levels only the candidate has do not matter.
    """
    if current is None:
        return True
    return all(k in candidate and candidate[k] >= psnr for k, psnr in current.items())


def first_promotion_shortfall(
    candidate: Mapping[int, float], reference: Mapping[int, float], margin: float
) -> tuple[int, float] | None:
    """The level where a first bundle falls furthest below ``reference - margin``, or ``None``.

    Args:
        candidate: held-out PSNR (dB) per level of the new bundle.
        reference: the same, for the same levels, of the embedded CD 16x weights.
        margin: how many dB below ``reference`` a level may score and still pass.

    Returns:
        ``None`` when every level of ``candidate`` scores at least ``reference - margin``,
        else ``(level, dB below reference)`` for the level with the largest gap.
    """
    gaps = {k: reference[k] - v for k, v in candidate.items() if v < reference[k] - margin}
    if not gaps:
        return None
    level = max(gaps, key=lambda k: gaps[k])
    return level, gaps[level]


def _fmt_psnr(psnrs: Mapping[int, float]) -> str:
    return " ".join(f"L{k}={v:.2f}dB" for k, v in sorted(psnrs.items()))


def _first_promotion(
    candidate: Mapping[int, float],
    images: Sequence[torch.Tensor],
    *,
    promote_first: bool,
    margin: float,
) -> Promotion:
    if promote_first:
        return Promotion(True, "promoted: no current bundle, and --promote-first was given")
    embedded = CD16xWeights.EMBEDDED.value
    reference = {k: v for k, v in weight_set_psnr(embedded, images).items() if k in candidate}
    shortfall = first_promotion_shortfall(candidate, reference, margin)
    if shortfall is None:
        return Promotion(
            True,
            f"promoted: no current bundle, and every level is within {margin:g} dB of the embedded CD 16x weights "
            f"({_fmt_psnr(candidate)} vs {_fmt_psnr(reference)})",
            reference=reference,
        )
    level, gap = shortfall
    return Promotion(
        False,
        f"not promoted: no current bundle to compare with, and level {level} scores {candidate[level]:.2f} dB, "
        f"{gap:.2f} dB below the embedded CD 16x weights ({reference[level]:.2f} dB; a first bundle may be at "
        f"most {margin:g} dB below): train longer, or pass --promote-first",
        reference=reference,
    )


def promote(
    publish_uri: str,
    run_id: str,
    candidate: Mapping[int, float],
    images: Sequence[torch.Tensor],
    *,
    promote_first: bool = False,
    margin: float = DEFAULT_MARGIN_DB,
    storage_options: dict[str, Any] | None = None,
) -> Promotion:
    """Point ``<publish>/latest`` at ``run_id`` if the bundle deserves it.

    With a ``latest``: if :func:`should_promote` allows it; the current bundle is evaluated
    again, on every level it has, on the same held-out ``images``, so the comparison does not
    depend on what data the older run held out. Without one: if ``promote_first``, or if
    :func:`first_promotion_shortfall` finds no level more than ``margin`` dB below the
    embedded CD 16x weights on the same images.

    Args:
        candidate: held-out PSNR per level of the bundle ``run_id``.
        images: the held-out images ``candidate`` was measured on.
        promote_first: promote a first bundle whatever it scores.
        margin: dB a first bundle may score below the embedded CD 16x weights on each level.

    Returns:
        The decision, with its one-line reason, also logged.
    """
    if bundle.read_latest(publish_uri, storage_options) is None:
        decision = _first_promotion(candidate, images, promote_first=promote_first, margin=margin)
    else:
        wset = resolve_weights(bundle.latest_uri(publish_uri), storage_options)
        current = weight_set_psnr(wset, images, storage_options=storage_options)
        promoted = should_promote(candidate, current)
        reason = (
            "promoted: no worse than the current bundle on each of its levels"
            if promoted
            else "not promoted: the current bundle has a level this one lacks, or scores better on one"
        )
        decision = Promotion(promoted, f"{reason} ({_fmt_psnr(candidate)} vs {_fmt_psnr(current)})", current=current)
    if decision.promoted:
        bundle.write_latest(publish_uri, run_id, storage_options=storage_options)
    log.info("%s as %s: %s", run_id, bundle.latest_uri(publish_uri), decision.reason)
    return decision


def publish(
    publish_uri: str,
    run_id: str,
    states: Mapping[str, Mapping[str, torch.Tensor]],
    card: Mapping[str, Any],
    candidate: Mapping[int, float],
    images: Sequence[torch.Tensor],
    *,
    promote_first: bool = False,
    margin: float = DEFAULT_MARGIN_DB,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the bundle (:func:`models.bundle.write_bundle`), then :func:`promote` it.

    Returns:
        ``bundle`` (its URI), ``promoted``, ``promotion`` (the one-line reason),
        ``previous_psnr`` (the current bundle's PSNR per level, as strings to dB, or ``None``)
        and ``reference_psnr`` (the embedded CD 16x weights' when there was no current
        bundle, else ``None``) for the run's summary.
    """
    uri = bundle.write_bundle(publish_uri, run_id, states, card, storage_options=storage_options)
    log.info("published bundle %s (%s)", uri, ", ".join(sorted(states)))
    decision = promote(
        publish_uri, run_id, candidate, images, promote_first=promote_first, margin=margin,
        storage_options=storage_options,
    )  # fmt: skip

    def as_card(psnrs: Mapping[int, float] | None) -> dict[str, float] | None:
        return None if psnrs is None else {str(k): round(v, 3) for k, v in psnrs.items()}

    return {
        "bundle": uri,
        "promoted": decision.promoted,
        "promotion": decision.reason,
        "previous_psnr": as_card(decision.current),
        "reference_psnr": as_card(decision.reference),
    }
