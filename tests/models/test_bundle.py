"""models/bundle.py: the bundle format's names, card, ``latest`` pointer and levels."""

from __future__ import annotations

import json

import pytest
import torch

from models import CD16X, Encoder, bundle, resolve_weights


def test_write_read_and_point_at_a_bundle(tmp_path):
    publish = str(tmp_path / "publish")
    states = {bundle.weight_name(2, "SE"): Encoder(2, CD16X).state_dict(), "2SD": {"w": torch.ones(2)}}
    card = {"widths": list(CD16X.widths), "level1_width": CD16X.level1_width, "teacher": "t"}
    card["embed_widths"] = list(CD16X.embed_widths)
    uri = bundle.write_bundle(publish, "run-1", states, card)
    assert uri == bundle.bundle_uri(publish, "run-1") == f"{publish}/run-1"
    assert sorted(p.name for p in (tmp_path / "publish" / "run-1").iterdir()) == ["2SD.pth", "2SE.pth", "card.json"]
    written = bundle.read_card(uri)
    assert written == json.loads((tmp_path / "publish" / "run-1" / "card.json").read_text())
    assert written["run_id"] == "run-1" and written["levels"] == [2] and written["teacher"] == "t"
    assert bundle.card_levels(written) == (2,) and bundle.card_family(written) == CD16X
    assert bundle.is_bundle(uri) and not bundle.is_bundle(publish)

    assert bundle.read_latest(publish) is None
    bundle.write_latest(publish, "run-1")
    assert bundle.read_latest(publish) == "run-1"
    assert bundle.resolve_pointer(bundle.latest_uri(publish)) == uri
    assert bundle.resolve_pointer(uri) == uri
    assert [p.name for p in (tmp_path / "publish").iterdir() if p.name.startswith(".tmp")] == []
    assert resolve_weights(bundle.latest_uri(publish)).levels == (2,)


def test_levels_need_encoder_and_decoder():
    assert bundle.card_levels({"files": {"1SE": "a", "1SD": "b", "2SE": "c", "5SD": "d"}}) == (1,)
    assert bundle.card_levels({}) == ()


def test_bundle_on_s3(s3_options, s3_fs):
    s3_fs.mkdir("bundles")
    card = {"widths": list(CD16X.widths), "level1_width": CD16X.level1_width}
    uri = bundle.write_bundle("s3://bundles/pub", "r", {"1SE": {"w": torch.zeros(1)}}, card, storage_options=s3_options)
    bundle.write_latest("s3://bundles/pub", "r", storage_options=s3_options)
    assert bundle.read_card(uri, s3_options)["files"].keys() == {"1SE"}
    assert bundle.resolve_pointer("s3://bundles/pub/latest", s3_options) == "s3://bundles/pub/r"
    with pytest.raises(FileNotFoundError):
        bundle.read_card("s3://bundles/pub/absent", s3_options)
