"""``scripts/gpu_check_probe.py``: what the interpreter has, and the check's inputs."""

from __future__ import annotations

import torch
from PIL import Image

from scripts.gpu_check_probe import MODULES, make_inputs, probe


def test_probe_reports_torch_cuda_and_every_module():
    info = probe()
    assert set(info["modules"]) == set(MODULES)
    assert info["modules"]["torch"] == torch.__version__
    assert info["cuda_available"] is torch.cuda.is_available()
    assert (info["gpu"] is None) is (not torch.cuda.is_available())


def test_inputs_are_photos_of_each_size_and_the_sample_style(tmp_path):
    make_inputs(tmp_path, ["48x32", "64x64"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo_48x32.jpg", "photo_64x64.jpg", "style.png"]
    with Image.open(tmp_path / "photo_48x32.jpg") as img:
        assert img.size == (48, 32) and img.format == "JPEG"
    with Image.open(tmp_path / "style.png") as img:
        assert img.size == (512, 512)
