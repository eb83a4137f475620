"""``ultrastyle weights list|verify|pull|pack``: the embedded weights, other locations and the cache.

- ``list``: the embedded CD 16x files (the default ``--weights``) with their pinned digests and
  whether each is intact, then the official download set and whether each file is cached.
- ``verify [URI]``: check every file of a weights location against its pinned digests (the
  embedded set by default, a copy of the official files, or a bundle's card).
- ``pull [--from URI]``: put the pinned official ``.pth`` files into the cache (from the
  authors' repository, or from a copy: a folder of ``{k}SE.pth``/``{k}SD.pth``), for runs
  that name ``--weights`` of that release rather than the embedded copy.
- ``pack --from DIR --to DIR``: turn the upstream ``.pth`` files into the embedded
  safetensors files (the same bytes every time; see ``models/cd16x/SOURCE.md``).
"""

from __future__ import annotations

import argparse
import json
import sys

from models import WeightsError, resolve_weights
from models.checkpoint import cache_dir, download, fetch, sha256_file
from models.packing import pack_official
from models.weights import CD16xWeights, official_weight_set
from pipeline.errors import one_line_error

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ultrastyle weights", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pull = sub.add_parser("pull", help="download the official .pth files into the cache")
    pull.add_argument("--from", dest="source", default=None,
                      help="a folder or prefix holding {k}SE.pth/{k}SD.pth instead of the authors' repository")
    verify = sub.add_parser("verify", help="check a weights location against its pinned sha256")
    verify.add_argument("uri", nargs="?", default=None, help="folder, bundle or <publish>/latest (default: embedded)")
    sub.add_parser("list", help="show the embedded files, the official download set and the cache")
    pack = sub.add_parser("pack", help="turn the upstream .pth files into the embedded safetensors files")
    pack.add_argument("--from", dest="source", required=True, help="folder holding the upstream {k}SE.pth/{k}SD.pth")
    pack.add_argument("--to", dest="target", required=True, help="folder to write {k}SE/SD.safetensors into")
    for s in (pull, verify):
        s.add_argument("--storage-options", type=json.loads, default=None, help="JSON passed to fsspec")
    return p


def _pull(source: str | None, storage_options: dict | None) -> int:
    wset = official_weight_set(source, layout="flat") if source else CD16xWeights.OFFICIAL.value
    for name, spec in wset.files.items():
        path = download(spec.uri, spec.sha256, storage_options)
        print(f"{name}.pth  ok  {spec.sha256[:12]}  {path}")
    return 0


def _verify(uri: str | None, storage_options: dict | None) -> int:
    wset = resolve_weights(uri, storage_options)
    failed = 0
    for spec in wset.files.values():
        file = spec.uri.rsplit("/", 1)[-1]
        try:
            fetch(spec.uri, spec.sha256, storage_options)
            print(f"{file}  ok  {spec.uri}")
        except WeightsError as e:
            failed += 1
            print(f"{file}  FAILED  {e}")
    print(f"{wset.model_id}: {len(wset.files) - failed} ok, {failed} failed")
    return 1 if failed else 0


def _list() -> int:
    print("embedded (the default --weights, MIT, from MingSun-Tse/Collaborative-Distillation):")
    for name, spec in CD16xWeights.EMBEDDED.value.files.items():
        intact = sha256_file(spec.uri) == spec.sha256
        print(f"{name}.safetensors  {spec.sha256}  {'ok' if intact else 'CHANGED'}  {spec.uri}")
    print(f"official download set, cache {cache_dir()}:")
    for name, spec in CD16xWeights.OFFICIAL.value.files.items():
        cached = (cache_dir() / f"{spec.sha256}.pth").is_file()
        print(f"{name}.pth  {spec.sha256}  {'cached' if cached else 'not cached'}  {spec.uri}")
    return 0


def _pack(source: str, target: str) -> int:
    for path in pack_official(source, target):
        print(f"{path.name}  {sha256_file(path)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pull":
            return _pull(args.source, args.storage_options)
        if args.command == "verify":
            return _verify(args.uri, args.storage_options)
        if args.command == "pack":
            return _pack(args.source, args.target)
        return _list()
    except WeightsError as e:
        print(f"ultrastyle weights: error: {one_line_error(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
