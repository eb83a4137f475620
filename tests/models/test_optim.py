"""models/optim.py: per-layer relative step sizes and the warm-up + cosine schedule."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from models import CD16X, Encoder
from models.optim import MIN_SCALE, layer_param_groups, lr_factor
from models.pruning import prune_encoder, student_family


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().pow(2).mean().sqrt())


def test_one_group_per_trainable_layer_scaled_by_its_weights():
    torch.manual_seed(0)
    teacher = Encoder(2, CD16X)
    student, _ = prune_encoder(teacher, student_family(CD16X, 0.125))
    student.conv0.requires_grad_(False)
    before = {g["layer"]: g["lr"] for g in layer_param_groups(student, 0.1)}
    with torch.no_grad():
        student.conv12.weight.mul_(10.0)  # a layer ten times larger gets ten times the step
    groups = {g["layer"]: g for g in layer_param_groups(student, 0.1)}
    assert set(groups) == {"conv11", "conv12", "conv21", "conv11_aux", "conv21_aux"}  # conv0 is frozen
    for name, group in groups.items():
        layer = getattr(student, name)
        assert group["params"] == [layer.weight, layer.bias]  # the bias moves on its weights' scale
        assert group["lr"] == group["base_lr"] == pytest.approx(0.1 * _rms(layer.weight))
    assert groups["conv12"]["lr"] == pytest.approx(10 * before["conv12"])


def test_an_all_zero_layer_still_learns_and_an_empty_module_is_refused():
    layer = torch.nn.Conv2d(2, 2, 1)
    with torch.no_grad():
        layer.weight.zero_()
    (group,) = layer_param_groups(layer, 0.5)
    assert group["lr"] == 0.5 * MIN_SCALE
    with pytest.raises(ValueError, match="no trainable"):
        layer_param_groups(layer.requires_grad_(False), 0.5)


def test_adam_step_changes_each_layer_by_the_same_fraction():
    """The point of the scaling: one step moves a layer of RMS 0.009 (the CD 16x level-1
    decoder) and one of RMS 0.2 by the same relative amount, unlike a plain Adam rate."""
    torch.manual_seed(1)
    small, large = torch.nn.Conv2d(8, 8, 3), torch.nn.Conv2d(8, 8, 3)
    with torch.no_grad():
        small.weight.normal_(0, 0.009)
        large.weight.normal_(0, 0.2)
    model = torch.nn.Sequential(small, large)
    before = [small.weight.detach().clone(), large.weight.detach().clone()]
    optimizer = torch.optim.Adam(layer_param_groups(model, 0.05))
    model(torch.randn(2, 8, 12, 12)).square().mean().backward()
    optimizer.step()
    ratios = [_rms(m.weight - b) / _rms(b) for m, b in zip((small, large), before, strict=True)]
    assert ratios[0] == pytest.approx(ratios[1], rel=0.05)
    assert ratios[0] == pytest.approx(0.05, rel=0.05)  # Adam's first step is lr per element


def test_schedule_warms_up_then_decays_to_zero():
    steps, warmup = 100, 10
    factors = [lr_factor(s, steps, warmup) for s in range(1, steps + 1)]
    assert factors[:warmup] == pytest.approx([s / warmup for s in range(1, warmup + 1)])
    assert factors[warmup - 1] == 1.0
    tail = factors[warmup:]
    assert all(a > b for a, b in itertools.pairwise(tail))  # strictly decreasing
    assert 0 < factors[-1] < 0.01
    assert lr_factor(55, steps, warmup) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 91)))
    assert lr_factor(1, 1, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))  # one step, no warm-up


def _fine_tune_level1_decoder(groups_for, schedule, content_dir) -> list[float]:
    """Train the CD 16x level-1 decoder, already good, 100 steps on crops of two photos; its
    held-out PSNR at the start and every 10 steps."""
    from jobs.distill.data import load_eval_images, random_crops
    from models.losses import DecoderObjective, psnr
    from models.weights import resolve_weights, small_decoder, small_encoder

    weights = resolve_weights(None)
    encoder, decoder = small_encoder(1, weights=weights), small_decoder(1, weights=weights)
    objective = DecoderObjective(decoder, encoder, encoder, lambda_p=1.0)
    names = ("astronaut_512.jpg", "photo_mosaic_1024.jpg")
    photos = [load_eval_images([str(content_dir / n)], side=128)[0][0] for n in names]
    photos = [(p.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for p in photos]
    (held,) = load_eval_images([str(content_dir / "rocket_420.jpg")], side=96)
    rng = np.random.default_rng(0)
    optimizer = torch.optim.Adam(groups_for(decoder))
    curve = []
    for step in range(101):
        if step % 10 == 0:
            with torch.no_grad():
                curve.append(psnr(objective.reconstruct(held), held))
        if step == 100:
            return curve
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * schedule(step + 1)
        crops = [torch.from_numpy(random_crops(p, size=64, count=2, rng=rng)) for p in photos]
        loss = objective(torch.cat(crops))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    raise AssertionError("unreachable")


def test_level1_decoder_settles_where_one_plain_adam_rate_throws_it_off(content_dir):
    """The level-1 decoder's weights have an RMS of 0.009: one plain Adam rate (1e-3 after a
    20-step warm-up, constant) moves them 11 % per step, and a decoder that starts good swings
    more than 10 dB down within 100 steps (where it is at step 100 depends on the swing, so it
    is not checked). Steps relative to each layer, warmed up and decayed to zero, end settled
    at least where it started."""
    torch.manual_seed(0)
    old = _fine_tune_level1_decoder(
        lambda d: [{"params": list(d.parameters()), "lr": 1e-3, "base_lr": 1e-3}],
        lambda step: min(1.0, step / 20),
        content_dir,
    )
    new = _fine_tune_level1_decoder(lambda d: layer_param_groups(d, 0.05), lambda s: lr_factor(s, 100, 10), content_dir)
    assert old[0] == new[0] > 38  # the same start: the official decoder
    assert new[-1] > new[0] - 0.3 and max(new[-3:]) - min(new[-3:]) < 0.3, new  # settled
    assert min(old) < old[0] - 10, old  # the plain rate throws it off
