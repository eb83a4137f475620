import json

import pytest
import torch

from jobs.bench import main, synthetic_image


def test_synthetic_image_is_deterministic_and_textured():
    a, b = synthetic_image(70, 90), synthetic_image(70, 90)
    assert a.shape == (70, 90, 3) and a.dtype.name == "uint8"
    assert (a == b).all()
    assert a.std() > 10


def test_bench_reports_speed_levels_and_memory(weights_dir, capsys):
    assert main(["--size", "160x96", "--mode", "exact", "--tile", "64", "--weights", str(weights_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["size"] == "160x96" and result["mode"] == "exact" and result["tiles"] == 6
    assert set(result["level_seconds"]) == {"5", "4", "3", "2", "1"}
    assert result["mp_per_s"] > 0 and result["peak_rss_gib"] > 0.05


def test_bench_reports_psnr_against_the_fp32_whole_image(weights_dir, capsys):
    argv = ["--size", "160x96", "--tile", "64", "--weights", str(weights_dir), "--threads", "1", "--device", "cpu",
            "--json"]
    assert main(argv) == 0
    exact = json.loads(capsys.readouterr().out)
    assert exact["precision"] == "fp32" and exact["device"] == "cpu" and exact["peak_gpu_gib"] is None
    # Exact tiling in fp32 is the whole-image picture.
    assert exact["psnr_vs_fp32_whole"] == "inf" or exact["psnr_vs_fp32_whole"] >= 50
    assert main([*argv, "--precision", "bf16"]) == 0
    bf16 = json.loads(capsys.readouterr().out)
    assert bf16["precision"] == "bf16" and 20 < bf16["psnr_vs_fp32_whole"] < 50
    assert main([*argv[:-1], "--precision", "fp16"]) == 0
    assert "PSNR vs fp32 whole" in capsys.readouterr().out


def test_bench_warms_up_untimed_and_refuses_a_negative_warmup(weights_dir, capsys):
    argv = ["--size", "96x64", "--tile", "64", "--weights", str(weights_dir), "--threads", "1", "--no-psnr", "--json"]
    assert main([*argv, "--warmup", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["warmup"] == 1 and set(result["level_seconds"]) == {"5", "4", "3", "2", "1"}
    assert main([*argv, "--warmup", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "ultrastyle bench: error: --warmup cannot be negative, got -1"


def test_bench_refuses_cuda_without_a_gpu_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ultrastyle bench: error: --device cuda: torch sees no CUDA GPU on this machine"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["--tile", "100"], "--tile must be a positive multiple of 16, got 100"),
        (["--tile-batch", "0"], "--tile-batch must be at least 1, got 0"),
        (["--size", "big"], "--size must be WxH in pixels, e.g. 3840x2160, got 'big'"),
        (["--size", "10x10"], "--size must be at least 32 px a side, got '10x10'"),
    ],
)
def test_bench_refuses_bad_flags_in_one_line(capsys, flags, message):
    assert main(flags) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"ultrastyle bench: error: {message}"]


def test_bench_refuses_an_unreadable_content_file_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["--content", str(bad)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"ultrastyle bench: error: --content {bad}: ") and "not an image libvips can read" in line


@pytest.mark.cuda
def test_bench_on_cuda_reports_gpu_memory_and_psnr(weights_dir, capsys):
    assert main(["--device", "cuda", "--size", "1280x720", "--tile", "256", "--precision", "bf16",
                 "--weights", str(weights_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device"] != "cpu" and result["tile_batch"] == 4
    assert result["peak_gpu_gib"] > 0 and result["psnr_vs_fp32_whole"] >= 25
    assert set(result["level_seconds"]) == {"5", "4", "3", "2", "1"}


def test_photo_file_is_a_photo_of_the_asked_size(tmp_path):
    import numpy as np
    from PIL import Image

    from jobs.bench import photo_file

    for name in ("p.jpg", "p.png"):
        photo_file(str(tmp_path / name), 330, 210)
        with Image.open(tmp_path / name) as img:
            assert img.size == (330, 210) and img.format == {"p.jpg": "JPEG", "p.png": "PNG"}[name]
            arr = np.asarray(img, np.float64)
        # Coffee's dark cup on a light saucer: a wide range, not a flat or noise-only image.
        assert arr.std() > 40 and np.percentile(arr, 5) < 60 and np.percentile(arr, 95) > 180
