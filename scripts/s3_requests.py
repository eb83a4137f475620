"""S3 requests the batch job makes per pair: a first run, a rerun with nothing to do, and a dry run.

    python -m scripts.s3_requests [--images 200] [--size 64x48] [--workers 2]

Serves an S3 API from moto on loopback with its request recorder on, puts ``--images`` small
photos and a style in a bucket, and runs ``python -m jobs.stylize`` three times on a local Ray
(the job's actors and tasks are separate processes, so the requests are counted where they
arrive, at the server): a first run over the bucket, the same command again (every pair
skipped), and a ``--dry-run``. For each it prints the requests by kind (``LIST``, ``HEAD``,
``GET``, ``PUT``, other) and per million pairs. Needs no download but the weights
(``--weights`` or ``$ULTRASTYLE_WEIGHTS``; the embedded ones by default).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import tempfile
from pathlib import Path

# One recorded request: the server's recorder writes a JSON object per request, from several
# threads at once (so lines may run into each other); the method and URL are found by pattern.
_REQUEST = re.compile(r'"method": "([A-Z]+)", "url": "([^"]*)"')


def _count(path: Path) -> collections.Counter:
    """Requests recorded so far by kind (``LIST``, ``HEAD``, ``GET``, ``PUT``, ...); clears the record."""
    found: collections.Counter = collections.Counter()
    if path.exists():
        for method, url in _REQUEST.findall(path.read_text()):
            found["LIST" if method == "GET" and "list-type=" in url else method] += 1
        path.unlink()
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", default="64x48", help="WxH of each photo")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--weights", default=None)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ultrastyle-requests-"))
    recording = work / "requests.jsonl"
    os.environ["MOTO_ENABLE_RECORDING"] = "1"  # read when moto is imported
    os.environ["MOTO_RECORDER_FILEPATH"] = str(recording)
    import ray
    import s3fs
    from moto.server import ThreadedMotoServer

    from jobs.bench import photo_file
    from jobs.samples import paint_style
    from jobs.stylize import main as stylize_main

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.mkdir("bench")
    width, height = (int(v) for v in args.size.split("x"))
    photo_file(str(work / "photo.jpg"), width, height)
    for i in range(args.images):
        fs.put_file(str(work / "photo.jpg"), f"bench/in/{i // 100:03d}/p{i:05d}.jpg")
    paint_style(512).resize((128, 128)).save(work / "style.jpg", quality=95)
    fs.put_file(str(work / "style.jpg"), "bench/style.jpg")
    _count(recording)

    argv = ["--input", "s3://bench/in", "--style", "s3://bench/style.jpg", "--output", "s3://bench/out",
            "--storage-options", json.dumps(options), "--workers", str(args.workers), "--progress-seconds", "60"]
    if args.weights:
        argv += ["--weights", args.weights]
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False)
    try:
        for name, extra in (("first run", []), ("rerun, all done", []), ("dry run", ["--dry-run"])):
            status = stylize_main([*argv, *extra])
            counts = _count(recording)
            total = sum(counts.values())
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            print(f"{name} (exit {status}): {total} requests for {args.images} pairs ({kinds}); "
                  f"{total / args.images * 1e6:,.0f} per million pairs", flush=True)
    finally:
        ray.shutdown()
        server.stop()


if __name__ == "__main__":
    main()
