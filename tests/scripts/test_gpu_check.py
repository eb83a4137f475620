"""``scripts/gpu_check.sh`` on the CPU path, and the report it writes.

The end-to-end test runs the whole script as CI can (no GPU, the current interpreter, no
install) and checks the JSON's schema and that every step and run recorded a result or a
reason; the others check the report's parsing on hand-made inputs, including a work folder
with nothing in it (the report is still written).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.gpu_check_report import (
    SCHEMA,
    STATUSES,
    STEPS,
    TARGETS,
    gpu_utilisation,
    main,
    pytest_summary,
    seconds_from_cli_log,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _check_schema(report: dict) -> None:
    """Every step and run has a known status and, unless ``ok``, a reason."""
    assert report["schema"] == SCHEMA
    assert list(report["steps"]) == list(STEPS)
    for name, step in report["steps"].items():
        assert step["status"] in STATUSES, name
        assert step["status"] == "ok" or step["reason"], name
        for run in step.get("runs", []):
            assert run["status"] in STATUSES, (name, run)
            assert run["status"] == "ok" or run["reason"], (name, run)
    assert [t["key"] for t in report["targets"]] == [key for key, *_ in TARGETS] or not report["plan"]
    assert all(line.count(":") >= 2 for line in report["not_done"])


@pytest.mark.slow
def test_the_cpu_run_measures_every_step_and_exits_0(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    env.pop("OUT", None)
    run = subprocess.run(["bash", str(SCRIPT), "--current-python", "--cpu", "--budget", "1500", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1700)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    _check_schema(report)
    steps = report["steps"]
    assert report["plan"]["target"] == "cpu" and report["plan"]["sizes"] == ["256x256", "512x256"]
    assert steps["install"]["status"] == "skipped" and "--current-python" in steps["install"]["reason"]
    assert steps["install"]["environment"]["modules"]["torch"].startswith("2.")
    # The CUDA tests are selected by their marker, and skip here with their reason.
    tests = steps["cuda_tests"]["pytest"]
    assert steps["cuda_tests"]["status"] == "ok" and tests["tests"] >= 5 and tests["skipped"] == tests["tests"]
    bench = steps["bench"]["runs"]
    assert [(r["size"], r["precision"]) for r in bench] == [
        (size, p) for size in ("256x256", "512x256") for p in ("fp32", "tf32", "bf16", "fp16")]
    for r in bench:
        assert r["status"] == "ok" and set(r["result"]["level_seconds"]) == set("54321")
        assert r["result"]["device"] == "cpu" and r["result"]["peak_gpu_gib"] is None
    psnr = {(r["size"], r["precision"]): r["result"]["psnr_vs_fp32_whole"] for r in bench}
    assert psnr[("512x256", "fp32")] == "inf" or psnr[("512x256", "fp32")] >= 60  # exact tiles: 2 here
    assert 20 < psnr[("512x256", "bf16")] < 50
    for r in steps["cli"]["runs"]:
        assert r["status"] == "ok" and r["file_seconds"] > 0 and r["output_bytes"] > 1000
    assert steps["stroke_scale"]["status"] in ("ok", "not available")
    batch = steps["batch"]
    assert batch["status"] == "ok" and batch["manifest"]["ok"] == 2 and batch["actor_devices"] == ["cpu"]
    assert batch["gpu_utilisation"] is None and batch["gpu_utilisation_reason"]
    assert all(t["met"] is None for t in report["targets"])  # GPU targets are not judged on a CPU
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| 512x256 | bf16 | ok |" in md and "## Targets (issue 21)" in md


def test_a_failed_install_does_not_stop_the_steps_after_it(tmp_path):
    """An offline install from a folder with no wheels fails; the CUDA tests still run with the venv
    it made (the interpreter's packages, the tree on PYTHONPATH), the report says so, exit 1."""
    (tmp_path / "wheels").mkdir()
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    run = subprocess.run(["bash", str(SCRIPT), "--wheels", str(tmp_path / "wheels"), "--only", "cuda_tests", "--cpu",
                          "--budget", "900", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1000)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    _check_schema(report)
    steps = report["steps"]
    assert steps["install"]["status"] == "failed" and "holds no .whl file" in steps["install"]["reason"]
    assert "install incomplete" in report["plan"]["interpreter"]
    assert steps["inputs"]["status"] == "ok" and steps["cuda_tests"]["status"] == "ok"
    assert steps["cuda_tests"]["pytest"]["tests"] >= 5
    for name in ("bench", "cli", "stroke_scale", "batch"):
        assert steps[name]["status"] == "skipped" and steps[name]["reason"] == "not selected (--only cuda_tests)"
    assert "gpu_check: not done: install: failed: --wheels" in run.stdout


def test_an_empty_work_folder_still_gives_a_report_with_a_reason_per_step(tmp_path, capsys):
    assert main([str(tmp_path / "work"), str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    _check_schema(report)
    assert {s["status"] for s in report["steps"].values()} == {"skipped"}
    assert (tmp_path / "out" / "gpu_check.md").read_text().startswith("# GPU check")
    assert "gpu_check: not done: bench: skipped: not reached" in capsys.readouterr().out


def test_gpu_utilisation_averages_the_samples_inside_the_pairs_span():
    t0 = dt.datetime(2026, 11, 4, 12, 0, 0).timestamp()
    lines = ["timestamp, utilization.gpu [%], memory.used [MiB]"]  # a header is skipped
    for i in range(10):
        when = dt.datetime.fromtimestamp(t0 + 0.2 * i).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
        lines.append(f"{when}, {0 if i < 5 else 90}, {1000 + i}")
    lines.append("2026/11/04 12:00:09.000, [N/A], [N/A]")
    util = gpu_utilisation("\n".join(lines), (t0 + 0.9, t0 + 5))
    assert util == {"samples": 10, "mean_pct": 45.0, "max_pct": 90.0, "mean_pct_in_pairs": 90.0,
                    "samples_in_pairs": 5, "max_memory_mib": 1009.0}
    assert gpu_utilisation("\n".join(lines))["mean_pct_in_pairs"] is None
    assert gpu_utilisation("") is None


def test_pytest_summary_counts_each_outcome(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.a" name="test_ok" time="0.1"/>'
        '<testcase classname="tests.a" name="test_gpu" time="0"><skipped message="needs a CUDA GPU"/></testcase>'
        '<testcase classname="tests.b" name="test_bad" time="0.2"><failure message="assert 41 == 60&#10;more">'
        "tb</failure></testcase>"
        '<testcase classname="tests.b" name="test_err" time="0"><error message="fixture broke"/></testcase>'
        "</testsuite></testsuites>")
    summary = pytest_summary(xml)
    assert {k: summary[k] for k in ("tests", "passed", "failed", "skipped")} == {
        "tests": 4, "passed": 1, "failed": 2, "skipped": 1}
    assert summary["outcomes"]["tests.a::test_gpu"] == "skipped"
    assert summary["failures"] == ["tests.b::test_bad: assert 41 == 60", "tests.b::test_err: fixture broke"]
    assert pytest_summary(tmp_path / "missing.xml") is None


def test_seconds_from_the_cli_log_line():
    log = ("12:00:01 models cd16x loaded\n"
           "12:00:03 wrote /tmp/o.jpg (10240x4096, exact mode, 40 tiles) in 1.3 s (41.943 MP/s)\n")
    assert seconds_from_cli_log(log) == {"file_seconds": 1.3, "stylize_seconds": 1.0}
    assert seconds_from_cli_log("no such line") == {"file_seconds": None, "stylize_seconds": None}


def test_a_bad_option_is_one_line_and_exit_2(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "--budget", "soon", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == "gpu_check: error: --budget needs a whole number of seconds"
