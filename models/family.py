"""The width-scaled VGG-19 encoder/decoder family used by WCT.

Encoder ``level`` k runs VGG-19 up to ``relu{k}_1``; decoder k mirrors it back to RGB. The
same two classes describe the VGG-19 teacher (``width=1``) and the collaboratively distilled
students (``width=0.25`` is the CD 16x model), so the official checkpoints load unchanged:
parameter names are ``conv0``, ``conv11`` ... ``conv51`` and, on encoders, the 1x1
embedding layers ``conv{b}1_aux`` that map student features to the teacher's widths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "CD16X",
    "LEVELS",
    "VGG19",
    "VGG19_CONVS",
    "VGG19_WIDTHS",
    "Decoder",
    "Encoder",
    "FamilySpec",
    "decoder_plan",
    "encoder_plan",
]

LEVELS = (1, 2, 3, 4, 5)
VGG19_WIDTHS = (64, 128, 256, 512, 512)
# Convolutions per VGG-19 block that lie before relu5_1 (block 5 stops at its first conv).
VGG19_CONVS = (2, 2, 4, 4, 1)


@dataclass(frozen=True)
class FamilySpec:
    """Channel widths of one member of the family.

    Args:
        widths: output channels of the convolutions of blocks 1..5.
        level1_width: channels of the single ``conv11`` of the level-1 model, which the
            CD 16x release makes wider (24) than block 1 of the deeper models (16).
        embed_widths: channels the ``*_aux`` embedding layers map to (the teacher's
            widths), or ``None`` for a model without them (the teacher itself).
        level1_embed_width: channels ``conv11_aux`` of the level-1 model maps to, for a
            student of a teacher whose level-1 model is wider than its block 1 (a student of
            the CD 16x release maps 12 -> 24 there but 8 -> 16 in deeper models); ``None``
            uses ``embed_widths[0]``, as the CD 16x release itself does.
    """

    widths: tuple[int, ...]
    level1_width: int
    embed_widths: tuple[int, ...] | None = None
    level1_embed_width: int | None = None

    @classmethod
    def scaled(cls, width: float, *, level1_width: int | None = None) -> FamilySpec:
        """Scale VGG-19's widths by ``width`` (0.25 gives the CD 16x student)."""
        if not 0 < width <= 1:
            raise ValueError(f"width must be in (0, 1], got {width}")
        widths = tuple(max(1, round(c * width)) for c in VGG19_WIDTHS)
        embed = None if width == 1 else VGG19_WIDTHS
        return cls(widths, level1_width or widths[0], embed)

    def widths_for(self, level: int) -> tuple[int, ...]:
        """Block widths of the level-``level`` model."""
        _check_level(level)
        if level == 1:
            return (self.level1_width,)
        return self.widths[:level]

    def embed_widths_for(self, level: int) -> tuple[int, ...] | None:
        """Channels the ``*_aux`` layers of the level-``level`` model map to (``None``: no such layers)."""
        _check_level(level)
        if self.embed_widths is None:
            return None
        if level == 1:
            return (self.level1_embed_width or self.embed_widths[0],)
        return self.embed_widths[:level]


CD16X = FamilySpec.scaled(0.25, level1_width=24)
VGG19 = FamilySpec.scaled(1.0)


def _check_level(level: int) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def encoder_plan(level: int) -> list[str]:
    """Layer names of encoder ``level`` in execution order (``pool`` marks a 2x2 max-pool)."""
    _check_level(level)
    plan: list[str] = []
    for block in range(1, level + 1):
        if block > 1:
            plan.append("pool")
        n = 1 if block == level else VGG19_CONVS[block - 1]
        plan += [f"conv{block}{i}" for i in range(1, n + 1)]
    return plan


def decoder_plan(level: int) -> list[str]:
    """Layer names of decoder ``level`` in execution order (``up`` marks 2x nearest upsampling)."""
    return ["up" if name == "pool" else name for name in reversed(encoder_plan(level))]


def _conv_channels(level: int, widths: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """(in, out) channels of every encoder conv of ``level``."""
    channels: dict[str, tuple[int, int]] = {}
    prev = 3
    for name in encoder_plan(level):
        if name == "pool":
            continue
        out = widths[int(name[4]) - 1]
        channels[name] = (prev, out)
        prev = out
    return channels


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")


class Encoder(nn.Module):
    """VGG-19 (or a width-scaled copy) from RGB to ``relu{level}_1``.

    Input ``(N, 3, H, W)`` float32 RGB in [0, 1]; ``conv0`` is a 1x1 convolution that applies
    the input normalisation the weights were trained with. Output ``(N, C, H / 2**(level-1),
    W / 2**(level-1))`` (floor division by each max-pool). Every 3x3 convolution pads by
    reflection, so the network's own border handling is the same on a tile that touches the
    image edge as on the whole image.

    Args:
        level: 1..5, the ``relu{level}_1`` the encoder stops at.
        spec: channel widths; see :class:`FamilySpec`.
    """

    def __init__(self, level: int, spec: FamilySpec = CD16X) -> None:
        super().__init__()
        self.level = level
        self.spec = spec
        self.plan = encoder_plan(level)
        self.channels = _conv_channels(level, spec.widths_for(level))
        self.conv0 = nn.Conv2d(3, 3, 1)
        for name, (cin, cout) in self.channels.items():
            self.add_module(name, _conv3x3(cin, cout))
        embed_widths = spec.embed_widths_for(level)
        if embed_widths is not None:
            for name in self.relu_names:
                cout = self.channels[name][1]
                self.add_module(f"{name}_aux", nn.Conv2d(cout, embed_widths[int(name[4]) - 1], 1))
        self.pool = nn.MaxPool2d(2, 2)
        self.relu = nn.ReLU(inplace=True)

    @property
    def relu_names(self) -> list[str]:
        """Names of the ``conv{b}1`` layers whose ReLU outputs are the WCT features."""
        return [n for n in self.plan if n.endswith("1")]

    @property
    def out_channels(self) -> int:
        return self.channels[self.plan[-1]][1]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``relu{b}_1`` for every block b <= level (used by the distillation losses)."""
        feats = []
        y = self.conv0(x)
        for name in self.plan:
            if name == "pool":
                y = self.pool(y)
                continue
            y = self.relu(getattr(self, name)(y))
            if name.endswith("1"):
                feats.append(y)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv0(x)
        for name in self.plan:
            y = self.pool(y) if name == "pool" else self.relu(getattr(self, name)(y))
        return y

    def embed(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Map student features to the teacher's widths with the 1x1 ``*_aux`` layers (Q)."""
        if self.spec.embed_widths is None:
            raise ValueError("this encoder has no embedding layers (it was built without embed_widths)")
        return [getattr(self, f"{name}_aux")(f) for name, f in zip(self.relu_names, feats, strict=True)]


class Decoder(nn.Module):
    """Mirror of :class:`Encoder`: ``relu{level}_1`` features back to RGB.

    Every conv is followed by a ReLU, the last one included (as in the released decoders);
    max-pools become 2x nearest upsampling. Output ``(N, 3, H, W)`` float32, not clamped.
    """

    def __init__(self, level: int, spec: FamilySpec = CD16X) -> None:
        super().__init__()
        self.level = level
        self.spec = spec
        self.plan = decoder_plan(level)
        enc_channels = _conv_channels(level, spec.widths_for(level))
        self.channels = {name: (cout, cin) for name, (cin, cout) in enc_channels.items()}
        for name in self.plan:
            if name != "up":
                self.add_module(name, _conv3x3(*self.channels[name]))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.relu = nn.ReLU(inplace=True)

    @property
    def in_channels(self) -> int:
        return self.channels[self.plan[0]][0]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for name in self.plan:
            y = self.up(y) if name == "up" else self.relu(getattr(self, name)(y))
        return y
