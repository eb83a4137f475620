"""Student widths, L1-norm filter pruning, the folded embedding and decoder channels ranked by energy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from models import CD16X, VGG19, Decoder, Encoder, FamilySpec
from models.losses import DistillationObjective, psnr
from models.optim import layer_param_groups, lr_factor
from models.pruning import (
    fold_embedding,
    prune_decoder,
    prune_encoder,
    rank_activations,
    rank_filters,
    student_family,
)
from models.weights import resolve_weights, small_decoder, small_encoder


def test_rank_filters_keeps_largest_l1_in_order():
    weight = torch.zeros(5, 2, 3, 3)
    for i, norm in enumerate([3.0, 1.0, 5.0, 1.0, 4.0]):
        weight[i, 0, 0, 0] = -norm  # the sign must not matter
    assert rank_filters(weight, 3).tolist() == [0, 2, 4]
    assert rank_filters(weight, 4).tolist() == [0, 1, 2, 4]  # tie 1 vs 3 goes to the lower index
    with pytest.raises(ValueError, match="count"):
        rank_filters(weight, 6)


def test_student_of_cd16x_maps_level1_12_to_24_and_deeper_8_to_16():
    family = student_family(CD16X, 0.125)
    assert family.widths == (8, 16, 32, 64, 64)
    assert family.level1_width == 12
    assert family.embed_widths == CD16X.widths
    assert family.embed_widths_for(1) == (24,)
    assert family.embed_widths_for(3) == (16, 32, 64)
    level1, level2 = Encoder(1, family), Encoder(2, family)
    assert tuple(level1.conv11_aux.weight.shape[:2]) == (24, 12)
    assert tuple(level2.conv11_aux.weight.shape[:2]) == (16, 8)
    assert tuple(level2.conv21_aux.weight.shape[:2]) == (32, 16)


def test_student_of_vgg19_embeds_to_vgg_widths():
    family = student_family(VGG19, 0.25)
    assert family.widths == CD16X.widths
    assert family.level1_width == 16
    assert family.embed_widths == VGG19.widths and family.level1_embed_width is None


def test_student_wider_than_teacher_is_refused():
    with pytest.raises(ValueError, match="at most as wide"):
        student_family(CD16X, 0.5)


def test_default_family_is_unchanged():
    """A FamilySpec without level1_embed_width builds what it built before the field existed."""
    assert CD16X.level1_embed_width is None
    assert Encoder(1, CD16X).conv11_aux.out_channels == 64
    assert FamilySpec((16, 32, 64, 128, 128), 24, (64, 128, 256, 512, 512)) == CD16X


def test_official_checkpoints_still_load_strictly(weights_dir):
    weights = resolve_weights(str(weights_dir))
    for level in (1, 2, 3, 4, 5):
        small_encoder(level, weights=weights)  # load_state_dict(strict=True) inside
        small_decoder(level, weights=weights)


def test_full_width_pruning_is_the_teacher():
    torch.manual_seed(0)
    teacher = Encoder(3, VGG19.scaled(0.125))
    family = student_family(teacher.spec, 0.125)
    student, kept = prune_encoder(teacher, family)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for t, q in zip(teacher.forward_features(x), student.embed(student.forward_features(x)), strict=True):
            torch.testing.assert_close(q, t)
    assert all(torch.equal(idx, torch.arange(len(idx))) for idx in kept.values())


def test_pruned_level1_computes_the_kept_teacher_channels(weights_dir):
    teacher = small_encoder(1, weights=resolve_weights(str(weights_dir)))
    student, kept = prune_encoder(teacher, student_family(teacher.spec, 0.125))
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        (t,), (s,) = teacher.forward_features(x), student.forward_features(x)
        torch.testing.assert_close(s, t[:, kept["conv11"]])
        (q,) = student.embed([s])
    dropped = torch.ones(t.shape[1], dtype=torch.bool)
    dropped[kept["conv11"]] = False
    torch.testing.assert_close(q[:, ~dropped], t[:, ~dropped])
    assert q[:, dropped].abs().max() == 0
    norms = teacher.conv11.weight.abs().sum(dim=(1, 2, 3))
    assert norms[kept["conv11"]].min() >= norms[dropped].max()


def test_fold_embedding_is_exact():
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 4, 3, padding=1, padding_mode="reflect")
    embedding = nn.Conv2d(3, 6, 1)
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(fold_embedding(conv, embedding)(x), conv(embedding(x)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1x1"):
        fold_embedding(conv, nn.Conv2d(3, 5, 1))


def test_level1_student_decoder_starts_as_teacher_decoder_behind_q(weights_dir):
    weights = resolve_weights(str(weights_dir))
    t_enc, t_dec = small_encoder(1, weights=weights), small_decoder(1, weights=weights)
    family = student_family(t_enc.spec, 0.125)
    student, _ = prune_encoder(t_enc, family)
    with torch.no_grad():  # any Q, not just the scatter it starts as
        student.conv11_aux.weight.normal_(0, 0.2)
        student.conv11_aux.bias.normal_(0, 0.1)
    decoder = prune_decoder(t_dec, family, student.conv11_aux)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = t_dec(student.embed(student.forward_features(x))[-1])
        torch.testing.assert_close(decoder(student(x)), expected, rtol=1e-4, atol=1e-5)


def test_pruned_decoder_shapes_fit_the_student(weights_dir):
    weights = resolve_weights(str(weights_dir))
    family = student_family(weights.family, 0.125)
    for level in (2, 5):
        student, _ = prune_encoder(small_encoder(level, weights=weights), family)
        decoder = prune_decoder(small_decoder(level, weights=weights), family, getattr(student, f"conv{level}1_aux"))
        assert isinstance(decoder, Decoder)
        assert decoder.state_dict().keys() == Decoder(level, family).state_dict().keys()
        with torch.no_grad():
            assert decoder(student(torch.rand(1, 3, 32, 32))).shape == (1, 3, 32, 32)


def test_rank_activations_keeps_the_channels_of_most_energy_in_order():
    activations = torch.zeros(2, 5, 4, 4)
    for i, rms in enumerate([3.0, 0.5, 5.0, 1.0, 4.0]):
        activations[:, i] = rms
    activations[1, 1] = 100.0  # one image is enough to carry a channel
    assert rank_activations(activations, 3).tolist() == [1, 2, 4]
    with pytest.raises(ValueError, match="count"):
        rank_activations(activations, 6)


def _image(path, side: int) -> torch.Tensor:
    image = Image.open(path).convert("RGB")
    scale = side / min(image.size)
    image = image.resize((round(image.width * scale) // 16 * 16, round(image.height * scale) // 16 * 16))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def test_decoder_pruned_by_energy_starts_near_the_collaboration_where_l1_loses_the_image(weights_dir, content_dir):
    # A half-width level-2 student of the CD 16x weights after 60 steps of the job's encoder
    # stage on crops of two images; the third, held out, judges the decoders' starts.
    weights = resolve_weights(str(weights_dir))
    family = student_family(weights.family, 0.125)
    teacher, teacher_decoder = small_encoder(2, weights=weights), small_decoder(2, weights=weights)
    student, _ = prune_encoder(teacher, family)
    paths = sorted(content_dir.iterdir())  # astronaut, mosaic, rocket
    train, held = [_image(p, 192) for p in paths[:2]], _image(paths[2], 256)
    generator = torch.Generator().manual_seed(0)

    def crops() -> torch.Tensor:
        batch = []
        for _ in range(8):
            image = train[int(torch.randint(len(train), (1,), generator=generator))]
            top, left = (int(torch.randint(n - 127, (1,), generator=generator)) for n in image.shape[-2:])
            batch.append(image[..., top : top + 128, left : left + 128])
        return torch.cat(batch)

    objective = DistillationObjective(student, teacher, teacher_decoder, beta=0.3, lambda_p=1.0)
    optimizer = torch.optim.Adam(layer_param_groups(student, 0.1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is fastest on a shared machine
    try:
        for step in range(1, 61):
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_factor(step, 60, 10)
            optimizer.zero_grad()
            objective(crops())["loss"].backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        features, embedding, held_features = student(crops()), student.conv21_aux, student(held)
        collaboration = psnr(teacher_decoder(embedding(held_features)), held)
        by_l1 = psnr(prune_decoder(teacher_decoder, family, embedding)(held_features), held)
        by_energy = psnr(prune_decoder(teacher_decoder, family, embedding, features)(held_features), held)
    assert by_energy > by_l1 + 3.0  # measured: 20.4 and 14.5 dB
    assert by_energy > collaboration - 1.0  # 20.5 dB
    with pytest.raises(ValueError, match="features have 32 channels"):
        prune_decoder(teacher_decoder, family, embedding, teacher(held))
