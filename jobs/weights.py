"""``ultrastyle weights pull|verify|list``: manage the model weights and their cache.

- ``pull [--from URI]``: put the pinned official files into the cache (from the authors'
  repository, or from a copy: a folder of ``{k}SE.pth``/``{k}SD.pth``), so later runs work
  offline with no ``--weights``.
- ``verify [URI]``: check every file of a weights location against its pinned digests (the
  official table, or a bundle's card).
- ``list``: the pinned files, their digests and whether each is cached.
"""

from __future__ import annotations

import argparse
import json
import sys

from models import WeightsError, resolve_weights
from models.checkpoint import cache_dir, download, fetch
from models.weights import CD16xWeights, official_weight_set

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ultrastyle weights", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pull = sub.add_parser("pull", help="download the official files into the cache")
    pull.add_argument("--from", dest="source", default=None,
                      help="a folder or prefix holding {k}SE.pth/{k}SD.pth instead of the authors' repository")
    verify = sub.add_parser("verify", help="check a weights location against its pinned sha256")
    verify.add_argument("uri", nargs="?", default=None, help="folder, bundle or <publish>/latest (default: official)")
    sub.add_parser("list", help="show the pinned files and the cache")
    for s in (pull, verify):
        s.add_argument("--storage-options", type=json.loads, default=None, help="JSON passed to fsspec")
    return p


def _pull(source: str | None, storage_options: dict | None) -> int:
    wset = official_weight_set(source, layout="flat") if source else CD16xWeights.DEFAULT.value
    for name, spec in wset.files.items():
        path = download(spec.uri, spec.sha256, storage_options)
        print(f"{name}.pth  ok  {spec.sha256[:12]}  {path}")
    return 0


def _verify(uri: str | None, storage_options: dict | None) -> int:
    wset = resolve_weights(uri, storage_options)
    failed = 0
    for name, spec in wset.files.items():
        try:
            fetch(spec.uri, spec.sha256, storage_options)
            print(f"{name}.pth  ok  {spec.uri}")
        except WeightsError as e:
            failed += 1
            print(f"{name}.pth  FAILED  {e}")
    print(f"{wset.model_id}: {len(wset.files) - failed} ok, {failed} failed")
    return 1 if failed else 0


def _list() -> int:
    print(f"cache: {cache_dir()}")
    for name, spec in CD16xWeights.DEFAULT.value.files.items():
        cached = (cache_dir() / f"{spec.sha256}.pth").is_file()
        print(f"{name}.pth  {spec.sha256}  {'cached' if cached else 'not cached'}  {spec.uri}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pull":
            return _pull(args.source, args.storage_options)
        if args.command == "verify":
            return _verify(args.uri, args.storage_options)
        return _list()
    except WeightsError as e:
        print(f"ultrastyle weights: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
