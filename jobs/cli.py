"""The ``ultrastyle`` console script: one subcommand per job module.

Each subcommand is ``jobs.<name>.main(argv)``, the same function ``python -m jobs.<name>``
runs, so the CLI and ``ray job submit -- python -m jobs.stylize ...`` cannot drift apart.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["SUBCOMMANDS", "main"]

SUBCOMMANDS = {
    "stylize": "stylize images (one file, or every image under a prefix as a Ray batch job)",
    "distill": "distil small encoders/decoders on Ray Train",
    "weights": "list, verify, pull or pack model weights",
    "bench": "measure megapixels per second and peak memory of the cascade",
    "score": "how much a picture reads as its style, seen whole and at 1:1 (Gram distance)",
}


def _usage() -> str:
    lines = ["usage: ultrastyle {" + ",".join(SUBCOMMANDS) + "} ...", ""]
    lines += [f"  {name:<9} {text}" for name, text in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to ``jobs.<subcommand>.main(argv[1:])``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"ultrastyle: unknown subcommand {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"jobs.{name}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
