"""Publishing a distilled bundle and the rule that moves ``<publish>/latest`` to it.

The bundle format itself (file names, card, pointer) belongs to :mod:`models.bundle`; this
module decides whether a new bundle may replace the current one. ``latest`` is what every
``stylize --weights <publish>/latest`` run loads, and stylize needs levels 1-5, so a bundle
is promoted only if it has every level the current one has and is no worse on each: a
``--levels 1,2`` run that beats ``latest`` on two levels must not replace a five-level bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from jobs.distill.evaluate import weight_set_psnr
from models import bundle, resolve_weights

__all__ = ["promote", "publish", "should_promote"]

log = logging.getLogger(__name__)


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


def _fmt_psnr(psnrs: Mapping[int, float]) -> str:
    return " ".join(f"L{k}={v:.2f}dB" for k, v in sorted(psnrs.items()))


def promote(
    publish_uri: str,
    run_id: str,
    candidate: Mapping[int, float],
    images: Sequence[torch.Tensor],
    *,
    storage_options: dict[str, Any] | None = None,
) -> tuple[bool, dict[int, float] | None]:
    """Point ``<publish>/latest`` at ``run_id`` if :func:`should_promote` allows it.

    The current bundle is evaluated again, on every level it has, on the same held-out
    ``images``, so the comparison does not depend on what data the older run held out.

    Args:
        candidate: held-out PSNR per level of the bundle ``run_id``.
        images: the held-out images ``candidate`` was measured on.

    Returns:
        Whether ``latest`` now names ``run_id``, and the current bundle's PSNR per level
        (``None`` when there was no ``latest``).
    """
    current = None
    if bundle.read_latest(publish_uri, storage_options) is not None:
        wset = resolve_weights(bundle.latest_uri(publish_uri), storage_options)
        current = weight_set_psnr(wset, images, storage_options=storage_options)
    promoted = should_promote(candidate, current)
    if promoted:
        bundle.write_latest(publish_uri, run_id, storage_options=storage_options)
    log.info(
        "%s %s as %s (held-out PSNR %s vs current %s)",
        "promoted" if promoted else "kept the current bundle; did not promote",
        run_id,
        bundle.latest_uri(publish_uri),
        _fmt_psnr(candidate),
        "none" if current is None else _fmt_psnr(current),
    )
    return promoted, current


def publish(
    publish_uri: str,
    run_id: str,
    states: Mapping[str, Mapping[str, torch.Tensor]],
    card: Mapping[str, Any],
    candidate: Mapping[int, float],
    images: Sequence[torch.Tensor],
    *,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the bundle (:func:`models.bundle.write_bundle`), then :func:`promote` it.

    Returns:
        ``bundle`` (its URI), ``promoted`` and ``previous_psnr`` (the current bundle's PSNR
        per level, as strings to dB, or ``None``) for the run's summary.
    """
    uri = bundle.write_bundle(publish_uri, run_id, states, card, storage_options=storage_options)
    log.info("published bundle %s (%s)", uri, ", ".join(sorted(states)))
    promoted, current = promote(publish_uri, run_id, candidate, images, storage_options=storage_options)
    previous = None if current is None else {str(k): round(v, 3) for k, v in current.items()}
    return {"bundle": uri, "promoted": promoted, "previous_psnr": previous}
