"""pipeline/engine/device.py: ``auto`` takes CUDA where torch sees it and the CPU elsewhere, and
CUDA asked for where there is none is refused in one line naming ``device``."""

from __future__ import annotations

import pytest
import torch

from pipeline.engine.device import resolve_device
from pipeline.engine.models import load_model_set, load_models
from pipeline.options import OptionError, StyleOptions

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
needs_cuda = pytest.mark.cuda


@no_cuda
def test_auto_is_the_cpu_without_a_gpu():
    assert resolve_device() == resolve_device("auto") == "cpu"


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_a_gpu_is_refused_in_one_line(device):
    with pytest.raises(OptionError, match=r"^device cuda(:0)?: torch sees no CUDA GPU on this machine$"):
        resolve_device(device)


@needs_cuda
def test_auto_is_cuda_with_a_gpu():
    count = torch.cuda.device_count()
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(OptionError, match=rf"^device cuda:{count}: torch sees {count} CUDA GPU"):
        resolve_device(f"cuda:{count}")


def test_the_caller_can_say_whether_the_models_process_has_a_gpu():
    # The batch driver decides for an actor: one that reserves GPUs runs on CUDA.
    assert resolve_device("auto", cuda_available=True) == "cuda"
    assert resolve_device("auto", cuda_available=False) == "cpu"
    assert resolve_device("cpu", cuda_available=True) == "cpu"
    assert resolve_device("cuda", cuda_available=True) == "cuda"
    with pytest.raises(OptionError, match=r"^device cuda: no CUDA GPU is available to it$"):
        resolve_device("cuda", cuda_available=False)


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda0", ""])
def test_other_names_are_refused(device):
    with pytest.raises(OptionError, match=r"^device must be auto, cpu, cuda or cuda:N, got "):
        resolve_device(device)


@no_cuda
def test_models_load_where_auto_resolves_with_its_tile_batch(weights_dir):
    models = load_models(StyleOptions(weights=str(weights_dir)))
    assert models.device == torch.device("cpu") and models.tile_batch == 1
    with pytest.raises(OptionError, match=r"^device cuda: torch sees no CUDA GPU"):
        load_model_set(str(weights_dir), device="cuda")


@needs_cuda
def test_models_load_on_cuda_by_default_with_its_tile_batch(weights_dir):
    models = load_models(StyleOptions(weights=str(weights_dir)))
    assert models.device.type == "cuda" and models.tile_batch == 4
    assert {next(m.parameters()).device.type for m in models.encoders.values()} == {"cuda"}
