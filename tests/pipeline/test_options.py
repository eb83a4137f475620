"""The options objects: every field checked in one line naming it, values normalised, frozen and
hashable, defaults equal to the command line's, and importable without torch or Ray."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.options import DEFAULT_MAX_PIXELS, BatchOptions, OptionError, StyleOptions

ROOT = Path(__file__).resolve().parents[2]


def _batch(**changed) -> BatchOptions:
    return BatchOptions(**{"input_uri": "in/", "output_uri": "out/", "style_uris": ("s.jpg",), **changed})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("weights", "", "weights must be a URI or path, got ''"),
        ("weights", 3, "weights must be a URI or path, got 3"),
        ("alpha", 1.5, "alpha must be in [0, 1], got 1.5"),
        ("alpha", -0.1, "alpha must be in [0, 1], got -0.1"),
        ("alpha", math.nan, "alpha must be a finite number, got nan"),
        ("alpha", "0.5", "alpha must be a finite number, got '0.5'"),
        ("alpha", True, "alpha must be a finite number, got True"),
        ("style_size", 0, "style_size must be at least 1, got 0"),
        ("style_size", 256.0, "style_size must be a whole number, got 256.0"),
        ("mode", "fast", "mode must be one of auto, whole, exact, thumbnail, got 'fast'"),
        ("tile", 100, "tile must be a positive multiple of 16, got 100"),
        ("tile", 0, "tile must be a positive multiple of 16, got 0"),
        ("tile", -16, "tile must be a positive multiple of 16, got -16"),
        ("tile", 512.0, "tile must be a positive multiple of 16, got 512.0"),
        ("precision", "fp8", "precision must be one of fp32, tf32, bf16, fp16, got 'fp8'"),
        ("device", "gpu", "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("device", "cuda:x", "device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
        ("device", "CPU", "device must be auto, cpu, cuda or cuda:N, got 'CPU'"),
        ("tile_batch", 0, "tile_batch must be at least 1, got 0"),
        ("max_pixels", 0, "max_pixels must be at least 1, got 0"),
        ("quality", 0, "quality must be in [1, 100], got 0"),
        ("quality", 101, "quality must be in [1, 100], got 101"),
        ("style_weights", (), "style_weights must be a sequence of numbers, one per style, got ()"),
        ("style_weights", "0.7,0.3", "style_weights must be a sequence of numbers, one per style, got '0.7,0.3'"),
        ("style_weights", (1, "a"), "style_weights must be numbers, got (1, 'a')"),
        ("style_weights", (0, 0), "style_weights must be non-negative with a positive sum, got 0,0"),
        ("style_weights", (1, -1), "style_weights must be non-negative with a positive sum, got 1,-1"),
        ("style_weights", (1, math.nan), "style_weights must be non-negative with a positive sum, got 1,nan"),
        ("mask", "", "mask must be a URI or path, got ''"),
        ("preserve_color", 1, "preserve_color must be True or False, got 1"),
        ("storage_options", "anon=true", "storage_options must be a mapping of fsspec options, got str"),
    ],
)
def test_every_style_option_is_checked_in_one_line_naming_it(field, value, message):
    with pytest.raises(OptionError) as error:
        StyleOptions(**{field: value})
    assert str(error.value) == message
    assert error.value.options == (field,)


def test_weights_and_mask_do_not_go_together():
    with pytest.raises(OptionError, match=r"^style_weights and mask do not go together: ") as error:
        StyleOptions(style_weights=(1, 1), mask="m.png")
    assert error.value.options == ("style_weights", "mask")
    # Raised in a model actor, it reaches the driver pickled, whole.
    copy = pickle.loads(pickle.dumps(error.value))
    assert (copy.options, copy.problem, str(copy)) == (error.value.options, error.value.problem, str(error.value))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("input_uri", "", "input_uri must be a URI or path, got ''"),
        ("output_uri", None, "output_uri must be a URI or path, got None"),
        ("style_uris", (), "style_uris must be one or more style image URIs, got ()"),
        ("style_uris", ("a.jpg", ""), "style_uris must be a URI or path, got ''"),
        ("style_options", {"alpha": 0.5}, "style_options must be a StyleOptions, got dict"),
        ("format", "", "format must be an image extension such as png or jpg, got ''"),
        ("overwrite", "yes", "overwrite must be True or False, got 'yes'"),
        ("workers", 0, "workers must be at least 1, got 0"),
        ("gpus_per_worker", -1, "gpus_per_worker cannot be negative, got -1"),
        ("cpus_per_worker", 0, "cpus_per_worker must be positive, got 0"),
        ("io_cpus", -0.5, "io_cpus cannot be negative, got -0.5"),
        ("max_in_flight", 0, "max_in_flight must be at least 1, got 0"),
        ("max_in_flight_mp", 0, "max_in_flight_mp must be positive, got 0"),
        ("retries", -1, "retries cannot be negative, got -1"),
        ("progress_seconds", 0, "progress_seconds must be positive, got 0"),
        ("progress_seconds", math.inf, "progress_seconds must be a finite number, got inf"),
    ],
)
def test_every_batch_option_is_checked_in_one_line_naming_it(field, value, message):
    with pytest.raises(OptionError) as error:
        _batch(**{field: value})
    assert str(error.value) == message


def test_blend_weights_are_one_per_style():
    blend = StyleOptions(style_weights=(0.7, 0.3))
    blend.check_style_count(2)
    StyleOptions().check_style_count(3)  # no blend: any number of styles
    with pytest.raises(OptionError, match=r"^style_weights has 3 values \(0.5,0.3,0.2\) for 2 styles: give one per"):
        StyleOptions(style_weights=(0.5, 0.3, 0.2)).check_style_count(2)
    with pytest.raises(OptionError, match=r"^style_weights has 2 values \(0.7,0.3\) for 1 styles"):
        _batch(style_options=blend)
    assert _batch(style_uris=("a.jpg", "b.jpg"), style_options=blend).style_options is blend


def test_values_are_normalised_and_the_objects_frozen_and_hashable(tmp_path):
    secrets = {"key": "AKIA-not-for-logs", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    options = StyleOptions(weights=tmp_path, alpha=1, style_weights=[2, 1], storage_options=secrets)
    assert options.weights == str(tmp_path) and StyleOptions(mask=tmp_path / "m.png").mask == str(tmp_path / "m.png")
    assert options.alpha == 1.0 and isinstance(options.alpha, float)
    assert options.style_weights == (2.0, 1.0)
    assert options.storage_options == secrets and options.storage_options is not secrets
    assert "AKIA" not in repr(options)  # secrets never reach a log line
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.alpha = 0.5  # type: ignore[misc]
    assert hash(options) == hash(dataclasses.replace(options)) and options == dataclasses.replace(options)
    assert options != dataclasses.replace(options, storage_options=None)
    batch = _batch(style_uris="one.jpg", input_uri=tmp_path)
    assert batch.style_uris == ("one.jpg",) and batch.input_uri == str(tmp_path)
    assert {batch: 1}[_batch(style_uris=["one.jpg"], input_uri=str(tmp_path))] == 1


def test_defaults_are_the_command_lines():
    from jobs.stylize import build_parser

    args = build_parser().parse_args([])
    for cls in (StyleOptions, BatchOptions):
        for f in dataclasses.fields(cls):
            if hasattr(args, f.name):
                assert getattr(args, f.name) == f.default, f.name
    assert StyleOptions().device == "auto" and StyleOptions().precision == "fp32"
    assert StyleOptions().max_pixels == DEFAULT_MAX_PIXELS


def test_tile_alignment_is_the_tilings():
    from pipeline.imaging.tiles import TILE_ALIGN
    from pipeline.options import _TILE_ALIGN

    assert _TILE_ALIGN == TILE_ALIGN


def test_importing_options_loads_neither_torch_nor_ray():
    probe = ("import json, sys, pipeline.options; "
             "print(json.dumps(sorted(m for m in ('torch', 'ray') if m in sys.modules)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
