"""Headers read ahead of admission, several at a time, handed back in plan order (no Ray)."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.batch.headers import HeaderReader
from pipeline.batch.manifest import Pair


def _pairs(contents: str, styles: str = "s") -> list[Pair]:
    return [Pair(f"in/{c}.jpg", f"{s}.jpg", f"out/{c}__{s}.jpg") for c in contents for s in styles]


def test_reads_run_in_parallel_ahead_and_come_back_in_plan_order():
    running, peak, lock = [0], [0], threading.Lock()

    def read(uri: str) -> tuple[int, int]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05 if uri.endswith("a.jpg") else 0.01)  # the first read is the slowest
        with lock:
            running[0] -= 1
        return len(uri), 1

    with HeaderReader(iter(_pairs("abcdefgh")), read, threads=4, ahead=6) as reader:
        got = []
        while not reader.done:
            pair, header = reader.pop()
            got.append((pair.content_uri, header.result()))
    assert [uri for uri, _ in got] == [f"in/{c}.jpg" for c in "abcdefgh"]
    assert peak[0] == 4  # as many reads at once as threads, not one after another


def test_the_pairs_of_one_content_share_one_read_and_a_failed_read_stays_with_its_pairs():
    reads = []

    def read(uri: str) -> tuple[int, int]:
        reads.append(uri)
        if "bad" in uri:
            raise ValueError(f"{uri} is not an image")
        return 4, 3

    with HeaderReader(iter(_pairs(["ok", "bad"], "xy")), read, threads=2, ahead=10) as reader:
        results = []
        while reader.head() is not None:
            pair, header = reader.pop()
            results.append((pair.style_uri, header.exception() is None))
    assert sorted(reads) == ["in/bad.jpg", "in/ok.jpg"]
    assert results == [("x.jpg", True), ("y.jpg", True), ("x.jpg", False), ("y.jpg", False)]
    with pytest.raises(ValueError, match="bad"):
        HeaderReader(iter(_pairs(["bad"])), read, threads=1, ahead=1).pop()[1].result()


def test_drain_hands_back_the_rest_without_reading_it():
    reads = []
    reader = HeaderReader(iter(_pairs("abcdef")), lambda uri: reads.append(uri) or (1, 1), threads=1, ahead=2)
    reader.pop()
    assert [p.content_uri for p in reader.drain()] == [f"in/{c}.jpg" for c in "bcdef"]
    assert reader.done and len(reads) <= 3
    reader.close()
