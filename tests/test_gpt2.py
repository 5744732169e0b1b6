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
    cache = gpt2.kv_cache(params, hparams["n_head"], len(PROMPT_IDS))
    pieces = [gpt2.gpt2(ids, **params, n_head=hparams["n_head"], cache=cache)
              for ids in (PROMPT_IDS[:5], PROMPT_IDS[5:6], PROMPT_IDS[6:])]
    whole = gpt2.gpt2(PROMPT_IDS, **params, n_head=hparams["n_head"])
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-5)
    last = gpt2.gpt2(PROMPT_IDS, **params, n_head=hparams["n_head"], last_only=True)
    np.testing.assert_allclose(last, whole[-1:], atol=1e-5)


def garbage_cache(params, n_head, n_positions):
    """A kv_cache whose free slots hold NaN: a step that read one would turn its logits to NaN
    (0 x NaN is NaN, so even a masked-out read shows)."""
    cache = gpt2.kv_cache(params, n_head, n_positions)
    for block_cache in cache:
        block_cache["k"][...], block_cache["v"][...] = np.nan, np.nan
    return cache


@pytest.mark.parametrize("query_block", [1, 3, 128])
@pytest.mark.parametrize("steps", [[1] * 10, [7, 1, 1, 20, 5], [40, 3, 1, 20]])
def test_each_cached_step_sees_only_earlier_positions(tiny_models, monkeypatch, steps, query_block):
    """Step by step, the logits of a cached call equal a full recompute of the sequence so far,
    whatever sits in the cache's free slots, with prompts attended in blocks of queries or whole."""
    monkeypatch.setattr(gpt2, "QUERY_BLOCK", query_block)
    _, hparams, params = load(tiny_models)
    n_head, ids = hparams["n_head"], (PROMPT_IDS * 10)[:sum(steps)]
    cache, done = garbage_cache(params, n_head, len(ids)), 0
    for n in steps:
        logits = gpt2.gpt2(ids[done:done + n], **params, n_head=n_head, cache=cache)
        done += n
        full = gpt2.gpt2(ids[:done], **params, n_head=n_head)
        np.testing.assert_allclose(logits, full[-n:], atol=1e-5, err_msg=f"after {done} positions")
        assert all(block_cache["n"] == done for block_cache in cache)


def test_cache_is_written_in_place_and_refuses_to_overflow(tiny_models):
    _, hparams, params = load(tiny_models)
    n_head = hparams["n_head"]
    cache = gpt2.kv_cache(params, n_head, 6)
    buffers = [(block_cache["k"], block_cache["v"]) for block_cache in cache]
    assert buffers[0][0].shape == (n_head, 6, hparams["n_embd"] // n_head) and buffers[0][0].dtype == np.float32
    for ids in ([1, 2, 3], [4], [5, 6]):
        gpt2.gpt2(ids, **params, n_head=n_head, cache=cache)
    assert all(b["k"] is k and b["v"] is v for b, (k, v) in zip(cache, buffers))  # never reallocated
    with pytest.raises(ValueError, match="the cache holds 6 positions; 6 are filled and 1 more came"):
        gpt2.gpt2([7], **params, n_head=n_head, cache=cache)


@pytest.mark.parametrize("query_block", [5, 128])
def test_long_prompt_in_query_blocks_matches_reference(make_models, monkeypatch, query_block):
    """A prompt longer than a block of queries, attended block by block, against TensorFlow."""
    monkeypatch.setattr(gpt2, "QUERY_BLOCK", query_block)
    models_dir, size = make_models("124M" if query_block == 128 else "tiny")
    _, hparams, params = load(models_dir, size)
    ids = (PROMPT_IDS * 40)[:300 if query_block == 128 else 61]
    ours = gpt2.gpt2(ids, **params, n_head=hparams["n_head"])
    ref = reference_logits(os.path.join(models_dir, size), ids)
    diff = np.abs(ours - ref).max()
    print(f"{len(ids)} tokens in blocks of {query_block}: max abs logit diff {diff:.2e}")
    assert diff <= 1e-4


def test_cached_generation_near_a_full_1024_context(make_models):
    """Cached greedy tokens equal a full recompute each step, up to the last position of the context."""
    models_dir, size = make_models("124M")
    _, hparams, params = load(models_dir, size)
    inputs = (PROMPT_IDS * 100)[:hparams["n_ctx"] - 4]
    assert gpt2.generate(inputs, params, hparams["n_head"], 4, stop_id=None) == \
        full_recompute_greedy(inputs, params, hparams["n_head"], 4)


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


def test_positions_past_the_context_are_a_clear_error(tiny_models):
    _, hparams, params = load(tiny_models)
    n_ctx, n_head = hparams["n_ctx"], hparams["n_head"]
    with pytest.raises(ValueError, match=f"a cache of {n_ctx + 1} positions is larger than the model's context"):
        gpt2.kv_cache(params, n_head, n_ctx + 1)
    with pytest.raises(ValueError, match=f"positions 0 to {n_ctx} do not fit the model's context of {n_ctx}"):
        gpt2.gpt2([1] * (n_ctx + 1), **params, n_head=n_head)
    cache = gpt2.kv_cache(params, n_head, n_ctx)
    assert gpt2.gpt2([1] * n_ctx, **params, n_head=n_head, cache=cache).shape == (n_ctx, hparams["n_vocab"])
    with pytest.raises(ValueError, match=f"positions {n_ctx} to {n_ctx} do not fit"):
        gpt2.gpt2([1], **params, n_head=n_head, cache=cache)


def test_a_prompt_of_the_whole_context_gets_one_new_token(tiny_models):
    """Generation feeds the prompt and every new token but the last: n_ctx tokens of prompt fit
    one new token, n_ctx - 1 fit two."""
    _, hparams, params = load(tiny_models)
    n_ctx, n_head = hparams["n_ctx"], hparams["n_head"]
    prompt = (PROMPT_IDS * 10)[:n_ctx]
    assert gpt2.generate(prompt, params, n_head, 1, stop_id=None) == full_recompute_greedy(prompt, params, n_head, 1)
    assert len(gpt2.generate(prompt[1:], params, n_head, 2, stop_id=None)) == 2
    assert len(gpt2.generate(prompt, params, n_head, 1, temperature=1.0, seed=0, stop_id=None, n_samples=2)[0]) == 1
    with pytest.raises(ValueError, match=f"the prompt is {n_ctx} tokens and 2 more were asked for"):
        gpt2.generate(prompt, params, n_head, 2)


def test_stream_checks_its_arguments_at_the_call(tiny_models):
    _, hparams, params = load(tiny_models)
    with pytest.raises(ValueError, match="at least one token"):
        gpt2.stream([], params, hparams["n_head"], 3)  # no next(): the error comes at once
    with pytest.raises(ValueError, match="top_k"):
        gpt2.stream([1], params, hparams["n_head"], 3, top_k=0)
