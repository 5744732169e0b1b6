"""The NumPy model against an independent TensorFlow implementation of GPT-2 (tests/checkpoints.py),
on random-weight checkpoints of real model shapes."""
import os

import numpy as np
import pytest

import gpt2
from checkpoints import reference_logits
from utils import load_encoder_hparams_and_params

PROMPT_IDS = [15496, 995, 11, 314, 1101, 257, 3303, 2746, 13, 383, 2068, 7586, 21831]


def load(models_dir, size="124M"):
    return load_encoder_hparams_and_params(size, models_dir)


@pytest.mark.parametrize("shape", ["tiny", "124M", "355M", "774M", "1558M"])
def test_logits_match_reference(make_models, shape):
    models_dir, size = make_models(shape)
    _, hparams, params = load(models_dir, size)
    ours = gpt2.gpt2(PROMPT_IDS, **params, n_head=hparams["n_head"])
    ref = reference_logits(os.path.join(models_dir, size), PROMPT_IDS)
    diff = np.abs(ours - ref).max()
    print(f"{shape}: max abs logit diff {diff:.2e} (logits std {ref.std():.2f})")
    assert ours.dtype == np.float32 and ours.shape == (len(PROMPT_IDS), hparams["n_vocab"])
    assert diff <= 1e-4


def test_greedy_generation_follows_reference_argmax(make_models):
    models_dir, size = make_models("124M")
    _, hparams, params = load(models_dir, size)
    inputs = list(PROMPT_IDS[:5])
    out = gpt2.generate(inputs, params, hparams["n_head"], 6, stop_id=None)
    assert inputs == PROMPT_IDS[:5]  # the caller's list is not touched
    ids = list(inputs)
    for _ in range(6):
        ids.append(int(np.argmax(reference_logits(os.path.join(models_dir, size), ids)[-1])))
    assert out == ids[len(inputs):]


def full_recompute_greedy(inputs, params, n_head, n):
    """The picoGPT way: rerun the whole sequence for every new token."""
    ids = list(inputs)
    for _ in range(n):
        ids.append(int(np.argmax(gpt2.gpt2(ids, **params, n_head=n_head)[-1])))
    return ids[len(inputs):]


@pytest.mark.parametrize("n_prompt", [1, 7, 40])
def test_cached_generation_equals_full_recompute_up_to_context_limit(tiny_models, n_prompt):
    _, hparams, params = load(tiny_models)
    inputs = (PROMPT_IDS * 4)[:n_prompt]
    n = hparams["n_ctx"] - n_prompt  # fill the context exactly
    assert gpt2.generate(inputs, params, hparams["n_head"], n, stop_id=None) == \
        full_recompute_greedy(inputs, params, hparams["n_head"], n)


def test_cache_gives_the_same_logits_as_one_pass(tiny_models):
    _, hparams, params = load(tiny_models)
    cache = [{} for _ in params["blocks"]]
    pieces = [gpt2.gpt2(ids, **params, n_head=hparams["n_head"], cache=cache)
              for ids in (PROMPT_IDS[:5], PROMPT_IDS[5:6], PROMPT_IDS[6:])]
    whole = gpt2.gpt2(PROMPT_IDS, **params, n_head=hparams["n_head"])
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-5)
    last = gpt2.gpt2(PROMPT_IDS, **params, n_head=hparams["n_head"], last_only=True)
    np.testing.assert_allclose(last, whole[-1:], atol=1e-5)


def test_prompt_longer_than_context_is_a_clear_error(tiny_models):
    _, hparams, params = load(tiny_models)
    with pytest.raises(ValueError, match=r"60 tokens and 10 more.*at most 64"):
        gpt2.generate([1] * 60, params, hparams["n_head"], 10)


def test_layers_match_tensorflow_ops():
    tf = pytest.importorskip("tensorflow")
    x = np.random.default_rng(0).normal(0, 3, (5, 32)).astype(np.float32)
    g, b = np.linspace(0.5, 1.5, 32, dtype=np.float32), np.linspace(-1, 1, 32, dtype=np.float32)
    np.testing.assert_allclose(gpt2.gelu(x), tf.nn.gelu(x, approximate=True).numpy(), atol=1e-5)
    np.testing.assert_allclose(gpt2.softmax(x), tf.nn.softmax(x).numpy(), atol=1e-6)
    ln = tf.keras.layers.LayerNormalization(epsilon=1e-5)
    ln.build(x.shape)
    ln.set_weights([g, b])
    np.testing.assert_allclose(gpt2.layer_norm(x, g, b), ln(x).numpy(), atol=1e-5)
    for f in (gpt2.gelu, gpt2.softmax, lambda x: gpt2.layer_norm(x, g, b)):
        assert f(x).dtype == np.float32
    assert gpt2.causal_mask(3, 5).dtype == np.float32


def test_causal_mask_hides_later_positions():
    mask = gpt2.causal_mask(2, 4)  # queries are positions 2 and 3 of 0..3
    assert (mask[0] == [0, 0, 0, -1e10]).all() and (mask[1] == 0).all()


def test_attention_weights_are_returned_on_request(tiny_models):
    _, hparams, params = load(tiny_models)
    x = params["wte"][PROMPT_IDS] + params["wpe"][:len(PROMPT_IDS)]
    attn = params["blocks"][0]["attn"]
    out, weights = gpt2.mha(x, **attn, n_head=hparams["n_head"], return_weights=True)
    np.testing.assert_array_equal(out, gpt2.mha(x, **attn, n_head=hparams["n_head"]))
    n = len(PROMPT_IDS)
    assert weights.shape == (hparams["n_head"], n, n)
    np.testing.assert_allclose(weights.sum(-1), 1, rtol=1e-5)
    assert np.all(np.triu(weights, k=1) == 0)  # no position looks ahead
