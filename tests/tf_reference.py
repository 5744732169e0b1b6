"""Test support: GPT-2's loss and its gradients by TensorFlow, the reference for train.py's backward pass.

The model is written here again with TensorFlow ops (einsum, tf.nn.softmax, tf.nn.moments, tf.where, TensorFlow's
own sparse softmax cross-entropy) and shares no code with the NumPy model; tf.GradientTape takes the gradients.
Parameters come as NumPy trees shaped like utils' params ({wte, wpe, blocks: [{ln_1, attn, ln_2, mlp}], ln_f})
and compute in the dtype asked for, float64 for the truth. Token ids: [n_seq] or [n_batch, n_seq].

TensorFlow is imported inside the functions, so merely importing this module stays cheap.
"""
import math

import numpy as np

from checkpoints import tensorflow as _tf


def gelu(x):
    tf = _tf()
    return 0.5 * x * (1.0 + tf.math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, g, b):
    tf = _tf()
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) / tf.sqrt(variance + 1e-5) * g + b


def linear(x, w, b=None, A=None, B=None, scale=None):
    """x w + b, plus LoRA's scale (x A) B where an adapter is given (A [in, r], B [r, out], scale a float).
    As rows: einsum's gradient of "...i,io->...o" would broadcast to [..., i, o]."""
    tf = _tf()
    x_rows = tf.reshape(x, [-1, w.shape[0]])
    y = tf.einsum("ti,io->to", x_rows, w)
    if A is not None:
        y = y + scale * tf.matmul(tf.matmul(x_rows, A), B)
    y = tf.reshape(y, [*x.shape[:-1], w.shape[1]])
    return y if b is None else y + b


def attention(q, k, v):  # [..., n_head, n_q, d_head], [..., n_head, n_k, d_head] x2
    """Query i is position n_k - n_q + i and sees the keys up to it."""
    tf = _tf()
    n_q, n_k = q.shape[-2], k.shape[-2]
    scores = tf.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1])
    seen = np.tril(np.ones((n_q, n_k), bool), k=n_k - n_q)
    scores = tf.where(seen, scores, tf.constant(-1e30, scores.dtype))
    return tf.einsum("...qk,...kd->...qd", tf.nn.softmax(scores, axis=-1), v)


def mha(x, c_attn, c_proj, n_head):  # [..., n_seq, n_embd]
    tf = _tf()
    n_seq, n_embd = x.shape[-2], x.shape[-1]
    qkv = tf.reshape(linear(x, **c_attn), [-1, n_seq, 3, n_head, n_embd // n_head])
    q, k, v = (tf.transpose(qkv[:, :, i], [0, 2, 1, 3]) for i in range(3))  # [batch, n_head, n_seq, d_head]
    heads = tf.transpose(attention(q, k, v), [0, 2, 1, 3])  # [batch, n_seq, n_head, d_head]
    return linear(tf.reshape(heads, tf.shape(x)), **c_proj)


def ffn(x, c_fc, c_proj):
    return linear(gelu(linear(x, **c_fc)), **c_proj)


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head):
    x = x + mha(layer_norm(x, **ln_1), **attn, n_head=n_head)
    return x + ffn(layer_norm(x, **ln_2), **mlp)


def hidden(inputs, wte, wpe, blocks, ln_f, n_head):
    """The final hidden state, after ln_f: [..., n_seq, n_embd]."""
    tf = _tf()
    x = tf.gather(wte, inputs) + wpe[:inputs.shape[-1]]
    for block in blocks:
        x = transformer_block(x, **block, n_head=n_head)
    return layer_norm(x, **ln_f)


def logits(inputs, wte, wpe, blocks, ln_f, n_head):
    tf = _tf()
    return linear(hidden(inputs, wte, wpe, blocks, ln_f, n_head), tf.transpose(wte))


def to_tf(tree, dtype):
    """A NumPy tree as TensorFlow constants of dtype, and the list of them for the tape to watch (a Python float,
    a LoRA adapter's scale, stays a float and is not watched)."""
    tf = _tf()
    if isinstance(tree, float):
        return tree, []
    if isinstance(tree, dict):
        pairs = {key: to_tf(value, dtype) for key, value in tree.items()}
        return {key: pair[0] for key, pair in pairs.items()}, [t for pair in pairs.values() for t in pair[1]]
    if isinstance(tree, list):
        pairs = [to_tf(value, dtype) for value in tree]
        return [pair[0] for pair in pairs], [t for pair in pairs for t in pair[1]]
    tensor = tf.constant(np.asarray(tree), dtype=dtype)
    return tensor, [tensor]


def like(tree, flat):
    """The arrays of `flat` (in to_tf's order) put back into a tree shaped like `tree` (without its floats)."""
    if isinstance(tree, dict):
        return {key: like(value, flat) for key, value in tree.items() if not isinstance(value, float)}
    if isinstance(tree, list):
        return [like(value, flat) for value in tree]
    return flat.pop(0)


def loss_and_grads(inputs, targets, params, n_head, dtype=np.float64):
    """TensorFlow's mean cross-entropy of targets given inputs, and its gradient for every parameter, as NumPy
    arrays of dtype in a tree shaped like params."""
    tf = _tf()
    tensors, flat = to_tf(params, dtype)
    with tf.GradientTape() as tape:
        tape.watch(flat)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=np.asarray(targets), logits=logits(np.asarray(inputs), **tensors, n_head=n_head)))
    grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, flat)]
    return float(loss), like(params, grads)


def vjp(f, dy, *args, dtype=np.float64):
    """The gradients of sum(f(*args) dy) for every array in args (trees allowed), as NumPy trees like args:
    what a backward function given dy must return."""
    tf = _tf()
    pairs = [to_tf(arg, dtype) for arg in args]
    flat = [t for _, ts in pairs for t in ts]
    with tf.GradientTape() as tape:
        tape.watch(flat)
        y = f(*(tensors for tensors, _ in pairs))
    grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(y, flat, output_gradients=tf.constant(dy, dtype))]
    return [like(arg, grads) for arg in args]


EOT = 50256  # <|endoftext|>, the padding


def padded(texts):
    """Token-id lists of different lengths as one batch [n_texts, longest], each right-padded with EOT."""
    batch = np.full((len(texts), max(map(len, texts))), EOT)
    for row, text in enumerate(texts):
        batch[row, :len(text)] = text
    return batch


def classify_loss(texts, labels, tensors, w, n_head, lm_weight):
    """The classifier's loss on a padded batch: the mean cross-entropy of the head w on each text's last real
    position (gathered with tf.gather_nd), plus lm_weight times the language-model loss, masked: every position
    of the batch predicts the next one, and the mean is taken over the pairs inside a text alone."""
    tf = _tf()
    batch, lengths = padded(texts), np.array([len(text) for text in texts])
    h = hidden(batch, **tensors, n_head=n_head)  # [n_texts, n_seq, n_embd]
    last = tf.gather_nd(h, np.stack([np.arange(len(texts)), lengths - 1], axis=1))
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=np.asarray(labels),
                                                                         logits=tf.matmul(last, w)))
    if lm_weight:
        every = tf.nn.sparse_softmax_cross_entropy_with_logits(  # [n_texts, n_seq - 1], padding included
            labels=batch[:, 1:], logits=tf.einsum("bte,ve->btv", h[:, :-1], tensors["wte"]))
        inside = tf.constant(np.arange(batch.shape[1] - 1)[None, :] < lengths[:, None] - 1, every.dtype)
        loss = loss + lm_weight * tf.reduce_sum(every * inside) / tf.reduce_sum(inside)
    return loss


def classify_loss_and_grads(texts, labels, params, w, n_head, lm_weight=0.0, dtype=np.float64):
    """TensorFlow's classify_loss and its gradients: (loss, a tree shaped like params, dw)."""
    tf = _tf()
    (tensors, w_tensor), flat = to_tf([params, w], dtype)
    with tf.GradientTape() as tape:
        tape.watch(flat)
        loss = classify_loss(texts, labels, tensors, w_tensor, n_head, lm_weight)
    grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, flat)]
    grads_params, dw = like([params, w], grads)
    return float(loss), grads_params, dw


def class_probabilities(texts, params, w, n_head, dtype=np.float64):
    """softmax(h w) at each text's last position, each text alone through the model: [n_texts, n_classes]."""
    tf = _tf()
    tensors, _ = to_tf(params, dtype)
    return np.stack([tf.nn.softmax(tf.matmul(hidden(np.asarray(text), **tensors, n_head=n_head)[-1:],
                                             tf.constant(w, dtype)))[0].numpy() for text in texts])
