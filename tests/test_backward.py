"""Each backward function of train.py alone against tf.GradientTape over the matching TensorFlow ops
(tests/tf_reference.py), in float64, on small random inputs: a failure names the function, the tensor and the
relative error."""
import numpy as np
import pytest

import gpt2
import tf_reference as ref
import train
from helpers import assert_same_gradients

rng = np.random.default_rng(17)


def normal(*shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def linear_params(n_in, n_out):
    return {"w": normal(n_in, n_out, scale=n_in ** -0.5), "b": normal(n_out, scale=0.1)}


def ln_params(n):
    return {"g": 1 + normal(n, scale=0.2), "b": normal(n, scale=0.2)}


def block_params(n_embd):
    return {"ln_1": ln_params(n_embd), "attn": {"c_attn": linear_params(n_embd, 3 * n_embd),
                                                "c_proj": linear_params(n_embd, n_embd)},
            "ln_2": ln_params(n_embd), "mlp": {"c_fc": linear_params(n_embd, 4 * n_embd),
                                               "c_proj": linear_params(4 * n_embd, n_embd)}}


def test_gelu_backward():
    x, dy = normal(3, 5, 40, scale=3), normal(3, 5, 40)  # both tails and the bend
    (dx,) = ref.vjp(ref.gelu, dy, x)
    assert_same_gradients("gelu_backward", train.gelu_backward(dy, x), dx)


def test_softmax_backward():
    import tensorflow as tf

    x, dy = normal(2, 3, 7, scale=2), normal(2, 3, 7)
    (dx,) = ref.vjp(lambda x: tf.nn.softmax(x, axis=-1), dy, x)
    assert_same_gradients("softmax_backward", train.softmax_backward(dy, gpt2.softmax(x)), dx)


def test_layer_norm_backward():
    x, (g, b) = normal(2, 5, 16, scale=2) + 1, ln_params(16).values()
    dy = normal(2, 5, 16)
    theirs = ref.vjp(ref.layer_norm, dy, x, g, b)
    dx, grads = train.layer_norm_backward(dy, x, g, b)
    assert_same_gradients("layer_norm_backward", {"x": dx, **grads}, dict(zip(("x", "g", "b"), theirs)))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward(bias):
    x, params, dy = normal(2, 5, 16), linear_params(16, 24), normal(2, 5, 24)
    params = params if bias else {"w": params["w"]}
    dx, grads = ref.vjp(lambda x, p: ref.linear(x, **p), dy, x, params)
    ours_dx, ours = train.linear_backward(dy, x, **params)
    assert_same_gradients("linear_backward", {"x": ours_dx, **ours}, {"x": dx, **grads})


@pytest.mark.parametrize("n_q, n_k", [(6, 6), (4, 9), (1, 5)])  # a whole sequence, a later block, one query
def test_attention_backward(n_q, n_k):
    q, k, v = normal(2, 3, n_q, 8), normal(2, 3, n_k, 8), normal(2, 3, n_k, 8)
    dy = normal(2, 3, n_q, 8)
    mask = gpt2.causal_mask(n_q, n_k) if n_q > 1 else None
    _, weights = gpt2.attention(q, k, v, mask)
    theirs = ref.vjp(ref.attention, dy, q, k, v)
    ours = train.attention_backward(dy, q, k, v, weights)
    assert_same_gradients("attention_backward", dict(zip("qkv", ours)), dict(zip("qkv", theirs)))


@pytest.mark.parametrize("n_q, n_k, block", [(9, 9, 4), (5, 9, 2), (7, 7, 128)])  # blocks; a cache's case; one
def test_causal_attention_backward(n_q, n_k, block):
    import tensorflow as tf

    q, k, v = normal(2, 3, n_q, 8), normal(2, 3, n_k, 8), normal(2, 3, n_k, 8)
    dy = normal(2, n_q, 3, 8)  # the heads side by side, as causal_attention returns them
    kept = []
    gpt2.causal_attention(q, k, v, block, kept)
    assert len(kept) == -(-n_q // block)
    theirs = ref.vjp(lambda q, k, v: tf.transpose(ref.attention(q, k, v), [0, 2, 1, 3]), dy, q, k, v)
    ours = train.causal_attention_backward(dy, q, k, v, kept)
    assert_same_gradients("causal_attention_backward", dict(zip("qkv", ours)), dict(zip("qkv", theirs)))


def test_ffn_backward():
    x, params, dy = normal(2, 5, 16), {"c_fc": linear_params(16, 64), "c_proj": linear_params(64, 16)}, normal(2, 5, 16)
    theirs = ref.vjp(lambda x, p: ref.ffn(x, **p), dy, x, params)
    y, kept = train.ffn_forward(x, **params)
    dx, ours = train.ffn_backward(dy, kept, **params)
    assert_same_gradients("ffn_backward", {"x": dx, **ours}, {"x": theirs[0], **theirs[1]})


@pytest.mark.parametrize("query_block", [4, 128])  # blocks of 4, 4 and 1 queries; all 9 at once
def test_mha_backward(monkeypatch, query_block):
    monkeypatch.setattr(gpt2, "QUERY_BLOCK", query_block)
    params, x, dy = block_params(16)["attn"], normal(2, 9, 16), normal(2, 9, 16)
    theirs = ref.vjp(lambda x, p: ref.mha(x, **p, n_head=4), dy, x, params)
    y, kept = train.mha_forward(x, **params, n_head=4)
    assert len(kept["weights"]) == -(-9 // query_block)
    dx, ours = train.mha_backward(dy, kept, **params, n_head=4)
    assert_same_gradients("mha_backward", {"x": dx, **ours}, {"x": theirs[0], **theirs[1]})


def test_transformer_block_backward():
    params, x, dy = block_params(16), normal(9, 16), normal(9, 16)  # one sequence, no batch axis
    theirs = ref.vjp(lambda x, p: ref.transformer_block(x, **p, n_head=4), dy, x, params)
    y, kept = train.transformer_block_forward(x, **params, n_head=4)
    dx, ours = train.transformer_block_backward(dy, kept, **params, n_head=4)
    assert_same_gradients("transformer_block_backward", {"x": dx, **ours}, {"x": theirs[0], **theirs[1]})


def test_gpt2_backward_embeddings_and_tied_projection():
    params = {"wte": normal(50, 16, scale=0.5), "wpe": normal(12, 16, scale=0.1),
              "blocks": [block_params(16), block_params(16)], "ln_f": ln_params(16)}
    inputs = np.array([[3, 7, 3, 3, 49, 0, 7, 12, 3], [7, 7, 1, 2, 3, 4, 5, 6, 3]])  # repeats: rows add up
    dy = normal(2, 9, 50)
    (theirs,) = ref.vjp(lambda p: ref.logits(inputs, **p, n_head=4), dy, params)
    logits, kept = train.gpt2_forward(inputs, **params, n_head=4)
    ours = train.gpt2_backward(dy, kept, inputs, **params, n_head=4)
    assert_same_gradients("gpt2_backward", ours, theirs)
    assert not ours["wpe"][9:].any()  # positions past the inputs get no gradient


def test_cross_entropy_and_backward():
    import tensorflow as tf

    logits, targets = normal(2, 5, 30, scale=3), rng.integers(0, 30, (2, 5))

    def loss(x):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=x))

    (dlogits,) = ref.vjp(loss, np.float64(1.0), logits)
    ours, probs = train.cross_entropy(logits.copy(), targets)
    assert ours == pytest.approx(float(loss(tf.constant(logits))), rel=1e-14)
    assert_same_gradients("cross_entropy_backward", train.cross_entropy_backward(probs, targets), dlogits)
