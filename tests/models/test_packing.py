"""models/packing.py: upstream-style .pth files become safetensors files, reproducibly and checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from models.checkpoint import WeightsError, load_state_dict, sha256_file
from models.packing import pack_checkpoint, pack_official

_PACK_IN_A_NEW_PROCESS = (
    "import sys; from models.packing import pack_checkpoint; "
    "pack_checkpoint(sys.argv[1], sys.argv[2], upstream_path=sys.argv[3], upstream_sha256=sys.argv[4])"
)


@pytest.fixture
def upstream_like(tmp_path: Path, weights_dir: Path) -> Path:
    """A torch checkpoint in the upstream files' layout (``{"model": ..., "epoch": ...}``)."""
    path = tmp_path / "20191110-132713_E20.pth"
    torch.save({"model": load_state_dict(weights_dir / "2SE.safetensors"), "epoch": 20}, path)
    return path


def test_packing_keeps_the_tensors_records_the_source_and_is_reproducible(
    upstream_like: Path, tmp_path: Path, weights_dir: Path
) -> None:
    digest = sha256_file(upstream_like)
    kwargs = {"upstream_path": "trained_models/x/2SE.pth", "upstream_sha256": digest}
    first = pack_checkpoint(upstream_like, tmp_path / "a.safetensors", **kwargs)
    second = pack_checkpoint(upstream_like, tmp_path / "b.safetensors", **kwargs)
    # The library writes metadata in hash order, which differs between processes.
    subprocess.run(
        [sys.executable, "-c", _PACK_IN_A_NEW_PROCESS, str(upstream_like), str(tmp_path / "c.safetensors"),
         kwargs["upstream_path"], digest],
        check=True, cwd=Path(__file__).resolve().parents[2],
    )
    assert first.read_bytes() == second.read_bytes() == (tmp_path / "c.safetensors").read_bytes()
    size = int.from_bytes(first.read_bytes()[:8], "little")
    header = json.loads(first.read_bytes()[8 : 8 + size])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(header["__metadata__"])
    with safe_open(first, "pt") as f:
        assert f.metadata() == kwargs
    packed, original = load_state_dict(first), load_state_dict(weights_dir / "2SE.safetensors")
    assert sorted(packed) == sorted(original)
    assert all(torch.equal(packed[k], original[k]) for k in original)


def test_packing_refuses_a_file_that_is_not_the_pinned_one(upstream_like: Path, tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(WeightsError, match="sha256 mismatch") as err:
        pack_checkpoint(upstream_like, tmp_path / "x.safetensors", upstream_path="p", upstream_sha256=wrong)
    assert str(upstream_like) in str(err.value) and wrong in str(err.value)
    assert sha256_file(upstream_like) in str(err.value)
    assert not (tmp_path / "x.safetensors").exists()


def test_pack_official_needs_every_upstream_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found") as err:
        pack_official(tmp_path / "empty", tmp_path / "out")
    assert "1SE.pth" in str(err.value)
