"""The package and code versions: what ``--version`` shows and what outputs record."""

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from pipeline.version import CODE_VERSION_ENV, code_version, package_version, version_text

ROOT = Path(__file__).resolve().parents[2]


def test_package_version_is_the_installed_distribution():
    assert package_version() == version("ultrastyle")


def test_code_version_prefers_the_image_build_then_the_checkout(monkeypatch):
    monkeypatch.setenv(CODE_VERSION_ENV, "abc123")
    assert code_version() == "abc123"
    assert version_text() == f"ultrastyle {package_version()} (code abc123)"
    monkeypatch.delenv(CODE_VERSION_ENV)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    if head.strip():
        assert code_version() == f"{package_version()}+git.{head.strip()}"


def test_the_stylize_job_answers_version():
    env = {**os.environ, CODE_VERSION_ENV: "build-7", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "jobs.stylize", "--version"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ultrastyle {package_version()} (code build-7)\n"
