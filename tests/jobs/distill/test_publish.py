"""jobs/distill/publish.py: a bundle is promoted to ``latest`` only if it has every level the
current one has and is no worse on each, measured on real held-out images with real weights;
the first bundle only within a margin of the embedded CD 16x weights, or when asked to."""

from __future__ import annotations

import pytest
import torch

from jobs.distill.data import load_eval_images
from jobs.distill.evaluate import evaluate_levels
from jobs.distill.publish import first_promotion_shortfall, promote, publish, should_promote
from models import CD16X, LEVELS, Decoder, Encoder, bundle, resolve_weights, small_decoder, small_encoder

CARD = {"teacher": "test", "widths": list(CD16X.widths), "level1_width": CD16X.level1_width}
CARD["embed_widths"] = list(CD16X.embed_widths)


def test_rule_needs_every_current_level_and_no_worse_on_each():
    assert should_promote({1: 20.0}, None)
    assert should_promote({1: 20.0, 2: 19.0}, {1: 19.0, 2: 19.0})  # equal is no worse
    assert should_promote({1: 20.0, 2: 19.0, 3: 5.0}, {1: 19.0, 2: 19.0})  # extra levels do not count
    assert not should_promote({1: 20.0, 2: 18.0}, {1: 19.0, 2: 19.0})  # the mean is no worse, level 2 is
    assert not should_promote({1: 25.0, 2: 25.0}, {k: 10.0 for k in LEVELS})  # levels 3-5 missing
    assert not should_promote({2: 30.0}, {1: 10.0})


@pytest.fixture(scope="module")
def modules(weights_dir):
    """Per level, the official (good) encoder/decoder and a randomly initialised (bad) pair."""
    official = resolve_weights(str(weights_dir))
    torch.manual_seed(0)
    return {
        "good": {k: (small_encoder(k, weights=official), small_decoder(k, weights=official)) for k in LEVELS},
        "bad": {k: (Encoder(k, CD16X), Decoder(k, CD16X)) for k in LEVELS},
    }


@pytest.fixture(scope="module")
def images(content_dir):
    return load_eval_images([str(content_dir / "rocket_420.jpg")], side=64)


def _publish(publish_uri, run_id, pairs, images) -> dict[int, float]:
    """Write a bundle of ``pairs`` (level -> (encoder, decoder)) and return its held-out PSNR."""
    states = {}
    for k, (enc, dec) in pairs.items():
        states[bundle.weight_name(k, "SE")], states[bundle.weight_name(k, "SD")] = enc.state_dict(), dec.state_dict()
    bundle.write_bundle(publish_uri, run_id, states, CARD)
    return evaluate_levels({k: e for k, (e, _) in pairs.items()}, {k: d for k, (_, d) in pairs.items()}, images)


def test_first_promotion_floor_names_the_level_furthest_below():
    reference = {1: 44.0, 2: 30.0}
    assert first_promotion_shortfall({1: 39.0, 2: 24.5}, reference, 6.0) is None  # within 6 dB on both
    assert first_promotion_shortfall({1: 37.0, 2: 20.0}, reference, 6.0) == (2, 10.0)
    assert first_promotion_shortfall({1: 30.0, 2: 23.0}, reference, 6.0) == (1, 14.0)  # the worst of two


def test_first_bundle_needs_the_floor_or_promote_first(modules, images, tmp_path):
    publish_uri = str(tmp_path)
    bad = {k: modules["bad"][k] for k in (1, 2)}  # untrained: far below the embedded weights
    psnr = _publish(publish_uri, "bad", bad, images)
    decision = promote(publish_uri, "bad", psnr, images)
    assert not decision.promoted and bundle.read_latest(publish_uri) is None
    assert decision.reason.startswith("not promoted: no current bundle") and "--promote-first" in decision.reason
    assert "\n" not in decision.reason and sorted(decision.reference) == [1, 2]
    good = {k: modules["good"][k] for k in (1, 2)}  # the embedded weights themselves: 0 dB below
    decision = promote(publish_uri, "good", _publish(publish_uri, "good", good, images), images)
    assert decision.promoted and decision.reason.startswith("promoted: no current bundle, and every level is within")
    assert bundle.read_latest(publish_uri) == "good"
    other = str(tmp_path / "other")
    decision = promote(other, "bad", _publish(other, "bad", bad, images), images, promote_first=True)
    assert decision.promoted and decision.reference is None and bundle.read_latest(other) == "bad"


def test_two_level_run_better_on_its_levels_does_not_replace_five(modules, images, tmp_path):
    publish_uri = str(tmp_path)
    weak = {k: modules["bad" if k <= 2 else "good"][k] for k in LEVELS}  # levels 1-2 untrained
    assert promote(
        publish_uri, "five", _publish(publish_uri, "five", weak, images), images, promote_first=True
    ).promoted
    partial = {k: modules["good"][k] for k in (1, 2)}
    psnr = _publish(publish_uri, "two", partial, images)
    decision = promote(publish_uri, "two", psnr, images)
    promoted, current = decision.promoted, decision.current
    assert psnr[1] > current[1] and psnr[2] > current[2]  # it does beat latest on its levels
    assert not promoted and sorted(current) == list(LEVELS)
    assert decision.reason.startswith("not promoted: the current bundle has a level this one lacks")
    assert bundle.read_latest(publish_uri) == "five"
    assert resolve_weights(bundle.latest_uri(publish_uri)).levels == LEVELS


def test_worse_on_one_level_is_not_promoted_and_no_worse_is(modules, images, tmp_path):
    publish_uri = str(tmp_path)
    good = modules["good"]
    first = promote(publish_uri, "good", _publish(publish_uri, "good", good, images), images)
    assert first.promoted and first.current is None  # the embedded weights clear their own floor
    one_bad = {k: modules["bad" if k == 3 else "good"][k] for k in LEVELS}
    decision = promote(publish_uri, "one-bad", _publish(publish_uri, "one-bad", one_bad, images), images)
    assert not decision.promoted and bundle.read_latest(publish_uri) == "good"
    psnr = _publish(publish_uri, "again", good, images)
    assert psnr == decision.current  # the same weights score the same, so they are no worse
    assert promote(publish_uri, "again", psnr, images).promoted
    assert resolve_weights(bundle.latest_uri(publish_uri)).model_id == "bundle:again"


def test_publish_reports_bundle_and_previous_scores(modules, images, tmp_path):
    pairs = {1: modules["good"][1]}
    states = {"1SE": pairs[1][0].state_dict(), "1SD": pairs[1][1].state_dict()}
    psnr = evaluate_levels({1: pairs[1][0]}, {1: pairs[1][1]}, images)
    first = publish(str(tmp_path), "r1", states, CARD, psnr, images)
    assert first["bundle"] == f"{tmp_path}/r1" and first["promoted"] and first["previous_psnr"] is None
    assert first["reference_psnr"] == {"1": round(psnr[1], 3)}  # these are the embedded weights
    second = publish(str(tmp_path), "r2", states, CARD, psnr, images)
    assert second["promoted"] and second["previous_psnr"] == {"1": round(psnr[1], 3)}
    assert second["reference_psnr"] is None and second["promotion"].startswith("promoted: no worse")
