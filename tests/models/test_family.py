"""models/family.py: widths, layer plans and the shapes the encoders and decoders produce."""

from __future__ import annotations

import pytest
import torch

from models.family import (
    CD16X,
    LEVELS,
    VGG19,
    VGG19_WIDTHS,
    Decoder,
    Encoder,
    FamilySpec,
    decoder_plan,
    encoder_plan,
)

# Output channels of relu{k}_1 of the released CD 16x models (level 1 is wider, see FamilySpec).
CD16X_OUT = {1: 24, 2: 32, 3: 64, 4: 128, 5: 128}


def test_scaled_widths() -> None:
    assert FamilySpec((16, 32, 64, 128, 128), 24, (64, 128, 256, 512, 512)) == CD16X
    assert FamilySpec((64, 128, 256, 512, 512), 64, None) == VGG19
    assert FamilySpec.scaled(0.5) == FamilySpec((32, 64, 128, 256, 256), 32, VGG19_WIDTHS)
    # A tiny width never rounds a block away to zero channels.
    assert FamilySpec.scaled(0.001).widths == (1, 1, 1, 1, 1)
    assert FamilySpec.scaled(0.25).level1_width == 16  # only the CD release widens level 1


@pytest.mark.parametrize("width", [0, -0.5, 1.5])
def test_scaled_rejects_width_outside_unit_interval(width: float) -> None:
    with pytest.raises(ValueError, match="width"):
        FamilySpec.scaled(width)


def test_widths_for_level() -> None:
    assert CD16X.widths_for(1) == (24,)
    assert CD16X.widths_for(2) == (16, 32)
    assert CD16X.widths_for(5) == (16, 32, 64, 128, 128)
    with pytest.raises(ValueError, match="level"):
        CD16X.widths_for(6)


def test_encoder_plan_follows_vgg19() -> None:
    assert encoder_plan(1) == ["conv11"]
    assert encoder_plan(2) == ["conv11", "conv12", "pool", "conv21"]
    plan5 = encoder_plan(5)
    # VGG-19 has 13 convolutions up to conv5_1 (torchvision features[:29]) and 4 pools.
    assert [n for n in plan5 if n != "pool"] == [
        "conv11", "conv12", "conv21", "conv22", "conv31", "conv32", "conv33", "conv34",
        "conv41", "conv42", "conv43", "conv44", "conv51",
    ]  # fmt: skip
    for level in LEVELS:
        plan = encoder_plan(level)
        assert plan.count("pool") == level - 1
        assert plan[-1] == f"conv{level}1"
        assert plan == plan5[: plan5.index(f"conv{level}1") + 1]
    with pytest.raises(ValueError, match="level"):
        encoder_plan(0)


@pytest.mark.parametrize("level", LEVELS)
def test_decoder_plan_mirrors_encoder_plan(level: int) -> None:
    enc, dec = encoder_plan(level), decoder_plan(level)
    assert len(dec) == len(enc)
    for e, d in zip(reversed(enc), dec, strict=True):
        assert d == ("up" if e == "pool" else e)


@pytest.mark.parametrize("level", LEVELS)
def test_decoder_channels_mirror_encoder(level: int) -> None:
    enc, dec = Encoder(level), Decoder(level)
    assert set(enc.channels) == set(dec.channels)
    for name, (cin, cout) in enc.channels.items():
        assert dec.channels[name] == (cout, cin)
    assert dec.in_channels == enc.out_channels == CD16X_OUT[level]


@pytest.mark.parametrize("level", LEVELS)
def test_output_shapes(level: int) -> None:
    enc, dec = Encoder(level).eval(), Decoder(level).eval()
    x = torch.rand(2, 3, 48, 80)
    with torch.inference_mode():
        f = enc(x)
        y = dec(f)
    s = 2 ** (level - 1)
    assert f.shape == (2, CD16X_OUT[level], 48 // s, 80 // s)
    assert y.shape == x.shape
    assert (f >= 0).all() and (y >= 0).all()  # ReLU after every conv, the decoder's last one too


@pytest.mark.parametrize("level", LEVELS)
def test_forward_features_and_embed(level: int) -> None:
    enc = Encoder(level).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        feats = enc.forward_features(x)
        embedded = enc.embed(feats)
        final = enc(x)
    assert len(feats) == level
    torch.testing.assert_close(feats[-1], final, rtol=0, atol=0)
    for b, (f, e) in enumerate(zip(feats, embedded, strict=True), start=1):
        assert f.shape[1] == CD16X.widths_for(level)[b - 1]
        assert e.shape == (1, VGG19_WIDTHS[b - 1], *f.shape[2:])


def test_teacher_has_no_embedding() -> None:
    enc = Encoder(2, VGG19)
    assert enc.out_channels == 128
    assert not any(name.endswith("_aux") for name in enc.state_dict())
    with pytest.raises(ValueError, match="embedding"):
        enc.embed(enc.forward_features(torch.rand(1, 3, 32, 32)))


def test_padding_is_reflection() -> None:
    """A constant image stays constant through every conv only with reflection (not zero) padding."""
    enc = Encoder(3).eval()
    with torch.inference_mode():
        f = enc(torch.full((1, 3, 64, 64), 0.3))
    flat = f.flatten(2)
    assert torch.equal(flat.amax(dim=2), flat.amin(dim=2))
