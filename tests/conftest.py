"""Fixtures: small random-weight GPT-2 checkpoints in OpenAI's exact layout, written once per run."""
import os
import sys
import zlib

import pytest
from hypothesis import settings

# In CI the property tests try the same examples every run, so a red build can be reproduced;
# on a developer's machine they keep exploring new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # gpt2.py, encoder.py, utils.py live at the top level

from checkpoints import write_model  # noqa: E402

# Real model shapes (OpenAI's hparams) cut down to few layers: the code paths and the matrix
# shapes are the real ones, the depth only repeats them.
SHAPES = {
    "tiny": dict(n_vocab=50257, n_ctx=64, n_embd=64, n_head=4, n_layer=2),
    "124M": dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=2),
    "355M": dict(n_vocab=50257, n_ctx=1024, n_embd=1024, n_head=16, n_layer=1),
    "774M": dict(n_vocab=50257, n_ctx=1024, n_embd=1280, n_head=20, n_layer=1),
    "1558M": dict(n_vocab=50257, n_ctx=1024, n_embd=1600, n_head=25, n_layer=1),
}


def model_seed(shape):
    """The seed of a shape's random weights, from its name alone: a test sees the same model in a
    full run and under -k."""
    return zlib.crc32(shape.encode())


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
