"""Command-line flags <-> the options objects of :mod:`pipeline.options`, in one place.

A flag's destination is the option's field name (``--style-size`` -> ``style_size``), except
for the few listed in :data:`FLAGS`; an :class:`~pipeline.options.OptionError` names fields,
and :func:`flag_message` names their flags instead, so every entry point reports a bad value as
``--style-size must be at least 1, got 0``. Argparse defaults come from the options' own
defaults (:func:`default`), so the command line and a Python caller start from the same values.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Any, TypeVar

from pipeline.options import OptionError

__all__ = ["FLAGS", "default", "flag", "flag_message", "options_from"]

# Options whose flag is not ``--`` + the field name with dashes.
FLAGS = {"input_uri": "--input", "output_uri": "--output", "style_uris": "--style"}

T = TypeVar("T")


def flag(option: str) -> str:
    """The flag that sets ``option`` (``"style_size"`` -> ``"--style-size"``)."""
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def flag_message(error: OptionError) -> str:
    """``error``'s one line with its options named by their flags."""
    return error.describe(flag)


def default(cls: type, option: str) -> Any:
    """The default of field ``option`` of the options class ``cls`` (for ``add_argument(default=...)``)."""
    found = {f.name: f.default for f in fields(cls)}[option]
    if found is MISSING:
        raise KeyError(f"{cls.__name__}.{option} has no plain default")
    return found


def options_from(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """An instance of the options class ``cls`` from the parsed flags named like its fields, and ``given``.

    Raises:
        OptionError: a bad value (see ``cls``).
    """
    values = {f.name: getattr(args, f.name) for f in fields(cls) if f.init and hasattr(args, f.name)}
    return cls(**{**values, **given})
