"""L1-norm filter pruning: a narrower student of the family, initialised from its teacher.

A student that starts as the teacher's strongest filters begins close to the teacher, so the
distillation losses start low and the few hundred steps of a nightly run go to refining it
rather than to learning edge detectors from noise (filter ranking by L1 norm as in Li et al.,
"Pruning Filters for Efficient ConvNets", the initialisation Collaborative Distillation uses).

Each convolution keeps the output filters with the largest L1 norm; the next convolution keeps
the input channels that match them, so a pruned network computes (approximately) the kept
subset of the teacher's channels. The 1x1 embedding layers ``*_aux`` (Q) start as the scatter
that puts each kept channel back at its place in the teacher's feature map. A student decoder
starts as the teacher's decoder reading ``Q F_s`` (Q folded into its first convolution), its
hidden convolutions keeping the channels whose outputs carry the most energy on the student's
features of a batch of training images: after the fold, a filter's L1 norm says little about
what reaches the next layer through the ReLU (ranked by L1 norm, the half-width level-2
decoder of the CD 16x weights starts at 5.6 dB held-out PSNR; ranked by energy, at 21 dB).
"""

from __future__ import annotations

import torch
from torch import nn

from models.family import VGG19_WIDTHS, Decoder, Encoder, FamilySpec

__all__ = ["fold_embedding", "prune_decoder", "prune_encoder", "rank_activations", "rank_filters", "student_family"]


def student_family(teacher: FamilySpec, width: float) -> FamilySpec:
    """Channel widths of a student of ``teacher`` with ``width`` times VGG-19's filters.

    The student's ``*_aux`` layers map to the teacher's widths (the embed loss compares
    there), and its level-1 model is as much wider than its block 1 as the teacher's is: a
    0.125 student of the CD 16x release (level 1: 24, block 1: 16) gets 12 and 8.

    Args:
        teacher: widths of the teacher.
        width: fraction of VGG-19's filters in (0, 1]; 0.25 is the CD 16x size, 0.125 half of it.

    Raises:
        ValueError: ``width`` is out of range or wider than the teacher in some block.
    """
    widths = FamilySpec.scaled(width).widths
    if any(s > t for s, t in zip(widths, teacher.widths, strict=True)):
        raise ValueError(
            f"width {width} gives blocks {widths}, wider than the teacher's {teacher.widths}; "
            f"a student must be at most as wide as its teacher (width <= {teacher.widths[0] / VGG19_WIDTHS[0]})"
        )
    level1 = max(1, round(teacher.level1_width * widths[0] / teacher.widths[0]))
    level1_embed = None if teacher.level1_width == teacher.widths[0] else teacher.level1_width
    return FamilySpec(widths, level1, embed_widths=teacher.widths, level1_embed_width=level1_embed)


def rank_filters(weight: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` output filters of ``weight`` with the largest L1 norm.

    Args:
        weight: ``(C_out, C_in, kh, kw)`` convolution weight.
        count: filters to keep, 1..C_out.

    Returns:
        ``(count,)`` int64 indices in increasing order (so kept channels keep their order;
        ties are broken towards the lower index).
    """
    if not 0 < count <= weight.shape[0]:
        raise ValueError(f"count must be in 1..{weight.shape[0]}, got {count}")
    norms = weight.detach().abs().flatten(1).sum(dim=1)
    order = torch.argsort(norms, descending=True, stable=True)
    return torch.sort(order[:count]).values


def rank_activations(activations: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` channels of ``activations`` with the largest mean square.

    Args:
        activations: ``(N, C, H, W)`` outputs of a layer (after its ReLU) on some batch.
        count: channels to keep, 1..C.

    Returns:
        ``(count,)`` int64 indices in increasing order.
    """
    if not 0 < count <= activations.shape[1]:
        raise ValueError(f"count must be in 1..{activations.shape[1]}, got {count}")
    energy = activations.detach().double().pow(2).mean(dim=(0, 2, 3))
    return torch.sort(torch.topk(energy, count).indices).values


def _copy_conv(dst: nn.Conv2d, src: nn.Conv2d, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight[out_idx][:, in_idx])
        dst.bias.copy_(src.bias[out_idx])


def prune_encoder(teacher: Encoder, family: FamilySpec) -> tuple[Encoder, dict[str, torch.Tensor]]:
    """A student encoder of ``family`` whose convolutions are the teacher's strongest filters.

    ``conv0`` (the input normalisation) is copied unchanged. Each ``*_aux`` layer starts as
    the scatter of the kept channels into the teacher's channel positions (weight 1 at
    ``[kept[j], j]``, 0 elsewhere, bias 0), so ``Q F_student`` starts as the teacher's
    features with the pruned channels zeroed.

    Args:
        teacher: the teacher's encoder of some level (its own ``*_aux`` layers are ignored).
        family: the student's widths (from :func:`student_family`), each at most the teacher's.

    Returns:
        The student encoder (same level, train mode) and, per conv name, the teacher's output
        channels it kept (``(C_student,)`` int64).

    Raises:
        ValueError: ``family`` has no embedding widths, or they differ from the teacher's.
    """
    level = teacher.level
    student = Encoder(level, family)
    embed = family.embed_widths_for(level)
    teacher_widths = tuple(teacher.channels[name][1] for name in teacher.relu_names)
    if embed != teacher_widths:
        raise ValueError(f"family maps level-{level} features to {embed} channels but the teacher has {teacher_widths}")
    kept: dict[str, torch.Tensor] = {}
    prev = torch.arange(3)
    with torch.no_grad():
        student.conv0.load_state_dict(teacher.conv0.state_dict())
    for name in student.channels:
        src, dst = getattr(teacher, name), getattr(student, name)
        kept[name] = rank_filters(src.weight, dst.out_channels)
        _copy_conv(dst, src, kept[name], prev)
        prev = kept[name]
    with torch.no_grad():
        for name in student.relu_names:
            aux = getattr(student, f"{name}_aux")
            aux.weight.zero_()
            aux.bias.zero_()
            aux.weight[kept[name], torch.arange(len(kept[name])), 0, 0] = 1.0
    return student, kept


def fold_embedding(conv: nn.Conv2d, embedding: nn.Conv2d) -> nn.Conv2d:
    """The convolution ``x -> conv(embedding(x))`` as one convolution on ``embedding``'s input.

    Exact for a 1x1 ``embedding``: a pointwise linear map commutes with reflection padding, so
    ``W' = W Q`` (per kernel tap) and ``b' = b + sum(W) q``.

    Args:
        conv: ``C -> C_out`` convolution (any kernel size).
        embedding: ``C_in -> C`` 1x1 convolution with bias.

    Returns:
        A new ``C_in -> C_out`` convolution with ``conv``'s kernel size, padding and padding mode.
    """
    if embedding.kernel_size != (1, 1) or embedding.out_channels != conv.in_channels:
        raise ValueError(
            f"embedding must be a 1x1 convolution to {conv.in_channels} channels, got {embedding.out_channels} "
            f"with kernel {embedding.kernel_size}"
        )
    folded = nn.Conv2d(
        embedding.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, padding_mode=conv.padding_mode
    )
    q = embedding.weight.detach()[:, :, 0, 0]  # (C, C_in)
    with torch.no_grad():
        folded.weight.copy_(torch.einsum("ochw,ci->oihw", conv.weight, q))
        folded.bias.copy_(conv.bias + torch.einsum("ochw,c->o", conv.weight, embedding.bias.detach()))
    return folded


def prune_decoder(
    teacher: Decoder, family: FamilySpec, embedding: nn.Conv2d, features: torch.Tensor | None = None
) -> Decoder:
    """A student decoder of ``family`` cut from the teacher's decoder behind the student's Q.

    The student's last embedding layer (``Q_k``, what the collaboration loss trained so that
    the teacher decoder reads the student) is folded into the teacher decoder's first
    convolution (:func:`fold_embedding`), so the decoder starts reading the student encoder's
    own channels; then every convolution keeps some of its filters and the next one the
    matching inputs, the last keeping all three RGB outputs. At level 1 (a single
    convolution) the student decoder starts as exactly ``D_t(Q F_s)``.

    Args:
        teacher: the teacher's decoder of some level.
        family: the student's widths.
        embedding: the student encoder's ``conv{k}1_aux`` of that level.
        features: the student encoder's features of a batch of training images,
            ``(N, C, H, W)``. With them each convolution keeps the channels whose outputs
            (after the ReLU, reading the channels kept before it) have the most energy on
            them (:func:`rank_activations`); without, the filters with the largest L1 norm.

    Returns:
        The student decoder (same level, train mode).
    """
    student = Decoder(teacher.level, family)
    if embedding.in_channels != student.in_channels:
        raise ValueError(
            f"embedding reads {embedding.in_channels} channels, the student decoder reads {student.in_channels}"
        )
    if features is not None and features.shape[1] != student.in_channels:
        raise ValueError(f"features have {features.shape[1]} channels, the student decoder reads {student.in_channels}")
    first = next(n for n in student.plan if n != "up")
    prev, y = torch.arange(student.in_channels), features
    for name in student.plan:
        if name == "up":
            y = None if y is None else student.up(y)
            continue
        src, dst = getattr(teacher, name), getattr(student, name)
        if name == first:
            src = fold_embedding(src, embedding)
        if y is None:
            out = rank_filters(src.weight, dst.out_channels)
        else:
            with torch.no_grad():
                z = torch.relu(src(y))
            out = rank_activations(z, dst.out_channels)
            y = torch.zeros_like(z)
            y[:, out] = z[:, out]  # what the student's layer computes, at the teacher's channel positions
        _copy_conv(dst, src, out, prev)
        prev = out
    return student
