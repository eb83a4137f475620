"""``ultrastyle stylize`` with creative controls: a single image with a blend, a mask and colour
preservation, bad control input refused in one line, and the batch job's masks by naming rule
with the controls in the manifest's settings."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.stylize import main
from pipeline.batch.manifest import read_manifest
from pipeline.imaging.imageio import IMAGE_EXTENSIONS


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message"
    return err[-1]


@pytest.fixture
def inputs(tmp_path, content_dir, style_dir):
    """A small content image (96 x 80), its two-region mask, and two small styles."""
    folder = tmp_path / "in"
    folder.mkdir()
    content = folder / "photo.png"
    Image.open(_images(content_dir)[0]).convert("RGB").resize((96, 80)).save(content)
    styles = []
    for i, path in enumerate(_images(style_dir)[:2]):
        styles.append(tmp_path / f"style{i}.jpg")
        Image.open(path).convert("RGB").resize((96, 96)).save(styles[-1])
    mask = tmp_path / "mask.png"
    labels = np.zeros((80, 96), np.uint8)
    labels[:, 40:] = 1
    Image.fromarray(labels).save(mask)
    return content, [str(s) for s in styles], mask


def _styles(styles: list[str]) -> list[str]:
    return [arg for s in styles for arg in ("--style", s)]


def test_single_image_with_each_control(inputs, weights_dir, tmp_path, one_torch_thread):
    content, styles, mask = inputs
    common = ["--weights", str(weights_dir), "--style-size", "96"]
    outputs = {}
    for name, extra in {
        "blend": [*_styles(styles), "--style-weights", "0.7,0.3"],
        "mask": [*_styles(styles), "--mask", str(mask)],
        "color": [*_styles(styles[:1]), "--preserve-color"],
        "plain": _styles(styles[:1]),
    }.items():
        outputs[name] = tmp_path / f"{name}.png"
        assert main([str(content), *extra, "--output", str(outputs[name]), *common]) == 0, name
    pixels = {k: np.asarray(Image.open(v), dtype=np.float64) for k, v in outputs.items()}
    assert all(p.shape == (80, 96, 3) for p in pixels.values())
    # the mask's left region (label 0) is the first style, as in the plain run, away from the border
    assert np.abs(pixels["mask"][:, :24] - pixels["plain"][:, :24]).mean() < np.abs(
        pixels["mask"][:, 60:] - pixels["plain"][:, 60:]).mean()
    assert not np.array_equal(pixels["color"], pixels["plain"])


@pytest.mark.parametrize(
    ("extra", "rc", "message"),
    [
        (["--style-weights", "1"], 2, "--style-weights has 1 values (1) for 2 styles: give one per style"),
        (["--style-weights", "0,0"], 2, "--style-weights must be non-negative with a positive sum"),
        (["--style-weights", "x,1"], 2, "--style-weights must be comma-separated numbers"),
        (["--style-weights", "1,1", "--mask", "m.png"], 2, "--style-weights and --mask do not go together"),
        ([], 2, "or several with --style-weights (one blended output) or --mask"),
        (["--mask", "WRONG_SIZE"], 1, "is 48x80, the content image is 96x80: they must match"),
        (["--mask", "THREE_LABELS"], 1, "has value 2 but only 2 --style given"),
    ],
)
def test_bad_control_input_is_one_line(inputs, weights_dir, tmp_path, capsys, extra, rc, message):
    content, styles, mask = inputs
    labels = np.asarray(Image.open(mask))
    Image.fromarray(labels[:, :48]).save(tmp_path / "narrow.png")
    Image.fromarray(labels * 2).save(tmp_path / "three.png")
    extra = [{"WRONG_SIZE": str(tmp_path / "narrow.png"), "THREE_LABELS": str(tmp_path / "three.png")}.get(a, a)
             for a in extra]
    out = tmp_path / "out.png"
    assert main([str(content), *_styles(styles), *extra, "--output", str(out), "--weights", str(weights_dir)]) == rc
    line = _error_line(capsys)
    assert line.startswith("ultrastyle stylize: error:") and message in line, line
    assert not out.exists()


def test_batch_masks_by_name_and_controls_in_the_settings(ray_cluster, inputs, weights_dir, tmp_path):
    content, styles, mask = inputs
    folder = content.parent
    Image.open(content).resize((64, 48)).save(folder / "small.jpg")
    Image.open(content).save(folder / "nomask.png")
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.open(mask).save(masks / "photo.png")
    Image.open(mask).resize((64, 48), Image.NEAREST).save(masks / "small.png")
    out = tmp_path / "out"
    argv = ["--input", str(folder), *_styles(styles), "--output", str(out), "--weights", str(weights_dir),
            "--tile", "64", "--style-size", "64", "--workers", "2", "--progress-seconds", "0.5",
            "--mask", str(masks), "--preserve-color"]
    assert main(argv) == 1  # nomask.png has no mask: its pair fails, the others run
    rows = {Path(r["content_uri"]).name: r for r in read_manifest(str(out)).to_pylist()}
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["photo__style0+style1.png",
                                                                   "small__style0+style1.jpg"]
    assert rows["nomask.png"]["status"] == "failed" and "--mask: no mask" in rows["nomask.png"]["error"]
    for name in ("photo.png", "small.jpg"):
        row = rows[name]
        assert row["status"] == "ok" and row["style_uri"] == " + ".join(styles)
        controls = json.loads(row["settings"])["controls"]
        assert controls["preserve_color"] is True and controls["mask"].startswith("sha256:")
    # Same command: the finished pair is skipped (its row stays); another mask picture redoes its pair only.
    labels = np.asarray(Image.open(masks / "small.png"))
    Image.fromarray(1 - labels).save(masks / "small.png")
    assert main(argv) == 1
    table = read_manifest(str(out)).to_pylist()
    last = max(table, key=lambda r: r["finished_at"])["run_id"]
    rerun = {Path(r["content_uri"]).name: r for r in table if r["run_id"] == last}
    assert "photo.png" not in rerun and rows["photo.png"]["run_id"] != last
    assert rerun["small.jpg"]["status"] == "ok" and "controls" in rerun["small.jpg"]["reason"]
