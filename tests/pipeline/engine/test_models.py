"""pipeline/engine/models.py: the stylize cascade loads levels 1-5 and refuses a weight set without them."""

from __future__ import annotations

import pytest

from models import CD16X, WeightsError, bundle, resolve_weights
from models.checkpoint import load_state_dict
from pipeline.engine.models import CASCADE, load_model_set


@pytest.fixture
def two_level_bundle(tmp_path, weights_dir) -> str:
    """A published bundle holding only levels 1 and 2 (the official files)."""
    states = {f"{k}{t}": load_state_dict(weights_dir / f"{k}{t}.safetensors") for k in (1, 2) for t in ("SE", "SD")}
    card = {"widths": list(CD16X.widths), "level1_width": CD16X.level1_width, "embed_widths": list(CD16X.embed_widths)}
    return bundle.write_bundle(str(tmp_path), "two", states, card)


def test_weights_without_every_level_are_refused_in_one_line(two_level_bundle):
    with pytest.raises(WeightsError) as err:
        load_model_set(two_level_bundle)
    message = str(err.value)
    assert f"--weights {two_level_bundle}" in message and "has levels 1,2" in message and "\n" not in message
    with pytest.raises(WeightsError, match="has levels 1,2"):
        load_model_set(resolve_weights(two_level_bundle))


def test_levels_given_explicitly_load_what_the_set_has(two_level_bundle):
    models = load_model_set(two_level_bundle, levels=(1, 2))
    assert models.levels == (2, 1) and models.model_id == "bundle:two"


def test_official_set_loads_the_whole_cascade(weights_dir):
    assert load_model_set(str(weights_dir)).levels == CASCADE


def test_the_batch_driver_refuses_such_weights_before_any_actor_starts(two_level_bundle):
    from pipeline.batch.preflight import check_weights

    with pytest.raises(WeightsError, match="has levels 1,2"):
        check_weights(two_level_bundle)
