"""jobs/distill/teachers.py: torchvision's VGG-19 or a weights URI as the teacher."""

from __future__ import annotations

import pytest
import torch

from jobs.distill.teachers import Teacher
from models import CD16X, VGG19


def test_teacher_sources(weights_dir):
    assert Teacher("torchvision-vgg19").is_vgg19 and Teacher("torchvision-vgg19:random").is_vgg19
    assert not Teacher(str(weights_dir)).is_vgg19
    assert Teacher("torchvision-vgg19:random").family() == VGG19
    assert not Teacher("torchvision-vgg19").has_decoder(1)
    official = Teacher(str(weights_dir))
    assert official.family() == CD16X and official.has_decoder(5)
    with pytest.raises(ValueError, match="expected"):
        Teacher("torchvision-vgg19:imagenet").encoder(1)


def test_random_vgg19_teacher_is_the_same_for_the_same_seed():
    a, b = Teacher("torchvision-vgg19:random", seed=3), Teacher("torchvision-vgg19:random", seed=3)
    torch.testing.assert_close(a.encoder(1).conv11.weight, b.encoder(1).conv11.weight)
