"""Listing a prefix in batches: byte order, what is not an input, S3 keys as stored (moto, no Ray)."""

from __future__ import annotations

import pytest

from pipeline.batch.listing import iter_keys


def _keys(uri: str, **kwargs) -> list[str]:
    return [key for batch in iter_keys(uri, **kwargs) for key in batch]


def test_a_local_tree_is_listed_in_the_order_of_its_full_paths(tmp_path):
    # "a-b.jpg" sorts before "a/x.jpg" ('-' < '/'), though a walk that sorts names visits folder "a" first.
    names = ["a/x.jpg", "a-b.jpg", "a.jpg", "a/b/c.png", "b.png", "a/b.png", "Z.jpg", "é.jpg"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert _keys(str(tmp_path)) == sorted(names)
    assert [len(b) for b in iter_keys(str(tmp_path), batch=3)] == [3, 3, 2]


def test_hidden_files_manifests_and_excluded_prefixes_are_not_listed(tmp_path):
    for rel in ["a.jpg", "sub/b.png", ".tmp-partial.jpg", "sub/.hidden.png", "_manifest/part.parquet",
                "sub/_manifest/x.parquet", "out/a__s.jpg", "masks/a.png", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = _keys(str(tmp_path), exclude=[str(tmp_path / "out"), str(tmp_path / "masks"), "/elsewhere"])
    assert found == ["a.jpg", "notes.txt", "sub/b.png"]


def test_a_missing_folder_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        _keys(str(tmp_path / "missing"))


def test_s3_keys_come_as_stored_and_folder_markers_are_not_files(s3_options, s3_fs):
    s3_fs.mkdir("listing")
    stored = {"in/a.jpg": b"x", "in/folder/": b"", "in/folder/b.jpg": b"x", "in//c.jpg": b"x", "in/d/": b"not empty",
              "in/e.png": b"x", "in-other/f.jpg": b"x"}
    for key, data in stored.items():  # put keys exactly as given, as another S3 client would
        s3_fs.call_s3("put_object", Bucket="listing", Key=key, Body=data)
    found = _keys("s3://listing/in", storage_options=s3_options, batch=2)
    # The zero-byte "folder/" marker is gone; "//c.jpg" keeps its empty segment for the planner to refuse.
    assert found == ["/c.jpg", "a.jpg", "d/", "e.png", "folder/b.jpg"]
    assert _keys("s3://listing/in/", storage_options=s3_options) == found
