"""Test support: small random GPT-2 checkpoints in OpenAI's layout, and a TensorFlow reference.

write_model() makes a model folder shaped like the ones OpenAI released (hparams.json, a TF1
checkpoint named model.ckpt with the same variable names and shapes, encoder.json, vocab.bpe),
so code written for the real downloads loads it unchanged. reference_logits() runs GPT-2's
forward pass with TensorFlow ops (tests/tf_reference.py) straight from that checkpoint; it shares
no code with the project's NumPy model, so the two can be checked against each other.

TensorFlow is imported inside the functions, so merely importing this module stays cheap.
"""
import json
import math
import os
import shutil

import numpy as np

CHECKPOINT_NAME = "model.ckpt"


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


def reference_model(model_dir, ids):
    """(hparams, ids checked, the TensorFlow parameter tree) for a TensorFlow pass over ids: weights read straight
    from model_dir's checkpoint by TensorFlow's own reader, hyperparameters from hparams.json."""
    tf = tensorflow()
    model_dir = os.fspath(model_dir)
    with open(os.path.join(model_dir, "hparams.json")) as f:
        hp = json.load(f)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if not 0 < len(ids) <= hp["n_ctx"]:
        raise ValueError(f"need 1 to n_ctx={hp['n_ctx']} tokens, got {len(ids)}")
    if ids.min() < 0 or ids.max() >= hp["n_vocab"]:
        raise ValueError(f"token ids must be in [0, {hp['n_vocab']})")
    import tf_reference  # here, not above: it imports this module

    reader = tf.train.load_checkpoint(os.path.join(model_dir, CHECKPOINT_NAME))
    tensors, _ = tf_reference.to_tf(checkpoint_tree(reader.get_tensor, hp["n_layer"]), tf.float32)
    return hp, ids, tensors


def reference_logits(model_dir, ids):
    """GPT-2 logits [len(ids), n_vocab] (float32) for every position, computed with TensorFlow
    (the model of tests/tf_reference.py on the checkpoint as TensorFlow reads it)."""
    import tf_reference

    hp, ids, tensors = reference_model(model_dir, ids)
    return tf_reference.logits(ids, **tensors, n_head=hp["n_head"]).numpy().astype(np.float32)


def reference_hidden(model_dir, ids):
    """GPT-2's final hidden state [len(ids), n_embd] (float32, after ln_f), computed with TensorFlow: what a
    classifier's head reads."""
    import tf_reference

    hp, ids, tensors = reference_model(model_dir, ids)
    return tf_reference.hidden(ids, **tensors, n_head=hp["n_head"]).numpy().astype(np.float32)


def reference_log_probs(model_dir, inputs):
    """Each token's log-probability after [EOT] + the tokens before it, from one pass of the
    TensorFlow reference and a float64 log-softmax via logaddexp."""
    logits = reference_logits(model_dir, [50256] + list(inputs)[:-1]).astype(np.float64)  # 50256: <|endoftext|>
    return logits[np.arange(len(inputs)), inputs] - np.logaddexp.reduce(logits, axis=-1)


def checkpoint_tree(get, n_layer):
    """OpenAI's variables, get(name) each, as the parameter tree tf_reference's model takes (each
    conv1d weight [1, nx, nf] as [nx, nf])."""
    def layer(scope):
        return {"w": get(scope + "/w")[0], "b": get(scope + "/b")}

    def norm(scope):
        return {"g": get(scope + "/g"), "b": get(scope + "/b")}

    blocks = [{"ln_1": norm(f"model/h{i}/ln_1"), "ln_2": norm(f"model/h{i}/ln_2"),
               "attn": {"c_attn": layer(f"model/h{i}/attn/c_attn"), "c_proj": layer(f"model/h{i}/attn/c_proj")},
               "mlp": {"c_fc": layer(f"model/h{i}/mlp/c_fc"), "c_proj": layer(f"model/h{i}/mlp/c_proj")}}
              for i in range(n_layer)]
    return {"wte": get("model/wte"), "wpe": get("model/wpe"), "blocks": blocks, "ln_f": norm("model/ln_f")}


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
