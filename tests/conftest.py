"""Fixtures: small random-weight GPT-2 checkpoints in OpenAI's exact layout, written once per run."""
import os
import sys

import pytest
from hypothesis import settings

# In CI the property tests try the same examples every run, so a red build can be reproduced;
# on a developer's machine they keep exploring new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from helpers import ROOT, SHAPES, model_seed  # noqa: E402

sys.path.insert(0, ROOT)  # gpt2.py, encoder.py, utils.py live at the top level

from checkpoints import write_model  # noqa: E402


@pytest.fixture(scope="session")
def make_models(tmp_path_factory):
    """make_models(shape) -> (models_dir, model_size): models_dir/model_size holds a random-weight
    model of that shape ("tiny" goes in "124M", the CLI's default). Written once per test run."""
    made = {}

    def make(shape):
        if shape not in made:
            models_dir, size = tmp_path_factory.mktemp(f"models-{shape}"), "124M" if shape == "tiny" else shape
            write_model(str(models_dir / size), SHAPES[shape], seed=model_seed(shape))
            made[shape] = str(models_dir), size
        return made[shape]

    return make


@pytest.fixture(scope="session")
def tiny_models(make_models):
    """models_dir with a tiny random model as its "124M"."""
    return make_models("tiny")[0]


@pytest.fixture(scope="session")
def tiny(tiny_models):
    """The tiny model as the loader gives it: (encoder, hparams, params)."""
    from utils import load_encoder_hparams_and_params

    return load_encoder_hparams_and_params("124M", tiny_models)
