"""The settings an output depends on, their fingerprint and the reason text (no Ray)."""

from __future__ import annotations

import json
import subprocess

import pyarrow as pa
import pytest

from pipeline.batch.fingerprint import (
    CODE_VERSION_ENV,
    SettingsBook,
    changes,
    code_version,
    fingerprint,
    pair_settings,
    style_digest,
)

DIGESTS = {"1SE": "aa" * 32, "1SD": "bb" * 32}


def _settings(**changed):
    base = dict(model_id="cd16x", weights=DIGESTS, alpha=1.0, style_size=None, mode="auto", quality=95,
                style="sha256:" + "cc" * 32, output_uri="out/a__s.png", code="0.1.0",
                precision="fp32")
    return pair_settings(**{**base, **changed})


def test_every_setting_that_changes_pixels_changes_the_fingerprint():
    base = fingerprint(_settings())
    assert fingerprint(_settings()) == base and len(base) == 16
    for changed in [dict(alpha=0.5), dict(style_size=512), dict(mode="thumbnail"), dict(model_id="bundle:x"),
                    dict(weights={**DIGESTS, "1SD": "dd" * 32}), dict(style="etag:abc"), dict(code="0.2.0"),
                    dict(output_uri="out/a__s.jpg"), dict(precision="bf16"), dict(precision="tf32")]:
        assert fingerprint(_settings(**changed)) != base, changed


def test_quality_counts_only_for_lossy_formats():
    assert fingerprint(_settings(quality=80)) == fingerprint(_settings(quality=95))
    jpeg = _settings(output_uri="out/a__s.jpg")
    assert jpeg["format"] == "JPEG" and jpeg["quality"] == 95
    assert fingerprint(_settings(output_uri="out/a__s.jpg", quality=80)) != fingerprint(jpeg)


def test_fingerprint_ignores_key_order():
    settings = _settings()
    assert fingerprint(dict(reversed(list(settings.items())))) == fingerprint(settings)


def test_changes_name_each_setting_with_its_old_and_new_value():
    old, new = _settings(), _settings(alpha=0.5, style="etag:0123456789abcdef0123456789abcdef",
                                      weights={**DIGESTS, "1SD": "dd" * 32})
    assert changes(old, new) == [
        "alpha 1.0 -> 0.5",
        "style sha256:ccccccccccccccccc... -> etag:0123456789abcdef012...",
        "weights 1SD bbbbbbbbbbbb -> dddddddddddd",
    ]
    assert changes(old, old) == []


def test_style_digest_is_the_etag_on_s3_and_a_sha256_locally(tmp_path, s3_options, s3_fs):
    (tmp_path / "s.jpg").write_bytes(b"one")
    local = style_digest(str(tmp_path / "s.jpg"))
    assert local == "sha256:7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"
    (tmp_path / "s.jpg").write_bytes(b"two")
    assert style_digest(str(tmp_path / "s.jpg")) != local

    s3_fs.mkdir("fingerprint-styles")
    s3_fs.pipe_file("fingerprint-styles/s.jpg", b"one")
    first = style_digest("s3://fingerprint-styles/s.jpg", s3_options)
    assert first.startswith("etag:") and '"' not in first
    s3_fs.pipe_file("fingerprint-styles/s.jpg", b"two")
    assert style_digest("s3://fingerprint-styles/s.jpg", s3_options) not in ("", first)
    with pytest.raises(FileNotFoundError):
        style_digest(str(tmp_path / "missing.jpg"))


def test_code_version_prefers_the_image_build_then_the_checkout(monkeypatch):
    monkeypatch.setenv(CODE_VERSION_ENV, "abc123")
    assert code_version() == "abc123"
    monkeypatch.delenv(CODE_VERSION_ENV)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    assert code_version().endswith("+git." + head)


def test_controls_count_only_when_set():
    from pipeline.engine.controls import control_settings

    base = _settings()
    assert "controls" not in base and _settings(controls=control_settings()) == base
    variants = [control_settings(style_weights=(0.7, 0.3)), control_settings(style_weights=(0.6, 0.4)),
                control_settings(mask="sha256:" + "dd" * 32), control_settings(mask="sha256:" + "ee" * 32),
                control_settings(preserve_color=True)]
    prints = {fingerprint(_settings(controls=c)) for c in variants}
    assert len(prints) == len(variants) and fingerprint(base) not in prints
    # weights count normalised: 2,2 is 1,1
    assert _settings(controls=control_settings(style_weights=(2, 2))) == _settings(
        controls=control_settings(style_weights=(1, 1)))
    assert changes(_settings(controls=variants[0]), _settings(controls=variants[1])) == [
        "controls style_weights [0.7, 0.3] -> [0.6, 0.4]"]


def test_a_settings_book_keeps_each_distinct_settings_once_and_gives_columns_by_id():
    book = SettingsBook()
    png, jpeg = _settings(), _settings(output_uri="out/a__s.jpg")
    assert [book.add(png), book.add(jpeg), book.add(dict(reversed(list(png.items()))))] == [0, 1, 0]
    assert book.fingerprints == [fingerprint(png), fingerprint(jpeg)]
    assert json.loads(book.settings[1]) == jpeg
    ids = pa.array([1, 0, 1], pa.int32())
    assert book.column(ids).to_pylist() == [fingerprint(jpeg), fingerprint(png), fingerprint(jpeg)]
    assert book.column(ids, what="settings").type == pa.dictionary(pa.int32(), pa.string())
    assert book.column(ids, what="settings")[1].as_py() == book.settings[0]
