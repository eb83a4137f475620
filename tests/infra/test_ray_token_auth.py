"""Ray token authentication, as infra/ turns it on: the Ray this project pins, started with the
environment KubeRay gives every Ray container under ``authOptions: {mode: token}``
(``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``), refuses its job API and its GCS to anyone
without the token.

The head runs in a child process (Ray reads ``RAY_AUTH_MODE`` when it is imported); this test
process probes it over HTTP like ``ray job submit`` would, and a second child without the token
tries to join it as a driver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

TOKEN = "test-token-8f2c1d"

_HEAD = """
import json, sys, ray
context = ray.init(num_cpus=1, include_dashboard=True, dashboard_port=0)
print(json.dumps({"dashboard": context.dashboard_url, "gcs": context.address_info["gcs_address"]}), flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""

_JOIN = """
import sys, ray
try:
    ray.init(address=sys.argv[1])
except Exception as e:
    print(type(e).__name__, e)
    sys.exit(3)
print("joined")
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def head() -> Iterator[dict[str, str]]:
    process = subprocess.Popen([sys.executable, "-c", _HEAD], env=_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield json.loads(process.stdout.readline())
    finally:
        process.stdin.close()
        process.wait(timeout=120)


def _status(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow
def test_the_job_api_needs_the_token(head):
    jobs = f"http://{head['dashboard']}/api/jobs/"
    assert _status(jobs, None) == 401
    assert _status(jobs, "not-the-token") == 403
    assert _status(jobs, TOKEN) == 200


@pytest.mark.slow
@pytest.mark.parametrize(("token", "joins"), [(None, False), ("not-the-token", False), (TOKEN, True)])
def test_joining_the_cluster_needs_the_token(head, token, joins):
    env = _env(RAY_AUTH_MODE="token", **({"RAY_AUTH_TOKEN": token} if token else {}))
    done = subprocess.run([sys.executable, "-c", _JOIN, head["gcs"]], env=env, capture_output=True, text=True,
                          timeout=300)
    output = done.stdout + done.stderr
    assert (done.returncode == 0) is joins, output[-500:]
    if not joins:
        assert "InvalidAuthToken" in output or "AuthenticationError" in output, output[-500:]
