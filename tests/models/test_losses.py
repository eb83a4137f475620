"""The distillation losses and objectives, and the reconstruction PSNR."""

from __future__ import annotations

import math

import pytest
import torch

from models import VGG19, Decoder, Encoder
from models.losses import (
    DecoderObjective,
    DistillationObjective,
    embed_loss,
    feature_loss,
    perceptual_loss,
    pixel_loss,
    psnr,
    reconstruction_psnr,
    relative_error,
)
from models.optim import layer_param_groups, lr_factor
from models.pruning import prune_decoder, prune_encoder, student_family
from models.weights import resolve_weights, small_decoder, small_encoder

TEACHER = VGG19.scaled(0.125)  # a small stand-in teacher: 8-16-32-64-64 channels


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run faster on one thread than fighting over two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _teacher(level: int) -> tuple[Encoder, Decoder]:
    torch.manual_seed(level)
    return Encoder(level, TEACHER).eval(), Decoder(level, TEACHER).eval()


def test_terms_are_relative_errors_summed_over_layers():
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert pixel_loss(a, a) == 0
    torch.testing.assert_close(pixel_loss(a, b), ((a - b) ** 2).sum() / (b**2).sum())
    assert relative_error(torch.zeros_like(b), b).item() == pytest.approx(1.0)  # all wrong: 1
    f = [torch.rand(1, 4, 8, 8), torch.rand(1, 8, 4, 4)]
    g = [torch.rand(1, 4, 8, 8), torch.rand(1, 8, 4, 4)]
    torch.testing.assert_close(feature_loss(f, g), relative_error(f[0], g[0]) + relative_error(f[1], g[1]))
    with pytest.raises(ValueError, match="matching"):
        feature_loss(f, g[:1])


def test_relative_error_does_not_depend_on_the_scale_of_what_it_compares():
    """A layer with activations 100x larger weighs the same in a feature sum (a plain MSE
    would weigh it 10^4 times more), and the target gets no gradient."""
    a, b = torch.rand(2, 4, 8, 8), torch.rand(2, 4, 8, 8, requires_grad=True)
    torch.testing.assert_close(relative_error(100 * a, 100 * b), relative_error(a, b))
    relative_error(a, b).backward()
    expected = -2 * (a - b.detach()) / (b.detach() ** 2).sum()  # through the numerator only
    torch.testing.assert_close(b.grad, expected)


def test_embed_loss_is_zero_for_a_full_width_student():
    teacher, _ = _teacher(2)
    student, _ = prune_encoder(teacher, student_family(TEACHER, 0.125))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        loss = embed_loss(teacher.forward_features(x), student.embed(student.forward_features(x)))
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


def test_perceptual_loss_is_zero_on_the_input_and_grows_with_noise():
    teacher, _ = _teacher(3)
    x = torch.rand(1, 3, 32, 32)
    assert perceptual_loss(teacher, x, x).item() == 0
    small = perceptual_loss(teacher, x + 0.01 * torch.randn_like(x), x)
    large = perceptual_loss(teacher, x + 0.1 * torch.randn_like(x), x)
    assert 0 < small < large


def test_distillation_objective_is_the_contract_sum_and_trains_only_the_student():
    teacher, teacher_decoder = _teacher(2)
    student, _ = prune_encoder(teacher, student_family(TEACHER, 0.0625))
    objective = DistillationObjective(student, teacher, teacher_decoder, beta=0.5, lambda_p=0.25)
    x = torch.rand(2, 3, 32, 32)
    terms = objective(x)
    assert set(terms) == {"loss", "embed", "pixel", "perceptual"}
    expected = 0.5 * terms["embed"] + terms["pixel"] + 0.25 * terms["perceptual"]
    torch.testing.assert_close(terms["loss"], expected)
    with torch.no_grad():  # what the stage is judged by: the teacher decoder reading Q F_s
        rec = teacher_decoder(student.embed(student.forward_features(x))[-1])
        torch.testing.assert_close(objective.reconstruct(x), rec)
        torch.testing.assert_close(terms["pixel"], pixel_loss(rec, x))
    terms["loss"].backward()
    assert all(p.grad is None for p in (*teacher.parameters(), *teacher_decoder.parameters()))
    assert student.conv0.weight.grad is None  # the input normalisation stays fixed
    assert student.conv21.weight.grad is not None and student.conv21_aux.weight.grad is not None


@pytest.mark.parametrize("kind", ["student_encoder", "student_decoder"])
def test_objectives_fall_under_adam_on_a_real_image(kind, weights_dir, content_dir):
    from jobs.distill.data import load_eval_images

    weights = resolve_weights(str(weights_dir))
    teacher, teacher_decoder = small_encoder(2, weights=weights), small_decoder(2, weights=weights)
    student, _ = prune_encoder(teacher, student_family(weights.family, 0.125))
    if kind == "student_encoder":
        objective, trainable = DistillationObjective(student, teacher, teacher_decoder, beta=1, lambda_p=1), student
    else:
        decoder = prune_decoder(teacher_decoder, student.spec, student.conv21_aux)
        objective, trainable = DecoderObjective(decoder, student, teacher, lambda_p=1), decoder
    (image,) = load_eval_images([str(content_dir / "astronaut_512.jpg")], side=64)
    x = torch.cat([image[..., :64, :64], image[..., :64, -64:]])
    optimizer = torch.optim.Adam(layer_param_groups(trainable, 0.05))
    losses = []
    for step in range(1, 31):
        for group in optimizer.param_groups:  # the stages' schedule: 10 steps of warm-up, then a cosine
            group["lr"] = group["base_lr"] * lr_factor(step, 30, 10)
        loss = objective(x)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_decoder_objective_freezes_both_encoders():
    teacher, _ = _teacher(1)
    decoder = Decoder(1, TEACHER)
    objective = DecoderObjective(decoder, teacher, teacher, lambda_p=1.0)
    x = torch.rand(1, 3, 32, 32)
    objective(x)["loss"].backward()
    with torch.no_grad():
        torch.testing.assert_close(objective.reconstruct(x), decoder(teacher(x)))
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in decoder.parameters())
    with pytest.raises(ValueError, match="level"):
        DecoderObjective(Decoder(2, TEACHER), teacher, teacher, lambda_p=1.0)


def test_psnr():
    x = torch.full((1, 3, 4, 4), 0.5)
    assert psnr(x, x) == math.inf
    assert psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-4)  # mse 0.01
    assert psnr(torch.full_like(x, 2.0), torch.ones_like(x)) == math.inf  # clamped to the peak


def test_official_level1_reconstructs_a_real_image(weights_dir, content_dir):
    from jobs.distill.data import load_eval_images

    weights = resolve_weights(str(weights_dir))
    (image,) = load_eval_images([str(content_dir / "rocket_420.jpg")], side=128)
    value = reconstruction_psnr(small_encoder(1, weights=weights), small_decoder(1, weights=weights), [image])
    assert value > 30
