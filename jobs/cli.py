"""The ``ultrastyle`` console script: one subcommand per job module.

Each subcommand is ``jobs.<name>.main(argv)``, the same function ``python -m jobs.<name>``
runs, so the CLI and ``ray job submit -- python -m jobs.stylize ...`` cannot drift apart.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.version import version_text

__all__ = ["SUBCOMMANDS", "VersionAction", "main"]

SUBCOMMANDS = {
    "stylize": "stylize images (one file, or every image under a prefix as a Ray batch job)",
    "distill": "distil small encoders/decoders on Ray Train",
    "weights": "list, verify, pull or pack model weights",
    "bench": "measure megapixels per second and peak memory of the cascade",
}


class VersionAction(argparse.Action):
    """``--version``: print :func:`pipeline.version.version_text` and exit 0 (worked out only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the package version (and the code version outputs record) and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def _usage() -> str:
    lines = ["usage: ultrastyle [--version] {" + ",".join(SUBCOMMANDS) + "} ...", ""]
    lines += [f"  {name:<9} {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "ultrastyle SUBCOMMAND --help shows a subcommand's flags and examples."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to ``jobs.<subcommand>.main(argv[1:])``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(version_text())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"ultrastyle: unknown subcommand {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"jobs.{name}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
