import shutil

from jobs.weights import main


def test_pull_from_a_local_copy_fills_the_cache_and_the_default_then_works_offline(weights_dir, capsys):
    assert main(["list"]) == 0
    assert "not cached" in capsys.readouterr().out
    assert main(["pull", "--from", str(weights_dir)]) == 0
    assert capsys.readouterr().out.count(" ok ") == 10
    assert main(["list"]) == 0
    assert "not cached" not in capsys.readouterr().out
    # No --weights and no network: the official set is served from the cache by digest.
    assert main(["verify"]) == 0
    assert "cd16x: 10 ok, 0 failed" in capsys.readouterr().out


def test_verify_reports_a_tampered_file(weights_dir, tmp_path, capsys):
    copy = tmp_path / "w"
    shutil.copytree(weights_dir, copy)
    (copy / "5SE.pth").write_bytes(b"garbage")
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "5SE.pth  FAILED" in out and "9 ok, 1 failed" in out


def test_pull_from_a_missing_source_is_a_one_line_error(tmp_path, capsys):
    assert main(["pull", "--from", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ultrastyle weights: error:") and "--weights" in err and len(err.splitlines()) == 1
