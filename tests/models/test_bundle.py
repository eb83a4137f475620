"""models/bundle.py: the bundle format's names, card, ``latest`` pointer, pins and levels."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from models import CD16X, Encoder, WeightsError, bundle, resolve_weights

CARD = {"widths": list(CD16X.widths), "level1_width": CD16X.level1_width, "embed_widths": list(CD16X.embed_widths)}


def test_write_read_and_point_at_a_bundle(tmp_path):
    publish = str(tmp_path / "publish")
    states = {bundle.weight_name(2, "SE"): Encoder(2, CD16X).state_dict(), "2SD": {"w": torch.ones(2)}}
    uri = bundle.write_bundle(publish, "run-1", states, {**CARD, "teacher": "t"})
    assert uri == bundle.bundle_uri(publish, "run-1") == f"{publish}/run-1"
    assert sorted(p.name for p in (tmp_path / "publish" / "run-1").iterdir()) == ["2SD.pth", "2SE.pth", "card.json"]
    card_bytes = (tmp_path / "publish" / "run-1" / "card.json").read_bytes()
    written, digest = bundle.read_card(uri)
    assert written == json.loads(card_bytes) and digest == hashlib.sha256(card_bytes).hexdigest()
    assert written["run_id"] == "run-1" and written["levels"] == [2] and written["teacher"] == "t"
    assert bundle.card_levels(written) == (2,) and bundle.card_family(written) == CD16X
    assert bundle.is_bundle(uri) and not bundle.is_bundle(publish)

    assert bundle.read_latest(publish) is None
    bundle.write_latest(publish, "run-1")
    assert (tmp_path / "publish" / "latest").read_text() == f"run-1#sha256={digest}\n"
    assert bundle.read_latest(publish) == "run-1"
    assert bundle.resolve_pointer(bundle.latest_uri(publish)) == bundle.pin_uri(uri, digest) == f"{uri}#sha256={digest}"
    assert bundle.resolve_pointer(uri) == uri
    assert bundle.split_pin(f"{uri}#sha256={digest}") == (uri, digest) and bundle.split_pin(uri) == (uri, None)
    assert [p.name for p in (tmp_path / "publish").iterdir() if p.name.startswith(".tmp")] == []
    assert resolve_weights(bundle.latest_uri(publish)).levels == (2,)


def test_levels_need_encoder_and_decoder():
    assert bundle.card_levels({"files": {"1SE": "a", "1SD": "b", "2SE": "c", "5SD": "d"}}) == (1,)
    assert bundle.card_levels({}) == ()


@pytest.mark.parametrize("run_id", ["nightly-20260101", "distill-20260101-010203", "r", "v1.2_b"])
def test_plain_run_ids_are_accepted(run_id):
    assert bundle.check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    "run_id", ["", ".", "..", "../x", "a/b", "/abs", "s3://other/run", "latest", ".hidden", "a\nb", "r" * 129, "a b"]
)
def test_run_ids_that_are_not_one_folder_name_are_refused(run_id, tmp_path):
    with pytest.raises(ValueError, match="not a plain folder name") as err:
        bundle.check_run_id(run_id)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not a plain folder name"):
        bundle.write_bundle(str(tmp_path), run_id, {"1SE": {"w": torch.zeros(1)}}, CARD)
    with pytest.raises(ValueError, match="not a plain folder name"):
        bundle.write_latest(str(tmp_path), run_id)
    assert list(tmp_path.iterdir()) == []


def test_a_published_bundle_is_never_rewritten(tmp_path):
    """The same weights again are already published; other weights under the same run id are refused."""
    states = {"1SE": {"w": torch.arange(3.0)}, "1SD": {"w": torch.ones(2)}}
    uri = bundle.write_bundle(str(tmp_path), "run", states, {**CARD, "created": "first"})
    card = (tmp_path / "run" / "card.json").read_bytes()
    assert bundle.write_bundle(str(tmp_path), "run", states, {**CARD, "created": "second"}) == uri
    with pytest.raises(FileExistsError, match="never rewritten"):
        bundle.write_bundle(str(tmp_path), "run", {**states, "1SD": {"w": torch.zeros(2)}}, CARD)
    assert (tmp_path / "run" / "card.json").read_bytes() == card
    assert torch.equal(torch.load(tmp_path / "run" / "1SD.pth")["w"], torch.ones(2))


def test_only_a_published_bundle_can_be_promoted(tmp_path):
    with pytest.raises(FileNotFoundError):
        bundle.write_latest(str(tmp_path), "absent")
    assert not (tmp_path / "latest").exists()


def test_bundle_on_s3(s3_options, s3_fs):
    s3_fs.mkdir("bundles")
    uri = bundle.write_bundle("s3://bundles/pub", "r", {"1SE": {"w": torch.zeros(1)}}, CARD, storage_options=s3_options)
    bundle.write_latest("s3://bundles/pub", "r", storage_options=s3_options)
    card, digest = bundle.read_card(uri, s3_options)
    assert card["files"].keys() == {"1SE"}
    assert bundle.resolve_pointer("s3://bundles/pub/latest", s3_options) == f"s3://bundles/pub/r#sha256={digest}"
    with pytest.raises(FileNotFoundError):
        bundle.read_card("s3://bundles/pub/absent", s3_options)
    # A pointer on S3 naming another bucket is refused like a local one.
    s3_fs.pipe_file("bundles/pub/latest", f"s3://other/r#sha256={digest}".encode())
    with pytest.raises(WeightsError, match="names 's3://other/r', not a run folder inside s3://bundles/pub"):
        resolve_weights("s3://bundles/pub/latest", s3_options)
