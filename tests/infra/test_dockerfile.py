"""infra/Dockerfile: the base image is pinned by digest (the build refuses a tag) and the image
runs as a numeric non-root user, so Kubernetes can check runAsNonRoot against it."""

from __future__ import annotations

import re
import subprocess

import pytest
from infra_checks import INFRA

DOCKERFILE = (INFRA / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    kept = "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    text = re.sub(r"\\\n", " ", kept)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def test_the_base_comes_from_a_build_argument_without_a_default():
    steps = _instructions()
    (base,) = [args for op, args in steps if op == "FROM"]
    assert base == "${RAY_IMAGE}"
    assert ("ARG", "RAY_IMAGE") in steps[: steps.index(("FROM", base))]  # no default: the build must name it


def _guard() -> str:
    (guard,) = [args for op, args in _instructions() if op == "RUN" and "RAY_IMAGE" in args]
    return guard


@pytest.mark.parametrize(
    ("ray_image", "accepted"),
    [
        (f"rayproject/ray@sha256:{'a1' * 32}", True),
        (f"rayproject/ray:2.58.0-py311-gpu@sha256:{'0f' * 32}", True),
        ("rayproject/ray:2.58.0-py311-gpu", False),
        ("rayproject/ray@sha256:abc", False),
        ("", False),
    ],
)
def test_the_build_refuses_a_base_without_a_digest(ray_image, accepted):
    """The guard step, run as the build runs it (``/bin/sh -c``)."""
    done = subprocess.run(["/bin/sh", "-c", _guard()], env={"RAY_IMAGE": ray_image}, capture_output=True, text=True)
    assert (done.returncode == 0) is accepted, done.stderr
    if not accepted:
        assert "RAY_IMAGE must name the base by digest" in done.stderr


def test_the_image_runs_as_a_numeric_non_root_user():
    users = [args for op, args in _instructions() if op == "USER"]
    assert users, "no USER: the base image's user would be taken on trust"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or gid.isdigit())
    steps = _instructions()
    assert steps.index(("USER", users[-1])) > max(i for i, (op, _) in enumerate(steps) if op in ("RUN", "COPY"))
