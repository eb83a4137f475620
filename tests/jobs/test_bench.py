import json

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
