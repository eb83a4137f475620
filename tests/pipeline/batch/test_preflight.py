"""The driver's checks before anything starts: format, output, weights, styles and placement (no Ray)."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from models.checkpoint import WeightsError
from pipeline.batch.preflight import (
    UsageError,
    check_actor_device,
    check_format,
    check_output_location,
    check_placement,
    check_styles,
    check_weights,
    default_workers,
)
from pipeline.imaging.imageio import ImageError
from pipeline.options import OptionError


def test_unknown_format_is_an_option_error_naming_the_option():
    check_format(None)
    check_format("JPG")
    with pytest.raises(OptionError, match=r"^format 'bmp': extension '\.bmp' is not one of"):
        check_format("bmp")


@pytest.mark.parametrize(
    ("device", "gpus", "message"),
    [
        ("cuda:1", None, r"^device cuda:1: Ray gives each model actor its GPU"),
        ("cpu", 1.0, r"^device and gpus_per_worker do not go together: .* got cpu and 1$"),
        ("cuda", 0.0, r"^device and gpus_per_worker do not go together: .* got cuda and 0$"),
    ],
)
def test_a_device_the_actors_cannot_honour_is_refused(device, gpus, message):
    with pytest.raises(OptionError, match=message):
        check_actor_device(device, gpus)


@pytest.mark.parametrize(("device", "gpus"), [("auto", None), ("auto", 0.0), ("auto", 2.0), ("cpu", 0.0),
                                              ("cpu", None), ("cuda", None), ("cuda", 0.5)])
def test_devices_the_actors_can_honour_pass(device, gpus):
    check_actor_device(device, gpus)


def test_a_writable_output_keeps_nothing_of_the_probe(tmp_path, s3_options, s3_fs):
    (tmp_path / "out").mkdir()
    check_output_location(str(tmp_path / "out"))
    check_output_location(str(tmp_path / "new" / "deeper"))  # folders it had to make are removed again
    check_output_location(str(tmp_path / "sub" / "o.png"), folder=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]
    s3_fs.mkdir("preflight-out")
    check_output_location("s3://preflight-out/run", s3_options)
    s3_fs.invalidate_cache()
    assert s3_fs.find("preflight-out") == []


def test_a_missing_bucket_is_not_writable(s3_options):
    with pytest.raises(OSError, match=r"^output s3://no-such-bucket/out is not writable: "):
        check_output_location("s3://no-such-bucket/out", s3_options)


def test_an_output_under_a_file_is_not_writable(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(OSError, match=r"output .*taken/out is not writable: "):
        check_output_location(str(tmp_path / "taken" / "out"))


def test_weights_are_resolved_and_verified_on_the_driver(weights_dir, tmp_path):
    weights, digests = check_weights(str(weights_dir))
    assert weights.model_id == "cd16x" and sorted(digests) == sorted(weights.files)
    assert digests["3SD"] == weights.files["3SD"].sha256
    with pytest.raises(WeightsError, match="no-weights"):
        check_weights(str(tmp_path / "no-weights"))
    copy = tmp_path / "weights"
    shutil.copytree(weights_dir, copy)
    blob = bytearray((copy / "3SD.safetensors").read_bytes())
    blob[-10] ^= 0xFF
    (copy / "3SD.safetensors").write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match=r"sha256 mismatch for .*3SD\.safetensors"):
        check_weights(str(copy))


def test_styles_are_checked_and_only_all_failing_stops_the_job(tmp_path):
    Image.new("RGB", (40, 30), "red").save(tmp_path / "good.png")
    (tmp_path / "notes.jpg").write_text("not a picture")
    good, missing, notes = (str(tmp_path / n) for n in ("good.png", "missing.jpg", "notes.jpg"))
    found = check_styles([good, missing, notes, good], max_pixels=10_000)
    assert list(found) == [good, missing, notes]
    assert found[good].error == "" and found[good].digest.startswith("sha256:")
    assert found[missing].error == f"no such file: {missing}" and found[missing].digest == ""
    assert "is not an image" in found[notes].error
    with pytest.raises(ImageError, match=f"^style image failed: no such file: {missing}$"):
        check_styles([missing, notes], max_pixels=10_000)
    with pytest.raises(ImageError, match="over --max-pixels 1,000"):
        check_styles([good], max_pixels=1000)


TWO_CPUS = [{"CPU": 2.0, "memory": 1e9}]


def test_actors_that_cannot_all_be_placed_are_refused_with_what_to_change():
    check_placement(TWO_CPUS, workers=2, cpus=1, gpus=0, io_cpus=0)
    with pytest.raises(UsageError, match=r"--workers 3 .* \(at most 2 fit; the cluster has 2 CPUs .*lower --workers"):
        check_placement(TWO_CPUS, workers=3, cpus=1, gpus=0, io_cpus=0)
    with pytest.raises(UsageError, match="none fits on any node"):
        check_placement(TWO_CPUS, workers=1, cpus=1, gpus=1, io_cpus=0)
    with pytest.raises(UsageError, match="no CPU is left for I/O tasks of --io-cpus 1"):
        check_placement(TWO_CPUS, workers=2, cpus=1, gpus=0, io_cpus=1)
    # Per node, not summed: two 1-CPU nodes cannot hold a 2-CPU actor.
    with pytest.raises(UsageError, match="none fits"):
        check_placement([{"CPU": 1.0}, {"CPU": 1.0}], workers=1, cpus=2, gpus=0, io_cpus=0)


def test_default_workers_fill_the_cluster_and_leave_room_for_io():
    assert default_workers(TWO_CPUS, cpus=1, gpus=0, io_cpus=0) == 2
    assert default_workers(TWO_CPUS, cpus=1, gpus=0, io_cpus=0.5) == 1
    assert default_workers([{"CPU": 16.0, "GPU": 2.0}] * 2, cpus=1, gpus=1, io_cpus=1) == 4
    assert default_workers(TWO_CPUS, cpus=4, gpus=0, io_cpus=0) == 1  # then refused by check_placement
