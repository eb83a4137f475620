"""models/checkpoint.py: fetching over HTTP into the digest-keyed cache, verification, safe loading.

The download path runs against a real HTTP server on 127.0.0.1 (``tests/models/conftest.py``)
serving a copy of the embedded weights (``{k}SE.safetensors``, pinned by their embedded
digests) and, for the upstream URL layout, a folder laid out like the authors' repository
(``trained_models/wct_se_16x_new/<file>``).
"""

from __future__ import annotations

import logging
import pickle
import socket
from pathlib import Path

import pytest
import torch

from models.checkpoint import WEIGHTS_ENV, WeightsError, fetch, load_state_dict, sha256_file
from models.weights import OFFICIAL_FILES, official_weight_set, small_decoder, small_encoder


def _served_set(server):
    return official_weight_set(server.base_uri, layout="safetensors")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_lands_in_cache_keyed_by_sha256(server, cache: Path, weights_dir: Path) -> None:
    spec = _served_set(server).spec("2SE")
    path = fetch(spec.uri, spec.sha256)
    assert path == cache / f"{spec.sha256}.pth"
    assert sha256_file(path) == spec.sha256
    assert path.read_bytes() == (weights_dir / "2SE.safetensors").read_bytes()
    assert server.requests == ["/2SE.safetensors"]
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no partial file left


def test_second_fetch_works_offline(server, cache: Path) -> None:
    wset = _served_set(server)
    first = small_decoder(3, weights=wset)
    server.stop()
    # The server is really gone: a file not yet cached now fails...
    with pytest.raises(WeightsError, match="cannot fetch"):
        small_decoder(2, weights=wset)
    # ...while the cached one loads again, from the cache.
    again = small_decoder(3, weights=wset)
    assert len(server.requests) == 1
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    assert fetch(wset.spec("3SD").uri, wset.spec("3SD").sha256) == cache / f"{wset.spec('3SD').sha256}.pth"


def _flip_a_byte(path: Path) -> None:
    """Change one byte in the middle of ``path`` (a cache entry is written read-only or not: either way)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def test_tampered_cache_entry_is_fetched_again_never_used(server, cache: Path, caplog) -> None:
    """A cache entry changed after its download is hashed on the next lookup and replaced."""
    wset = _served_set(server)
    spec = wset.spec("3SD")
    original = small_decoder(3, weights=wset).state_dict()
    entry = cache / f"{spec.sha256}.pth"
    _flip_a_byte(entry)
    assert sha256_file(entry) != spec.sha256
    with caplog.at_level(logging.WARNING, logger="models.checkpoint"):
        again = small_decoder(3, weights=wset).state_dict()
    assert server.requests == ["/3SD.safetensors", "/3SD.safetensors"]  # fetched again
    assert sha256_file(entry) == spec.sha256
    assert f"weights cache entry {entry} holds sha256" in caplog.text and spec.uri in caplog.text
    for key, value in original.items():
        assert torch.equal(value, again[key]), key


def test_tampered_cache_entry_without_its_source_is_refused(server, cache: Path) -> None:
    wset = _served_set(server)
    spec = wset.spec("2SE")
    small_encoder(2, weights=wset)
    server.stop()
    _flip_a_byte(cache / f"{spec.sha256}.pth")
    with pytest.raises(WeightsError, match="cannot fetch weights from") as err:
        small_encoder(2, weights=wset)
    assert spec.uri in str(err.value) and "\n" not in str(err.value)


def test_load_hashes_the_bytes_it_deserialises(tmp_path: Path, weights_dir: Path) -> None:
    """What loads is what was verified: a file changed after :func:`fetch` checked it is refused."""
    pins = official_weight_set(str(weights_dir), layout="safetensors")
    copy = tmp_path / "1SE.safetensors"
    copy.write_bytes((weights_dir / "1SE.safetensors").read_bytes())
    digest = pins.spec("1SE").sha256
    assert fetch(str(copy), digest) == copy
    assert set(load_state_dict(copy, sha256=digest)) == set(load_state_dict(weights_dir / "1SE.safetensors"))
    _flip_a_byte(copy)
    with pytest.raises(WeightsError, match="sha256 mismatch") as err:
        load_state_dict(copy, sha256=digest)
    assert digest in str(err.value) and sha256_file(copy) in str(err.value)


def test_wrong_bytes_name_uri_and_both_digests(served: Path, server, cache: Path, weights_dir: Path) -> None:
    """The upstream layout: other bytes at the real path of 1SD in the authors' repository."""
    spec = official_weight_set(server.base_uri).spec("1SD")
    target = served / OFFICIAL_FILES["1SD"][0]
    target.parent.mkdir(parents=True)
    target.write_bytes((weights_dir / "2SD.safetensors").read_bytes())
    with pytest.raises(WeightsError) as err:
        small_decoder(1, weights=official_weight_set(server.base_uri))
    message = str(err.value)
    assert server.requests == ["/trained_models/wct_se_16x_new_sd/20191111-091942_E20.pth"]
    assert spec.uri in message
    assert spec.sha256 in message
    assert sha256_file(weights_dir / "2SD.safetensors") in message
    assert "\n" not in message
    # Nothing is cached: neither under the expected digest nor as a stray partial download.
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("where", ["closed port", "missing file"])
def test_unreachable_url_says_how_to_use_a_local_copy(where: str, server, cache: Path) -> None:
    base = f"http://127.0.0.1:{_closed_port()}/" if where == "closed port" else server.base_uri + "nowhere/"
    wset = official_weight_set(base)
    with pytest.raises(WeightsError) as err:
        small_encoder(1, weights=wset)
    message = str(err.value)
    assert wset.spec("1SE").uri in message
    assert "--weights" in message and WEIGHTS_ENV in message
    assert list(cache.iterdir()) == []


def test_local_file_is_verified_in_place(tmp_path: Path, weights_dir: Path, cache: Path) -> None:
    pins = official_weight_set(str(weights_dir), layout="safetensors")
    digest = pins.spec("1SE").sha256
    one = weights_dir / "1SE.safetensors"
    assert fetch(str(one), digest) == one
    assert fetch(f"file://{one}", digest) == one
    assert not cache.exists()  # local files are not copied into the cache
    with pytest.raises(WeightsError, match="sha256 mismatch") as err:
        fetch(str(weights_dir / "2SE.safetensors"), digest)
    assert digest in str(err.value) and pins.spec("2SE").sha256 in str(err.value)
    with pytest.raises(WeightsError, match="not found") as err:
        fetch(str(tmp_path / "absent.pth"), digest)
    assert "--weights" in str(err.value) and WEIGHTS_ENV in str(err.value)


def test_load_state_dict_reads_safetensors_and_unwraps_model_envelope(tmp_path: Path, weights_dir: Path) -> None:
    plain = load_state_dict(weights_dir / "2SD.safetensors")
    assert sorted({k.split(".")[0] for k in plain}) == ["conv11", "conv12", "conv21"]
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in plain.values())
    wrapped = tmp_path / "wrapped.pth"  # the upstream files' layout
    torch.save({"model": plain, "epoch": 20}, wrapped)
    unwrapped = load_state_dict(wrapped)
    assert "model" not in unwrapped and list(unwrapped) == list(plain)
    for key, value in unwrapped.items():
        assert torch.equal(value, plain[key])
    # The format is told by the bytes, not the name (cache entries are all ``<sha256>.pth``).
    renamed = tmp_path / "renamed.pth"
    renamed.write_bytes((weights_dir / "2SD.safetensors").read_bytes())
    assert list(load_state_dict(renamed)) == list(plain)


def test_load_state_dict_rejects_non_dicts_and_garbage(tmp_path: Path) -> None:
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(WeightsError, match="expected a state dict"):
        load_state_dict(listed)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        load_state_dict(garbage)


class _Payload:
    """Unpickling this object opens (creates) a file: code a checkpoint must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv0.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        load_state_dict(path)
    assert not marker.exists()
    # The payload is live: a full unpickle would have run it.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    torch.load(path, weights_only=False)["x"].close()
    assert marker.exists()
