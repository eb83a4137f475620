"""models/vgg.py: the teacher built from torchvision's VGG-19 (random weights: nothing is downloaded)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import VGG19_Weights, vgg19
from torchvision.transforms.functional import normalize

from models.family import VGG19_WIDTHS
from models.vgg import IMAGENET_MEAN, IMAGENET_STD, vgg19_decoder, vgg19_encoder

SEED = 1234
# Index in torchvision's ``vgg19().features`` of the ReLU after conv{k}_1.
RELU_K1 = {1: 1, 2: 6, 3: 11, 4: 20, 5: 29}


@pytest.fixture(scope="module")
def pair() -> tuple[nn.Module, nn.Sequential]:
    """The level-5 teacher and torchvision's features, both from the same random initialisation."""
    torch.manual_seed(SEED)
    encoder = vgg19_encoder(5, weights=None)
    torch.manual_seed(SEED)
    features = vgg19(weights=None).features.eval()
    return encoder, features


def test_normalisation_is_torchvisions() -> None:
    transform = VGG19_Weights.IMAGENET1K_V1.transforms()
    assert tuple(transform.mean) == IMAGENET_MEAN
    assert tuple(transform.std) == IMAGENET_STD


def test_conv0_folds_normalize(pair) -> None:
    encoder, _ = pair
    x = torch.rand(2, 3, 17, 23)
    with torch.inference_mode():
        got = encoder.conv0(x)
    torch.testing.assert_close(got, normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD)), rtol=0, atol=1e-6)


def test_convs_are_copied_in_order(pair) -> None:
    encoder, features = pair
    convs = [m for m in features[: RELU_K1[5]] if isinstance(m, nn.Conv2d)]
    names = [n for n in encoder.plan if n != "pool"]
    assert len(convs) == len(names) == 13
    for name, conv in zip(names, convs, strict=True):
        assert torch.equal(getattr(encoder, name).weight, conv.weight), name
        assert torch.equal(getattr(encoder, name).bias, conv.bias), name


def test_forward_equals_torchvision_with_reflection_padding(pair) -> None:
    """Same numbers as torchvision's features once its zero padding is switched to reflection."""
    encoder, features = pair
    reflected = copy.deepcopy(features)
    for m in reflected:
        if isinstance(m, nn.Conv2d):
            m.padding_mode = "reflect"
    x = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        ours = encoder(x)
        theirs = reflected[: RELU_K1[5] + 1](normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD)))
    assert ours.shape == (1, 512, 2, 3)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * theirs.abs().max().item())


def test_shallower_levels_copy_the_first_convs(pair) -> None:
    """Level 2 takes conv1_1, conv1_2, conv2_1 (the teacher for a level-2 student)."""
    _, features = pair
    torch.manual_seed(SEED)
    encoder = vgg19_encoder(2, weights=None)
    decoder = vgg19_decoder(2)
    assert not encoder.training
    assert encoder.spec.embed_widths is None
    convs = [m for m in features[: RELU_K1[2]] if isinstance(m, nn.Conv2d)]
    for name, conv in zip(("conv11", "conv12", "conv21"), convs, strict=True):
        assert torch.equal(getattr(encoder, name).weight, conv.weight), name
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        f = encoder(x)
        assert f.shape == (1, VGG19_WIDTHS[1], 16, 16)
        assert decoder(f).shape == x.shape
