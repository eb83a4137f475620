"""``ray start --head`` + ``ray job submit -- python -m jobs.stylize ...`` on this machine.

The head runs on loopback with every port chosen free (so it cannot meet another cluster on
the machine) and with ``--block``, so the test stops exactly the processes it started by
ending that one command, instead of ``ray stop``, which stops every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
from PIL import Image

from pipeline.batch.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]


def _free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _wait_for(url: str, seconds: float, head: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1 with a dashboard (the job server); yields its address."""
    ray_cli = shutil.which("ray")
    if ray_cli is None:
        pytest.skip("needs the ray command line (pip install 'ray[default]')")
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics, node_manager, object_manager = _free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="ujs-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    cmd = [
        ray_cli, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
        "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--include-dashboard", "true", "--ray-client-server-port", str(client),
        "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
        "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
        "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
        "--object-store-memory", str(200 * 1024**2), "--temp-dir", temp_dir, "--disable-usage-stats",
    ]
    log = open(Path(temp_dir) / "ray-start.log", "w")  # noqa: SIM115 (closed below)
    head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for(f"{address}/api/version", 120, head)
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)  # --block tears down the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # only this head's own process group
            head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_batch_job(ray_head, content_dir, style_dir, weights_dir, tmp_path):
    address, env = ray_head
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    Image.open(content_dir / "astronaut_512.jpg").convert("RGB").resize((200, 150)).save(source / "gate.jpg")
    Image.open(content_dir / "rocket_420.jpg").convert("RGB").resize((64, 64)).save(source / "face.png")
    runtime_env = {"working_dir": str(REPO), "excludes": [".git", "**/__pycache__", "ultrastyle-out"]}
    entrypoint = [
        sys.executable, "-m", "jobs.stylize", "--input", str(source), "--output", str(out),
        "--style", str(style_dir / "strokes_512.jpg"), "--style-size", "128", "--weights", str(weights_dir),
        "--tile", "128", "--workers", "1", "--max-in-flight", "2",
    ]
    done = subprocess.run(
        [shutil.which("ray"), "job", "submit", "--address", address, "--runtime-env-json", json.dumps(runtime_env),
         "--", *entrypoint],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:]
    assert "succeeded" in logs.lower(), logs[-4000:]
    assert "done: 2 pairs: 2 ok, 0 skipped, 0 failed" in logs  # the job's summary, as `ray job logs` shows it

    rows = read_manifest(str(out)).to_pylist()
    assert sorted((r["status"], r["tiles"]) for r in rows) == [("ok", 1), ("ok", 4)]
    assert Image.open(out / "gate__strokes_512.jpg").size == (200, 150)
    assert Image.open(out / "face__strokes_512.png").size == (64, 64)


def test_infra_manifests_match_the_job_and_the_ray_pin():
    """The RayJob's entrypoint parses with the job's own flags, and every Ray version agrees."""
    import shlex

    import ray
    import yaml

    from jobs.stylize import build_parser

    job = yaml.safe_load((REPO / "infra" / "rayjob-stylize.yaml").read_text())
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.stylize"]
    args = build_parser().parse_args(argv[3:])
    assert args.workers == job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]
    assert args.gpus_per_worker == 1 and args.io_cpus > 0
    cluster = yaml.safe_load((REPO / "infra" / "raycluster.yaml").read_text())
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == cluster["spec"]["rayVersion"] == ray.__version__
    assert f"rayproject/ray:{ray.__version__}-" in (REPO / "infra" / "Dockerfile").read_text()
