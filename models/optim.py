"""Step sizes for the distillation stages: relative to each layer's weights, warmed up, then decayed.

Adam moves every parameter by about ``lr`` per step whatever its gradient's scale, so one
absolute learning rate means very different things in different layers. In the CD 16x
release the level-1 decoder's weights have an RMS of 0.009 and the level-2 encoder's
``conv12`` 0.09, while a pruned student's embedding layers start at 0.2: ``lr = 1e-3`` is
an 11 % change per step of the first (its reconstruction swings by tens of percent from one
step to the next, and its loss oscillates instead of converging), 1 % of the second and
0.5 % of the third (which barely learns in a few hundred steps). VGG-19's weights have yet
other scales.

So every layer gets its own learning rate, ``lr`` times the RMS of its weight when the stage
starts (the layer's bias moves on the same scale as its weights): ``lr`` is the fraction of
its size a layer may change by in one step, the same at every level and for every teacher
(LARS and LAMB take the same view, per step; here the scale is fixed per stage, so resuming
from a checkpoint keeps it). Within a stage the rate warms up linearly, then follows a cosine
down to zero at the stage's last step: large early steps to move away from the pruned start,
small late ones to settle instead of oscillating.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["MIN_SCALE", "layer_param_groups", "lr_factor"]

MIN_SCALE = 1e-4  # floor of a layer's weight scale, so an all-zero layer still learns


def layer_param_groups(module: nn.Module, lr: float) -> list[dict[str, Any]]:
    """Adam parameter groups, one per trainable layer, each with ``lr`` times its weight's RMS.

    Args:
        module: the part that learns; layers whose parameters all have ``requires_grad``
            off are left out.
        lr: relative step size: the fraction of its weights' RMS a layer moves per step.

    Returns:
        ``[{"params": [...], "lr": ..., "base_lr": ..., "layer": name}]``; ``base_lr`` is
        the peak rate, which :func:`lr_factor` scales step by step. The optimizer's
        ``state_dict`` keeps both, so a resumed stage uses the rates it started with.

    Raises:
        ValueError: ``module`` has no trainable parameter.
    """
    groups = []
    for name, layer in module.named_modules():
        params = [p for p in layer.parameters(recurse=False) if p.requires_grad]
        if not params:
            continue
        weight = getattr(layer, "weight", None)
        reference = weight if isinstance(weight, torch.Tensor) else params[0]
        scale = max(float(reference.detach().pow(2).mean().sqrt()), MIN_SCALE)
        groups.append({"params": params, "lr": lr * scale, "base_lr": lr * scale, "layer": name})
    if not groups:
        raise ValueError("the module has no trainable parameter")
    return groups


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the peak learning rate at ``step`` (1-based) of a ``steps``-step stage.

    Linear warm-up over the first ``warmup`` steps, then a cosine from 1 down to 0 just
    after the last step, so the last step still moves a little.

    Args:
        step: the step about to be taken, 1..steps.
        steps: the stage's planned steps.
        warmup: warm-up steps (0 for none).
    """
    if step <= warmup:
        return step / warmup
    progress = (step - warmup) / (steps - warmup + 1)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
