"""Test support: small random GPT-2 checkpoints in OpenAI's layout, and a TensorFlow reference.

write_model() makes a model folder shaped like the ones OpenAI released (hparams.json, a TF1
checkpoint named model.ckpt with the same variable names and shapes, encoder.json, vocab.bpe),
so code written for the real downloads loads it unchanged. reference_logits() runs GPT-2's
forward pass with TensorFlow ops straight from that checkpoint; it shares no code with the
project's NumPy model, so the two can be checked against each other.

TensorFlow is imported inside the functions, so merely importing this module stays cheap.
"""
import json
import math
import os
import shutil

import numpy as np

CHECKPOINT_NAME = "model.ckpt"
LN_EPSILON = 1e-5
MASK_FILL = 1e10  # OpenAI's model pushes masked attention scores down by this much


def tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def _vocab_dir():
    try:  # pytest puts tests/ itself on sys.path
        from vocab import vocab_dir
    except ImportError:  # imported as tests.checkpoints from the repo root
        from tests.vocab import vocab_dir
    return vocab_dir()


def variable_shapes(hparams):
    """{checkpoint variable name: shape} for a GPT-2 with these hyperparameters, in OpenAI's names.

    The 1x1 convolutions ("conv1d") keep OpenAI's leading axis of 1: [1, inputs, outputs].
    """
    v, c, e, layers = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"], hparams["n_layer"]
    shapes = {"model/wte": [v, e], "model/wpe": [c, e]}
    for i in range(layers):
        p = f"model/h{i}/"
        shapes.update({
            p + "ln_1/g": [e], p + "ln_1/b": [e],
            p + "attn/c_attn/w": [1, e, 3 * e], p + "attn/c_attn/b": [3 * e],
            p + "attn/c_proj/w": [1, e, e], p + "attn/c_proj/b": [e],
            p + "ln_2/g": [e], p + "ln_2/b": [e],
            p + "mlp/c_fc/w": [1, e, 4 * e], p + "mlp/c_fc/b": [4 * e],
            p + "mlp/c_proj/w": [1, 4 * e, e], p + "mlp/c_proj/b": [e],
        })
    shapes.update({"model/ln_f/g": [e], "model/ln_f/b": [e]})
    return shapes


def _random_weights(shapes, n_embd, seed):
    """Random float32 weights whose activations look like a trained model's, not like noise at 0.

    Matrix scales follow fan-in, so every size behaves alike: query/key and MLP pre-activations
    come out with std ~1 (attention is neither uniform nor one-hot; GELU's curve matters).
    Token embeddings of std 2.5/sqrt(n_embd) give logits a std of about 2.5. Because the output
    layer reuses the token embeddings, a model whose blocks add little predicts its own input
    token at every position, and greedy decoding repeats one token forever; so the projections
    that write into the residual stream are large (c_proj std 4/sqrt(fan-in): each block adds
    std ~3 per element, far above the embeddings' own), so predictions depend on the context.
    Position embeddings get a fifth of the token embeddings' scale.
    """
    rng = np.random.default_rng(seed)

    def normal(shape, std, mean=0.0):
        x = rng.standard_normal(shape, dtype=np.float32)
        x *= np.float32(std)
        if mean:
            x += np.float32(mean)
        return x

    weights = {}
    for name, shape in shapes.items():
        kind = name.rsplit("/", 2)[-2:]  # e.g. ["c_fc", "w"], ["ln_1", "g"], ["model", "wte"]
        if name == "model/wte":
            weights[name] = normal(shape, 2.5 / math.sqrt(n_embd))
        elif name == "model/wpe":
            weights[name] = normal(shape, 0.5 / math.sqrt(n_embd))
        elif kind[1] == "g":  # layer-norm gain
            weights[name] = normal(shape, 0.1, mean=1.0)
        elif kind[1] == "b":  # layer-norm or conv1d bias
            weights[name] = normal(shape, 0.02)
        else:  # conv1d weight [1, nx, nf]
            nx = shape[1]
            gain = 4.0 if kind[0] == "c_proj" else 1.0  # outputs added to the residual stream
            weights[name] = normal(shape, gain / math.sqrt(nx))
    return weights


def write_model(model_dir, hparams, seed=0):
    """Write a random-weight GPT-2 model folder in the layout of OpenAI's released checkpoints.

    Files: hparams.json (the dict given), model.ckpt.{data-00000-of-00001,index,meta}, the
    `checkpoint` file naming "model.ckpt" (relative, as OpenAI's does), and copies of the real
    encoder.json and vocab.bpe. The vocabulary files are always copied; their ids run to 50256,
    so only a model with n_vocab 50257 can use them for text.

    Returns {variable name: float32 array} of exactly what was written, e.g. "model/h0/mlp/c_fc/w".
    """
    model_dir = os.fspath(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    if hparams["n_embd"] % hparams["n_head"]:
        raise ValueError(f"n_embd {hparams['n_embd']} is not a multiple of n_head {hparams['n_head']}")
    weights = _random_weights(variable_shapes(hparams), hparams["n_embd"], seed)
    with open(os.path.join(model_dir, "hparams.json"), "w") as f:
        json.dump(hparams, f, indent=2)
        f.write("\n")
    save_tf_checkpoint(os.path.join(model_dir, CHECKPOINT_NAME), weights)
    # Saver writes this itself; write it again so its text is exactly OpenAI's whatever the
    # TensorFlow version does with paths.
    with open(os.path.join(model_dir, "checkpoint"), "w") as f:
        f.write(f'model_checkpoint_path: "{CHECKPOINT_NAME}"\n')
        f.write(f'all_model_checkpoint_paths: "{CHECKPOINT_NAME}"\n')
    vocab = _vocab_dir()
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(os.path.join(vocab, name), os.path.join(model_dir, name))
    return weights


def save_tf_checkpoint(prefix, weights):
    """Save {variable name: float32 array} under prefix with TensorFlow 1's Saver, as OpenAI did:
    prefix.index, prefix.data-00000-of-00001 and prefix.meta (the graph)."""
    tf = tensorflow()
    # A graph of its own per call. Values go in through placeholders fed at run time, so the
    # saved graph (.meta) holds only small ops, never the weights as constants.
    graph = tf.Graph()
    with graph.as_default():
        variables, loads = [], []
        for name, array in weights.items():
            # Plain (non-resource) variables, as TF1 made them; the zeros initializer never runs.
            var = tf.compat.v1.get_variable(name, shape=array.shape, dtype=tf.float32,
                                            initializer=tf.compat.v1.zeros_initializer(), use_resource=False)
            value = tf.compat.v1.placeholder(tf.float32, shape=array.shape, name="value")
            loads.append((tf.compat.v1.assign(var, value).op, value, array))
            variables.append(var)
        # save_relative_paths: otherwise the `checkpoint` file records the absolute path.
        saver = tf.compat.v1.train.Saver(var_list=variables, save_relative_paths=True)
        with tf.compat.v1.Session(graph=graph) as session:
            for assign, value, array in loads:  # one at a time keeps peak memory lower
                session.run(assign, feed_dict={value: array})
            saver.save(session, prefix, write_meta_graph=True)


def reference_logits(model_dir, ids):
    """GPT-2 logits [len(ids), n_vocab] (float32) for every position, computed with TensorFlow.

    Weights are read straight from model_dir's checkpoint, hyperparameters from hparams.json.
    """
    tf = tensorflow()
    model_dir = os.fspath(model_dir)
    with open(os.path.join(model_dir, "hparams.json")) as f:
        hp = json.load(f)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if not 0 < len(ids) <= hp["n_ctx"]:
        raise ValueError(f"need 1 to n_ctx={hp['n_ctx']} tokens, got {len(ids)}")
    if ids.min() < 0 or ids.max() >= hp["n_vocab"]:
        raise ValueError(f"token ids must be in [0, {hp['n_vocab']})")
    reader = tf.train.load_checkpoint(os.path.join(model_dir, CHECKPOINT_NAME))
    params = {name: tf.constant(reader.get_tensor(name), dtype=tf.float32) for name in variable_shapes(hp)}
    return reference_forward(tf, ids, params, hp["n_head"], hp["n_layer"]).numpy().astype(np.float32)


def reference_forward(tf, ids, params, n_head, n_layer):
    """GPT-2's logits [n, n_vocab] for token ids [n], as a TensorFlow tensor, from a dict of the
    checkpoint's variables (tensors of any float dtype) under their names ("model/h0/attn/c_attn/w").
    The math is OpenAI's: pre-norm blocks, layer norm with epsilon 1e-5, causal attention whose
    masked scores are w*b - 1e10*(1-b), tanh GELU, and output logits through the token embedding.
    """
    wte = params["model/wte"]
    h = tf.gather(wte, ids) + params["model/wpe"][:len(ids)]
    for i in range(n_layer):
        block = {name.removeprefix(f"model/h{i}/"): p for name, p in params.items() if name.startswith(f"model/h{i}/")}
        h = h + tf_attention(tf, tf_layer_norm(tf, h, block, "ln_1"), block, n_head)
        h = h + tf_mlp(tf, tf_layer_norm(tf, h, block, "ln_2"), block)
    h = tf_layer_norm(tf, h, {"ln_f/g": params["model/ln_f/g"], "ln_f/b": params["model/ln_f/b"]}, "ln_f")
    return tf.matmul(h, wte, transpose_b=True)


def tf_layer_norm(tf, x, p, scope):
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True)
    return centred * tf.math.rsqrt(var + LN_EPSILON) * p[scope + "/g"] + p[scope + "/b"]


def tf_conv1d(tf, x, p, scope):
    return tf.einsum("tx,oxf->tf", x, p[scope + "/w"]) + p[scope + "/b"]  # w: [1, nx, nf]


def tf_gelu(tf, x):
    return 0.5 * x * (1.0 + tf.math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def tf_attention(tf, x, p, n_head):
    n = x.shape[0]
    qkv = tf.reshape(tf_conv1d(tf, x, p, "attn/c_attn"), [n, 3, n_head, -1])  # q, k, v each split into heads
    q, k, v = tf.unstack(qkv, axis=1)  # each [n, heads, d_head]
    scores = tf.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    keep = tf.linalg.band_part(tf.ones([n, n], dtype=x.dtype), -1, 0)  # 1 where query i may see key j <= i
    probs = tf.nn.softmax(scores * keep - MASK_FILL * (1.0 - keep), axis=-1)
    heads = tf.einsum("hqk,khd->qhd", probs, v)  # back to [n, heads, d_head]
    return tf_conv1d(tf, tf.reshape(heads, [n, -1]), p, "attn/c_proj")


def tf_mlp(tf, x, p):
    return tf_conv1d(tf, tf_gelu(tf, tf_conv1d(tf, x, p, "mlp/c_fc")), p, "mlp/c_proj")


def random_bits(shape, rng):
    """float32 arrays of random bit patterns: every sign, exponent and NaN payload, so that
    "bit-identical" is tested on every bit."""
    return rng.integers(0, 1 << 32, size=shape, dtype=np.uint32).view(np.float32)


def bits(array):
    """An array's float32 values as their bits in C order (NaNs compare equal as bits)."""
    return np.ascontiguousarray(array, dtype="<f4").view(np.uint32)


def assert_tensorflow_reads(prefix, tensors):
    """tf.train.load_checkpoint reads exactly these names, shapes, dtype and bits at prefix (it
    checks the index blocks' CRCs, and each tensor's CRC32C as it reads it)."""
    tf = tensorflow()
    reader = tf.train.load_checkpoint(prefix)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    assert sorted(shapes) == sorted(tensors)
    for name, array in tensors.items():
        assert shapes[name] == list(array.shape) and dtypes[name] == tf.float32, name
        assert np.array_equal(bits(reader.get_tensor(name)), bits(array)), name
