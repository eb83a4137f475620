"""VGG-19 teacher encoders and decoders on torchvision's ``vgg19`` layout.

torchvision's VGG-19 expects ImageNet-normalised RGB and pads with zeros; the WCT family takes
[0, 1] RGB and pads by reflection. The conversion copies the convolutions of ``features``
into an :class:`~models.family.Encoder` of width 1 and folds the normalisation into ``conv0``
(weight ``diag(1/std)``, bias ``-mean/std``), so the teacher is one more member of the family.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import VGG19_Weights, vgg19

from models.family import VGG19, Decoder, Encoder

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "fold_normalization", "vgg19_decoder", "vgg19_encoder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fold_normalization(conv0: nn.Conv2d, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Set a 1x1 ``conv0`` to ``(x - mean) / std`` per channel."""
    with torch.no_grad():
        conv0.weight.copy_(torch.diag(1.0 / torch.tensor(std)).reshape(3, 3, 1, 1))
        conv0.bias.copy_(-torch.tensor(mean) / torch.tensor(std))


def vgg19_encoder(level: int, *, weights: VGG19_Weights | str | None = None, progress: bool = True) -> Encoder:
    """VGG-19 up to ``relu{level}_1`` with torchvision's weights.

    Args:
        level: 1..5.
        weights: a :class:`torchvision.models.VGG19_Weights` member or its name
            (``"DEFAULT"`` downloads the ImageNet weights); ``None`` keeps torchvision's random
            initialisation, which tests use.
        progress: show torchvision's download progress bar.
    """
    weights = VGG19_Weights.verify(weights)
    features = vgg19(weights=weights, progress=progress).features
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    encoder = Encoder(level, VGG19)
    fold_normalization(encoder.conv0, IMAGENET_MEAN, IMAGENET_STD)
    names = [n for n in encoder.plan if n != "pool"]
    with torch.no_grad():
        for name, conv in zip(names, convs, strict=False):
            getattr(encoder, name).weight.copy_(conv.weight)
            getattr(encoder, name).bias.copy_(conv.bias)
    return encoder.eval()


def vgg19_decoder(level: int) -> Decoder:
    """A randomly initialised VGG-19 decoder (torchvision ships none; ``distill`` trains it)."""
    return Decoder(level, VGG19)
