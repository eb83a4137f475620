"""Which ultrastyle this is: the installed package's version and the code version outputs record.

The package version is what ``pip`` installed (``importlib.metadata``). The code version is what
the batch job writes into every pair's settings fingerprint and the distillation job into its
card: ``$ULTRASTYLE_CODE_VERSION`` where the container build sets it, else the package version
plus the git commit of the checkout the code runs from. ``ultrastyle --version`` shows both when
they differ. This module is a leaf (no torch, no Ray), so asking for the version is instant.
"""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["CODE_VERSION_ENV", "PACKAGE", "code_version", "package_version", "version_text"]

PACKAGE = "ultrastyle"
CODE_VERSION_ENV = "ULTRASTYLE_CODE_VERSION"


def package_version() -> str:
    """The installed distribution's version (``"unknown"`` when the package is not installed)."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def code_version() -> str:
    """The code that stylizes: ``$ULTRASTYLE_CODE_VERSION`` (set by the image build), else the
    package version plus the git commit of the checkout it runs from, else the version alone."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    package = package_version()
    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return package
    return f"{package}+git.{commit}"


def version_text() -> str:
    """``ultrastyle 0.1.0``, with ``(code <code version>)`` appended when that differs."""
    package, code = package_version(), code_version()
    return f"{PACKAGE} {package}" if code == package else f"{PACKAGE} {package} (code {code})"
