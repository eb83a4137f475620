"""The report of ``scripts/gpu_check.sh``: ``gpu_check.json`` and ``gpu_check.md`` from its work folder.

    python scripts/gpu_check_report.py WORK OUTDIR

The script leaves plain files in ``WORK``: one ``.status``/``.seconds``/``.reason`` triple per
step and per run, ``ultrastyle bench --json`` output, pytest's JUnit XML, ``nvidia-smi`` samples,
the batch manifest's summary and the probe's JSON (``scripts/gpu_check_probe.py``). This module
uses the standard library alone, so it runs with any ``python3`` even when the install step
failed, and a missing file becomes a reason, never a traceback: the report is always written.
docs/gpu.md describes the format.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA",
    "STATUSES",
    "STEPS",
    "TARGETS",
    "build_report",
    "gpu_utilisation",
    "main",
    "markdown",
    "pytest_summary",
    "seconds_from_cli_log",
]

SCHEMA = "ultrastyle.gpu_check/1"
# Steps in the order the script runs them.
STEPS = ("install", "inputs", "cuda_tests", "bench", "cli", "stroke_scale", "batch")
STATUSES = ("ok", "failed", "timeout", "skipped", "not available")
# Issue 21's targets: (key, what, unit, bound, higher is better). The first bench/cli size plays
# 3840x2160 and the second 10240x4096; a CPU run fills them at its small sizes ("measured at")
# but does not judge them.
TARGETS = (
    ("fp32_tiled_vs_whole_db", "fp32 exact tiled vs fp32 whole on the device (PSNR)", "dB", 60.0, True),
    ("fp32_gpu_vs_cpu", "fp32 on the GPU vs the CPU, >= 50 dB (test_on_a_gpu_fp32_matches_the_cpu)", "", None,
     True),
    ("fp32_4k_seconds", "3840x2160 exact, fp32: GPU time", "s", 0.150, False),
    ("bf16_4k_seconds", "3840x2160 exact, bf16: GPU time", "s", 0.050, False),
    ("file_to_file_large_seconds", "10240x4096 file to file (models loaded to file written)", "s", 1.5, False),
    ("batch_gpu_utilisation_pct", "batch job, GPU actors: mean GPU utilisation while pairs run", "%", 80.0, True),
)
_NOT_REACHED = "not reached: the step ended before this run"
_WROTE = re.compile(r"wrote .* \((\d+)x(\d+), .*\) in ([\d.]+) s \(([\d.]+) MP/s\)")
_ACTOR = re.compile(r"actor \S+ ready: model \S+ on (\S+),")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _json(path: Path) -> Any:
    """The JSON in ``path`` (for a log with other lines, its last line that parses), else ``None``."""
    text = _read(path)
    if not text:
        return None
    for line in [text, *reversed(text.splitlines())]:
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _seconds(path: Path) -> float | None:
    """The number of seconds in ``path``, ``None`` when it is missing or not a number."""
    text = _read(path)
    try:
        return round(float(text), 2) if text else None
    except ValueError:
        return None


def _record(prefix: Path, step: dict[str, Any] | None = None) -> dict[str, Any]:
    """A step's or run's ``status``, ``seconds`` and ``reason`` from ``prefix.{status,seconds,reason}``.

    A run with no record takes its ``step``'s status and reason when the step did not run it
    (``not available``, ``skipped``), else it is ``skipped`` as not reached.
    """
    status = _read(prefix.with_name(prefix.name + ".status"))
    if status is None:
        if step is None:
            return {"status": "skipped", "seconds": None, "reason": "not reached"}
        if step["status"] in ("not available", "skipped"):
            return {"status": step["status"], "seconds": None, "reason": step["reason"]}
        return {"status": "skipped", "seconds": None, "reason": _NOT_REACHED}
    reason = _read(prefix.with_name(prefix.name + ".reason")) or ""
    if status != "ok" and not reason:
        reason = f"{status}, no reason recorded"
    return {"status": status, "seconds": _seconds(prefix.with_name(prefix.name + ".seconds")), "reason": reason}


def seconds_from_cli_log(text: str) -> dict[str, float | None]:
    """The seconds in ``ultrastyle stylize``'s last line, ``wrote ... (WxH, ...) in T s (R MP/s)``.

    Returns:
        ``file_seconds``: T, from loading the models to the written file (decode, cascade and
        encode included; 0.1 s steps); ``stylize_seconds``: the cascade alone, the megapixels
        over R (R has 3 decimals: precise at GPU rates, coarse below 1 MP/s). ``None`` each
        when the line is missing.
    """
    found = _WROTE.search(text)
    if not found:
        return {"file_seconds": None, "stylize_seconds": None}
    width, height, total, rate = int(found[1]), int(found[2]), float(found[3]), float(found[4])
    return {"file_seconds": total, "stylize_seconds": round(width * height / 1e6 / rate, 3) if rate else None}


def pytest_summary(xml_path: Path) -> dict[str, Any] | None:
    """Counts and outcomes of a pytest ``--junitxml`` file, ``None`` when it is missing or unreadable.

    Returns:
        ``tests``, ``passed``, ``failed`` (failures and errors), ``skipped``, ``outcomes``
        (test name -> ``passed``/``failed``/``skipped``) and ``failures`` (``name: first line``).
    """
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        return None
    outcomes: dict[str, str] = {}
    failures = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            outcomes[name] = "failed"
            failures.append(f"{name}: {(bad.get('message') or '').splitlines()[0] if bad.get('message') else ''}")
        elif case.find("skipped") is not None:
            outcomes[name] = "skipped"
        else:
            outcomes[name] = "passed"
    counts = list(outcomes.values())
    return {
        "tests": len(counts),
        "passed": counts.count("passed"),
        "failed": counts.count("failed"),
        "skipped": counts.count("skipped"),
        "outcomes": outcomes,
        "failures": failures,
    }


def gpu_utilisation(csv_text: str, span: tuple[float, float] | None = None) -> dict[str, Any] | None:
    """GPU utilisation from ``nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used
    --format=csv,noheader,nounits`` samples, ``None`` when there are none.

    Args:
        csv_text: the samples, one ``YYYY/MM/DD HH:MM:SS.fff, util, MiB`` line each (local time,
            as ``nvidia-smi`` writes it; one GPU).
        span: epoch seconds ``(start, end)`` the batch pairs ran in: ``mean_pct_in_pairs`` averages
            only the samples inside it (Ray's start and the actors' loading left out).

    Returns:
        ``samples``, ``mean_pct`` and ``max_pct`` over all samples, ``mean_pct_in_pairs`` and
        ``samples_in_pairs`` (``None``/0 without a span or samples in it), ``max_memory_mib``.
    """
    samples = []
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            continue
        try:
            when = dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((when, float(parts[1]), float(parts[2])))
        except ValueError:
            continue  # a header or an "[N/A]" field
    if not samples:
        return None
    inside = [u for when, u, _ in samples if span and span[0] <= when <= span[1]]
    return {
        "samples": len(samples),
        "mean_pct": round(statistics.fmean(u for _, u, _ in samples), 1),
        "max_pct": max(u for _, u, _ in samples),
        "mean_pct_in_pairs": round(statistics.fmean(inside), 1) if inside else None,
        "samples_in_pairs": len(inside),
        "max_memory_mib": max(m for _, _, m in samples),
    }


def _bench(work: Path, plan: dict[str, Any], step: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``ultrastyle bench`` run per size and precision, with its JSON as ``result``."""
    runs = []
    for size in plan["sizes"]:
        for precision in plan["precisions"]:
            prefix = work / "results" / "bench" / f"{size}_{precision}"
            run = {"size": size, "precision": precision, **_record(prefix, step)}
            run["result"] = _json(prefix.with_suffix(".out")) if run["status"] == "ok" else None
            if run["status"] == "ok" and run["result"] is None:
                run.update(status="failed", reason="ultrastyle bench wrote no JSON")
            runs.append(run)
    return runs


def _files(work: Path, name: str, sizes: list[str], step: dict[str, Any]) -> list[dict[str, Any]]:
    """The single-image CLI runs of step ``name`` (``cli`` or ``stroke_scale``), one per size."""
    runs = []
    for size in sizes:
        prefix = work / "results" / name / size
        run = {"size": size, **_record(prefix, step), "args": _read(prefix.with_suffix(".args"))}
        log = _read(prefix.with_suffix(".log")) if run["status"] == "ok" else None
        run.update(seconds_from_cli_log(log or ""))
        run["output_bytes"] = int(_read(prefix.with_suffix(".bytes")) or 0) or None
        runs.append(run)
    return runs


def _batch(work: Path, plan: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    """The batch job's run, its manifest summary, the actors' devices and the GPU's utilisation."""
    folder = work / "results" / "batch"
    manifest = _json(folder / "manifest.json")
    found = _ACTOR.findall(_read(folder / "job.log") or "")
    out: dict[str, Any] = {
        "images": plan["batch"]["copies"],
        "size": plan["batch"]["size"],
        "job": _record(folder / "job", step),
        "actor_devices": sorted(set(found)),
        "manifest": manifest,
    }
    if manifest and manifest.get("first_start") is not None:
        span = manifest["last_end"] - manifest["first_start"]
        out["pairs_span_seconds"] = round(span, 2)
        out["mp_per_s"] = round(manifest["megapixels"] / span, 3) if span > 0 else None
    csv_text = _read(folder / "util.csv")
    if csv_text is None:
        out["gpu_utilisation"] = None
        out["gpu_utilisation_reason"] = _read(folder / "util.reason") or "no nvidia-smi samples"
    else:
        window = (manifest["first_start"], manifest["last_end"]) if manifest and manifest["first_start"] else None
        out["gpu_utilisation"] = gpu_utilisation(csv_text, window)
        out["gpu_utilisation_reason"] = "" if out["gpu_utilisation"] else "nvidia-smi wrote no samples"
    return out


def _find(runs: list[dict[str, Any]], **match: str) -> dict[str, Any] | None:
    for run in runs:
        if all(run.get(k) == v for k, v in match.items()) and run.get("status") == "ok":
            return run
    return None


def _targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 21's targets with the figures this run measured (judged only on a CUDA run)."""
    plan, steps = report["plan"], report["steps"]
    small, large = plan["sizes"][0], plan["sizes"][-1]
    bench = steps["bench"].get("runs", [])

    def bench_value(size: str, precision: str, key: str) -> Any:
        run = _find(bench, size=size, precision=precision)
        return run["result"].get(key) if run else None

    psnrs = [bench_value(size, "fp32", "psnr_vs_fp32_whole") for size in plan["sizes"]]
    psnrs = [math.inf if p == "inf" else p for p in psnrs if p is not None]
    outcomes = (steps["cuda_tests"].get("pytest") or {}).get("outcomes", {})
    gpu_cpu = next((v for k, v in outcomes.items() if k.endswith("test_on_a_gpu_fp32_matches_the_cpu")), None)
    large_file = _find(steps["cli"].get("runs", []), size=large)
    util = steps["batch"].get("gpu_utilisation") or {}
    measured = {
        "fp32_tiled_vs_whole_db": min(psnrs) if psnrs else None,
        "fp32_gpu_vs_cpu": gpu_cpu,
        "fp32_4k_seconds": bench_value(small, "fp32", "seconds"),
        "bf16_4k_seconds": bench_value(small, "bf16", "seconds"),
        "file_to_file_large_seconds": large_file["file_seconds"] if large_file else None,
        "batch_gpu_utilisation_pct": util.get("mean_pct_in_pairs"),
    }
    measured_at = {
        "fp32_tiled_vs_whole_db": " and ".join(plan["sizes"]),
        "fp32_gpu_vs_cpu": "the test's 240x256 crop",
        "fp32_4k_seconds": small,
        "bf16_4k_seconds": small,
        "file_to_file_large_seconds": large,
        "batch_gpu_utilisation_pct": f"{plan['batch']['copies']} x {plan['batch']['size']}",
    }
    judged = plan["target"] == "cuda"
    rows = []
    for key, what, unit, bound, higher in TARGETS:
        value = measured[key]
        if not judged or value is None:
            met = None
        elif bound is None:
            met = value == "passed"
        else:
            met = value >= bound if higher else value <= bound
        shown = "inf" if value == math.inf else value
        rows.append({"key": key, "target": what, "bound": bound, "direction": ">=" if higher else "<=", "unit": unit,
                     "measured": shown, "measured_at": measured_at[key], "met": met})
    return rows


def build_report(work: Path) -> dict[str, Any]:
    """Everything ``scripts/gpu_check.sh`` left in ``work``, as the ``gpu_check.json`` object."""
    plan = _json(work / "plan.json") or {}
    results = work / "results"
    steps: dict[str, dict[str, Any]] = {name: _record(results / name) for name in STEPS}
    steps["install"]["environment"] = _json(results / "env.json")
    steps["cuda_tests"]["pytest"] = pytest_summary(results / "cuda_tests.xml")
    if plan:
        steps["bench"]["runs"] = _bench(work, plan, steps["bench"])
        steps["cli"]["runs"] = _files(work, "cli", plan["cli_sizes"], steps["cli"])
        steps["stroke_scale"]["runs"] = _files(work, "stroke_scale", [plan["stroke_size"]], steps["stroke_scale"])
        steps["batch"].update(_batch(work, plan, steps["batch"]))
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": plan.get("started_at"),
        "seconds": _seconds(work / "seconds"),
        "plan": plan,
        "steps": steps,
    }
    report["targets"] = _targets(report) if plan else []
    report["not_done"] = _not_done(steps)
    return report


def _not_done(steps: dict[str, dict[str, Any]]) -> list[str]:
    """``step: reason`` for every step and run that is not ``ok``."""
    lines = []
    for name, step in steps.items():
        if step["status"] != "ok":
            lines.append(f"{name}: {step['status']}: {step['reason']}")
        for run in step.get("runs", []):
            if run["status"] != "ok":
                label = " ".join(str(run[k]) for k in ("size", "precision") if k in run)
                lines.append(f"{name} {label}: {run['status']}: {run['reason']}")
    return lines


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _status(run: dict[str, Any]) -> str:
    return run["status"] if run["status"] == "ok" else f"{run['status']}: {run['reason']}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table, ``-`` for empty cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _md_steps(steps: dict[str, dict[str, Any]]) -> list[str]:
    tests, batch = steps["cuda_tests"].get("pytest"), steps["batch"]
    notes = {
        "cuda_tests": tests and f"{tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped",
        "batch": batch.get("manifest") and f"{batch['manifest']['ok']}/{batch['images']} pairs ok, actors on "
        f"{', '.join(batch['actor_devices']) or '?'}",
    }
    rows = [[name, step["status"], step["seconds"], step["reason"] if step["status"] != "ok" else notes.get(name)]
            for name, step in steps.items()]
    return _table(["step", "status", "seconds", "result or reason"], rows)


def _md_bench(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for run in runs:
        r = run["result"] or {}
        levels = " / ".join(str(r["level_seconds"].get(k, "-")) for k in "54321") if r.get("level_seconds") else None
        rows.append([run["size"], run["precision"], _status(run), r.get("seconds"), r.get("mp_per_s"), levels,
                     r.get("peak_gpu_gib"), r.get("peak_rss_gib"), r.get("psnr_vs_fp32_whole")])
    return _table(["size", "precision", "status", "seconds", "MP/s", "seconds per level 5/4/3/2/1", "peak GPU GiB",
                   "peak RSS GiB", "PSNR vs fp32 whole (dB)"], rows)


def _md_files(steps: dict[str, dict[str, Any]]) -> list[str]:
    rows = [[name, run["size"], _status(run), run["seconds"], run["file_seconds"], run["stylize_seconds"], run["args"]]
            for name in ("cli", "stroke_scale") for run in steps[name].get("runs", [])]
    return _table(["run", "size", "status", "process wall seconds", "models loaded to file written",
                   "cascade seconds", "arguments"], rows)


def _md_batch(batch: dict[str, Any]) -> list[str]:
    util = batch.get("gpu_utilisation") or {}
    row = [f"{batch.get('images')} x {batch.get('size')}", (batch.get("job") or {}).get("seconds"),
           batch.get("pairs_span_seconds"), batch.get("mp_per_s"),
           f"{_cell(util.get('mean_pct_in_pairs'))} ({_cell(util.get('mean_pct'))})", util.get("max_pct"),
           util.get("max_memory_mib")]
    lines = _table(["images", "job wall seconds", "pairs span seconds", "MP/s", "GPU util % mean in pairs (all)",
                    "GPU util % max", "GPU memory max MiB"], [row])
    return lines + ([] if util else ["", f"GPU utilisation: {_cell(batch.get('gpu_utilisation_reason'))}."])


def _md_targets(targets: list[dict[str, Any]], judged: bool) -> list[str]:
    rows = []
    for t in targets:
        bound = None if t["bound"] is None else f"{t['direction']} {t['bound']} {t['unit']}".strip()
        met = {True: "yes", False: "no", None: "-" if judged else "n/a"}[t["met"]]
        rows.append([t["target"], bound, t["measured"], t["measured_at"], met])
    return _table(["target", "bound", "measured", "measured at", "met"], rows)


def markdown(report: dict[str, Any]) -> str:
    """``gpu_check.md``: the steps, the bench rows, the file runs, the batch job, the targets, what was not done."""
    steps, plan = report["steps"], report["plan"]
    env = steps["install"].get("environment") or {}
    gpu = (env.get("gpu") or {}).get("name") or "no CUDA GPU"
    lines = ["# GPU check", "",
             f"{report['started_at'] or '?'}, {_cell(report['seconds'])} s, target {plan.get('target', '?')} ({gpu}), "
             f"Python {env.get('python', '?')}, torch {(env.get('modules') or {}).get('torch', '?')}, "
             f"interpreter: {plan.get('interpreter', '?')}.", "", *_md_steps(steps)]
    if plan:
        lines += ["", "## ultrastyle bench", "", *_md_bench(steps["bench"]["runs"])]
        lines += ["", "## File to file (`ultrastyle stylize`)", "", *_md_files(steps)]
        lines += ["", "## Batch job", "", *_md_batch(steps["batch"])]
        lines += ["", "## Targets (issue 21)", "", *_md_targets(report["targets"], plan["target"] == "cuda")]
    if report["not_done"]:
        lines += ["", "## Not done", ""] + [f"- {line}" for line in report["not_done"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="the work folder of scripts/gpu_check.sh")
    parser.add_argument("outdir", type=Path, help="where gpu_check.json and gpu_check.md go")
    args = parser.parse_args(argv)
    report = build_report(args.work)
    args.outdir.mkdir(parents=True, exist_ok=True)
    (args.outdir / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.outdir / "gpu_check.md").write_text(markdown(report))
    for line in report["not_done"]:
        print(f"gpu_check: not done: {line}")
    print(f"gpu_check: wrote {args.outdir / 'gpu_check.json'} and {args.outdir / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
