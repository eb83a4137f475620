"""models/weights.py: the official set, local copies, distilled bundles and the strict builders."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from models import bundle
from models.checkpoint import WEIGHTS_ENV, WeightsError, load_state_dict, sha256_file
from models.family import CD16X, LEVELS, FamilySpec
from models.weights import (
    EMBEDDED_DIR,
    OFFICIAL_BASE_URL,
    OFFICIAL_FILES,
    CD16xWeights,
    official_weight_set,
    resolve_weights,
    small_decoder,
    small_encoder,
)

NAMES = [f"{k}{kind}" for k in LEVELS for kind in ("SE", "SD")]


def _source_table() -> dict[str, tuple[str, str, str]]:
    """``{k}SE/SD -> (upstream path, upstream sha256, embedded sha256)`` from models/cd16x/SOURCE.md."""
    rows = {}
    for line in (EMBEDDED_DIR / "SOURCE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].endswith(".safetensors"):
            rows[cells[0].removesuffix(".safetensors")] = (cells[1], cells[2], cells[3])
    return rows


def test_embedded_set_is_the_default_pinned_and_documented(weights_dir: Path) -> None:
    table = _source_table()
    wset = CD16xWeights.DEFAULT.value
    assert CD16xWeights.DEFAULT is CD16xWeights.EMBEDDED and weights_dir == EMBEDDED_DIR
    assert wset.model_id == "cd16x" and wset.family == CD16X and wset.levels == LEVELS
    assert sorted(wset.files) == sorted(table) == sorted(OFFICIAL_FILES) == sorted(NAMES)
    for name, (path, upstream_digest, digest) in table.items():
        assert wset.files[name].uri == str(EMBEDDED_DIR / f"{name}.safetensors")
        assert wset.files[name].sha256 == digest == sha256_file(weights_dir / f"{name}.safetensors")
        assert OFFICIAL_FILES[name] == (path, upstream_digest)
        with safe_open(weights_dir / f"{name}.safetensors", "pt") as f:
            assert f.metadata() == {"upstream_path": path, "upstream_sha256": upstream_digest}
    licence = (EMBEDDED_DIR / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "Copyright (c) 2020 Huan Wang" in licence


def test_official_download_set_names_the_upstream_files() -> None:
    wset = CD16xWeights.OFFICIAL.value
    assert wset.model_id == "cd16x" and wset.levels == LEVELS
    for name, (path, digest) in OFFICIAL_FILES.items():
        assert wset.files[name].uri == OFFICIAL_BASE_URL + path
        assert wset.files[name].sha256 == digest
    assert wset.files["2SE"].uri.endswith("/trained_models/wct_se_16x_new/20191110-132713_E20.pth")


@pytest.mark.parametrize("level", LEVELS)
def test_official_models_load_strictly(level: int, weights_dir: Path) -> None:
    wset = resolve_weights(str(weights_dir))
    enc = small_encoder(level, weights=wset)
    dec = small_decoder(level, weights=wset)
    assert not enc.training and not dec.training
    for module, name in ((enc, f"{level}SE"), (dec, f"{level}SD")):
        state = load_state_dict(weights_dir / f"{name}.safetensors")
        assert set(module.state_dict()) == set(state)
        for key, value in module.state_dict().items():
            assert torch.equal(value, state[key]), key
    x = torch.rand(1, 3, 64, 48)
    with torch.inference_mode():
        f = enc(x)
        assert f.shape == (1, enc.out_channels, 64 >> (level - 1), 48 >> (level - 1))
        assert dec(f).shape == x.shape


def test_resolve_defaults_and_environment(weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert resolve_weights() is CD16xWeights.DEFAULT.value
    monkeypatch.setenv(WEIGHTS_ENV, str(weights_dir))
    from_env = resolve_weights()
    assert from_env == official_weight_set(str(weights_dir), layout="safetensors")
    assert from_env.location == str(weights_dir) and CD16xWeights.DEFAULT.value.location is None
    assert from_env.files["3SD"].uri == f"{weights_dir}/3SD.safetensors"
    assert from_env.files["3SD"].sha256 == CD16xWeights.DEFAULT.value.files["3SD"].sha256
    # A folder of .pth files is a copy of the upstream files, held to the upstream digests.
    copy = tmp_path / "pth"
    copy.mkdir()
    for name in NAMES:
        torch.save({"model": load_state_dict(weights_dir / f"{name}.safetensors")}, copy / f"{name}.pth")
    pth = resolve_weights(str(copy))
    assert pth == official_weight_set(str(copy), layout="flat")
    assert pth.location == str(copy)
    assert pth.files["3SD"].uri == f"{copy}/3SD.pth" and pth.files["3SD"].sha256 == OFFICIAL_FILES["3SD"][1]
    with pytest.raises(WeightsError, match="sha256 mismatch") as err:
        small_decoder(3, weights=pth)
    assert OFFICIAL_FILES["3SD"][1] in str(err.value) and sha256_file(copy / "3SD.pth") in str(err.value)


def test_missing_location_raises(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not a folder"):
        resolve_weights(str(tmp_path / "absent"))


def test_corrupted_local_copy_fails_its_digest(tmp_path: Path, weights_dir: Path) -> None:
    copy = tmp_path / "cd16x"
    shutil.copytree(weights_dir, copy)
    target = copy / "4SD.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.chmod(0o644)
    target.write_bytes(bytes(data))
    wset = resolve_weights(str(copy))
    with pytest.raises(WeightsError, match="sha256 mismatch") as err:
        small_decoder(4, weights=wset)
    assert str(target) in str(err.value)
    assert sha256_file(target) in str(err.value)
    assert CD16xWeights.EMBEDDED.value.files["4SD"].sha256 in str(err.value)
    small_encoder(4, weights=wset)  # the intact files of the same copy still load


def _write_bundle(folder: Path, weights_dir: Path, run_id: str, files: dict[str, str]) -> None:
    """A distill-style bundle: ``files`` maps bundle names to the embedded files they hold (saved as .pth)."""
    folder.mkdir(parents=True)
    digests = {}
    for name, source in files.items():
        torch.save(load_state_dict(weights_dir / f"{source}.safetensors"), folder / f"{name}.pth")
        digests[name] = sha256_file(folder / f"{name}.pth")
    card = {
        "run_id": run_id,
        "widths": list(CD16X.widths),
        "level1_width": CD16X.level1_width,
        "embed_widths": list(CD16X.embed_widths),
        "files": digests,
    }
    (folder / "card.json").write_text(json.dumps(card))


def test_bundle_and_latest(tmp_path: Path, weights_dir: Path) -> None:
    publish = tmp_path / "publish"
    _write_bundle(publish / "run-1", weights_dir, "run-1", {n: n for n in ("1SE", "1SD", "2SE", "2SD")})
    _write_bundle(publish / "run-2", weights_dir, "run-2", {n: n for n in ("2SE", "2SD", "3SE")})
    bundle.write_latest(str(publish), "run-2")
    card_digest = sha256_file(publish / "run-2" / "card.json")

    run_1 = resolve_weights(str(publish / "run-1"))
    assert run_1.model_id == "bundle:run-1"
    assert run_1.family == CD16X
    assert run_1.levels == (1, 2)
    assert run_1.files["2SE"].uri == f"{publish}/run-1/2SE.pth"
    assert run_1.files["2SE"].sha256 == sha256_file(publish / "run-1" / "2SE.pth")
    enc = small_encoder(2, weights=run_1)
    assert torch.equal(enc.conv21.weight, load_state_dict(weights_dir / "2SE.safetensors")["conv21.weight"])

    latest = resolve_weights(str(publish / "latest"))
    assert latest.model_id == "bundle:run-2"
    # The pointer followed and the card pinned: what other processes load.
    assert latest.location == f"{publish}/run-2#sha256={card_digest}"
    assert resolve_weights(latest.location) == latest
    assert latest.levels == (2,)  # 3SD is not in that bundle
    with pytest.raises(WeightsError, match="no 3SD"):
        small_decoder(3, weights=latest)


def test_bundle_card_digest_is_enforced(tmp_path: Path, weights_dir: Path) -> None:
    folder = tmp_path / "run"
    _write_bundle(folder, weights_dir, "run", {"1SE": "1SE", "1SD": "1SD"})
    card = json.loads((folder / "card.json").read_text())
    card["files"]["1SD"] = "0" * 64
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        small_decoder(1, weights=resolve_weights(str(folder)))


def test_bundle_with_other_widths(tmp_path: Path, weights_dir: Path) -> None:
    """The card's widths build the modules: a half-width card does not fit the 16x files."""
    folder = tmp_path / "half"
    _write_bundle(folder, weights_dir, "half", {"2SE": "2SE", "2SD": "2SD"})
    card = json.loads((folder / "card.json").read_text())
    half = FamilySpec.scaled(0.5)
    card.update(widths=list(half.widths), level1_width=half.level1_width, embed_widths=None)
    (folder / "card.json").write_text(json.dumps(card))
    wset = resolve_weights(str(folder))
    assert wset.family == FamilySpec(half.widths, half.level1_width, None)
    with pytest.raises(WeightsError, match="does not fit a level-2 Encoder"):
        small_encoder(2, weights=wset)


def test_file_of_the_wrong_level_is_refused(tmp_path: Path, weights_dir: Path) -> None:
    folder = tmp_path / "swapped"
    _write_bundle(folder, weights_dir, "swapped", {"1SE": "2SE", "1SD": "1SD"})
    with pytest.raises(WeightsError, match="does not fit a level-1 Encoder"):
        small_encoder(1, weights=resolve_weights(str(folder)))


def test_builders_without_weights_are_random() -> None:
    torch.manual_seed(0)
    a = small_encoder(3)
    b = small_encoder(3, family=FamilySpec.scaled(0.5))
    assert a.out_channels == 64 and b.out_channels == 128
    assert small_decoder(3).in_channels == 64


def _published(tmp_path: Path, weights_dir: Path) -> Path:
    """``<publish>/run-1`` (levels 1-2, the official files) promoted to ``<publish>/latest``."""
    publish = tmp_path / "publish"
    _write_bundle(publish / "run-1", weights_dir, "run-1", {n: n for n in ("1SE", "1SD", "2SE", "2SD")})
    bundle.write_latest(str(publish), "run-1")
    return publish


def _hostile_pointers(card_digest: str) -> dict[str, str]:
    """Pointer contents that must never be followed, by what they try."""
    pin = f"#sha256={card_digest}"
    return {
        "climbs out": f"../elsewhere/run-1{pin}",
        "climbs out, unpinned": "../../elsewhere",
        "absolute path": f"/tmp/elsewhere/run-1{pin}",
        "another bucket": f"s3://other-bucket/run-1{pin}",
        "a URL": f"http://attacker.example/run-1{pin}",
        "unpinned run id": "run-1",
        "a pin that is not a sha256": "run-1#sha256=abc",
        "an HTML page": "<!DOCTYPE HTML>\n<html><body><h1>Directory listing for /</h1></body></html>\n" * 3,
        "control characters": f"run-1\x1b[2J{pin}",
        "too large": "run-1" + " " * 4096 + pin,
    }


@pytest.mark.parametrize("case", list(_hostile_pointers("0" * 64)))
def test_a_hostile_latest_is_refused_in_one_line(case: str, tmp_path: Path, weights_dir: Path) -> None:
    publish = _published(tmp_path, weights_dir)
    # A valid bundle outside the publish prefix: what the pointer tries to reach.
    _write_bundle(tmp_path / "elsewhere" / "run-1", weights_dir, "run-1", {"1SE": "1SE", "1SD": "1SD"})
    contents = _hostile_pointers(sha256_file(tmp_path / "elsewhere" / "run-1" / "card.json"))[case]
    (publish / "latest").write_text(contents)
    with pytest.raises(WeightsError) as err:
        resolve_weights(str(publish / "latest"))
    message = str(err.value)
    assert message.startswith(f"{publish}/latest ")
    assert "not a bundle pointer" in message or f"not a run folder inside {publish}" in message
    assert "\n" not in message and "\x1b" not in message and "<" not in message and len(message) < 400
    with pytest.raises(WeightsError):
        bundle.read_latest(str(publish))


def test_a_tampered_card_under_latest_is_refused(tmp_path: Path, weights_dir: Path) -> None:
    """Swapping a file and rewriting the card's digest to match it is caught by the pointer's pin."""
    publish = _published(tmp_path, weights_dir)
    before = resolve_weights(str(publish / "latest"))
    folder = publish / "run-1"
    torch.save(load_state_dict(weights_dir / "2SE.safetensors"), folder / "1SE.pth")  # a wrong file...
    card = json.loads((folder / "card.json").read_text())
    card["files"]["1SE"] = sha256_file(folder / "1SE.pth")  # ...and a card that agrees with it
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="is not the one pinned") as err:
        resolve_weights(str(publish / "latest"))
    assert sha256_file(folder / "card.json") in str(err.value) and "\n" not in str(err.value)
    # The location a running job handed to its other processes is pinned the same way.
    with pytest.raises(WeightsError, match="is not the one pinned"):
        resolve_weights(before.location)


def test_a_tampered_file_under_latest_is_refused(tmp_path: Path, weights_dir: Path) -> None:
    publish = _published(tmp_path, weights_dir)
    target = publish / "run-1" / "2SD.pth"
    torch.save(load_state_dict(weights_dir / "1SD.safetensors"), target)
    wset = resolve_weights(str(publish / "latest"))
    with pytest.raises(WeightsError, match="sha256 mismatch") as err:
        small_decoder(2, weights=wset)
    assert str(target) in str(err.value) and sha256_file(target) in str(err.value)
    small_decoder(1, weights=wset)


def test_pinned_and_unpinned_bundle_references(tmp_path: Path, weights_dir: Path) -> None:
    publish = _published(tmp_path, weights_dir)
    folder = f"{publish}/run-1"
    digest = sha256_file(publish / "run-1" / "card.json")
    pinned = resolve_weights(f"{folder}#sha256={digest}")
    assert pinned == resolve_weights(str(publish / "latest")) == resolve_weights(folder)
    assert pinned.location == resolve_weights(folder).location == f"{folder}#sha256={digest}"
    with pytest.raises(WeightsError, match=f"expected sha256 {'1' * 64}, got {digest}"):
        resolve_weights(f"{folder}#sha256={'1' * 64}")
    with pytest.raises(WeightsError, match=r"pins a bundle card, but .* has no card\.json"):
        resolve_weights(f"{weights_dir}#sha256={digest}")


def test_http_folder_is_read_as_a_folder_not_a_pointer(server, served: Path, cache: Path) -> None:
    """A GET on an HTTP folder answers with a listing page; that page is never taken for a ``latest``."""
    pins = {name: spec.sha256 for name, spec in CD16xWeights.EMBEDDED.value.files.items()}
    for uri in (server.base_uri, server.base_uri.rstrip("/")):
        wset = resolve_weights(uri)
        assert {name: spec.sha256 for name, spec in wset.files.items()} == pins and wset.location == uri
    small_encoder(1, weights=resolve_weights(server.base_uri.rstrip("/")))
    assert "/1SE.safetensors" in server.requests
    with pytest.raises(WeightsError, match="is not a folder") as err:
        resolve_weights(server.base_uri + "nowhere")
    assert "<" not in str(err.value) and "\n" not in str(err.value)


def test_latest_over_http(server, served: Path, weights_dir: Path, cache: Path) -> None:
    publish = _published(served, weights_dir)
    wset = resolve_weights(server.base_uri + "publish/latest")
    digest = hashlib.sha256((publish / "run-1" / "card.json").read_bytes()).hexdigest()
    assert wset.model_id == "bundle:run-1" and wset.location == f"{server.base_uri}publish/run-1#sha256={digest}"
    small_decoder(2, weights=wset)
    # A server answering for ``latest`` with a page (here: a folder of that name) is refused in one line.
    (served / "listed" / "latest").mkdir(parents=True)
    with pytest.raises(WeightsError, match="not a bundle pointer") as err:
        resolve_weights(server.base_uri + "listed/latest")
    assert "<" not in str(err.value) and "\n" not in str(err.value)
