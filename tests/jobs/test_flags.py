"""jobs/flags.py: option names <-> flags in one place, and options built from parsed flags."""

from __future__ import annotations

import argparse

import pytest

from jobs.flags import default, flag, flag_message, options_from
from pipeline.options import BatchOptions, OptionError, StyleOptions


def test_flags_are_the_field_names_with_dashes_except_the_uris():
    assert [flag(o) for o in ("alpha", "style_size", "max_in_flight_mp", "input_uri", "output_uri", "style_uris")] \
        == ["--alpha", "--style-size", "--max-in-flight-mp", "--input", "--output", "--style"]


def test_an_option_error_names_the_flags():
    with pytest.raises(OptionError) as error:
        StyleOptions(style_weights=(1, 1), mask="m.png")
    assert flag_message(error.value).startswith("--style-weights and --mask do not go together")
    assert str(error.value).startswith("style_weights and mask do not go together")


def test_options_are_built_from_the_flags_named_like_their_fields():
    args = argparse.Namespace(alpha=0.5, tile=512, workers=2, style=["s.jpg"], unrelated=1)
    style = options_from(StyleOptions, args)
    assert (style.alpha, style.tile, style.mode) == (0.5, 512, default(StyleOptions, "mode"))
    batch = options_from(BatchOptions, args, input_uri="in", output_uri="out", style_uris=args.style,
                         style_options=style)
    assert batch.workers == 2 and batch.style_uris == ("s.jpg",) and batch.style_options is style
    with pytest.raises(KeyError, match="input_uri has no plain default"):
        default(BatchOptions, "input_uri")
