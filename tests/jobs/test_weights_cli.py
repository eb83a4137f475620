import shutil

import torch

from jobs.weights import main
from models.checkpoint import load_state_dict


def test_default_is_the_embedded_set_and_verifies_without_a_download(cache, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.count(".safetensors  ") == 10 and "CHANGED" not in out
    assert out.count("not cached") == 10  # the official download set: nothing fetched
    assert main(["verify"]) == 0
    assert "cd16x: 10 ok, 0 failed" in capsys.readouterr().out
    assert not cache.exists()


def test_verify_reports_a_tampered_file(weights_dir, tmp_path, capsys):
    copy = tmp_path / "w"
    shutil.copytree(weights_dir, copy)
    (copy / "5SE.safetensors").write_bytes(b"garbage")
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "5SE.safetensors  FAILED" in out and "9 ok, 1 failed" in out


def test_pull_takes_only_the_official_files(weights_dir, tmp_path, cache, capsys):
    """A folder of .pth files with the right tensors but other bytes is not the pinned release."""
    copy = tmp_path / "pth"
    copy.mkdir()
    for level in range(1, 6):
        for kind in ("SE", "SD"):
            state = load_state_dict(weights_dir / f"{level}{kind}.safetensors")
            torch.save({"model": state, "epoch": 20}, copy / f"{level}{kind}.pth")
    assert main(["pull", "--from", str(copy)]) == 1
    err = capsys.readouterr().err.strip()
    assert "sha256 mismatch" in err and str(copy / "1SE.pth") in err and len(err.splitlines()) == 1
    assert list(cache.iterdir()) == []


def test_pull_from_a_missing_source_is_a_one_line_error(tmp_path, capsys):
    assert main(["pull", "--from", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ultrastyle weights: error:") and "--weights" in err and len(err.splitlines()) == 1


def test_pack_from_files_that_are_not_upstream_is_a_one_line_error(weights_dir, tmp_path, capsys):
    source = tmp_path / "src"
    shutil.copytree(weights_dir, source)
    for path in source.glob("*.safetensors"):
        path.rename(path.with_suffix(".pth"))
    assert main(["pack", "--from", str(source), "--to", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ultrastyle weights: error: sha256 mismatch") and str(source / "1SE.pth") in err
    assert len(err.splitlines()) == 1
    assert not list((tmp_path / "out").iterdir())
