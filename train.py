"""Training GPT-2 in NumPy: the backward of every function of gpt2.py, the gradients of the loss, AdamW, fine-tuning steps.

The backward functions come in the order of gpt2.py's forward ones, and each undoes one of them: it takes dy,
the gradient of the loss with respect to the forward's output, then the forward's own arguments in the same
order, and returns the gradient with respect to the forward's input, followed by a dict of its parameters'
gradients shaped like its parameters. A forward that is made of others (ffn, mha, transformer_block, gpt2) has a
`*_forward` twin here that calls gpt2.py's functions, so there is one copy of the model's math, and also returns
what its backward reads ("kept", named once in a dict, like the activations struct of llm.c). The backward lets
go of each kept tensor as soon as it has used it.

Shapes as in gpt2.py; "rows" are all positions of all sequences of a batch, [..., n] read as [n_rows, n].
Everything computes in the dtype of the parameters: float32 to train, float64 to check the gradients.

Training less: a linear may hold a LoRA adapter (add_lora; lora_linear sits beside linear), and `trained`, the
flat names of the tensors that train (trained_names), lets the backward skip what only frozen tensors would need:
no backward below the lowest trained block (those blocks run forward as gpt2.transformer_block, keeping nothing),
no dw, db or dg of a frozen layer, and no kept input that only such a gradient reads. merge_lora folds the
adapters back into the weights.

Tasks: classify_loss_and_grads trains a classifier head on each text's last token (GPT-1's recipe, gpt2.classify's
forward), with the language-model loss over the texts beside it if asked.

At the end come the pieces of a fine-tuning run on a text: random windows of it (get_batch), the learning
rate's warmup, one AdamW step on accumulated batches (train_step) and the validation loss (evaluate). They read
and write no file: `python train.py` (cli.py) runs them, saving and resuming.
"""
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gpt2 import (MINUS_TWO_SQRT_2_OVER_PI, causal_attention, gelu, gpt2, is_real, is_whole, layer_norm, linear,
                  pad_right, split_heads, transformer_block)

TWO_SQRT_2_OVER_PI = -MINUS_TWO_SQRT_2_OVER_PI


def rows(x):  # [..., n] -> [n_rows, n]
    return x.reshape(-1, x.shape[-1])


NUMBERS_AT_ONCE = 1 << 18  # of a big elementwise computation, done together (see by_rows): 1 MB in float32
THREADS = ThreadPoolExecutor(os.cpu_count() or 1)  # one per core; they start only when first used


def by_rows(fn, *arrays, out=None):  # fn: [m, n] arrays -> [m, k]; arrays [..., n] -> out [..., k]
    """fn(*arrays) for a function that works row by row, a few rows (about NUMBERS_AT_ONCE numbers) at a time in
    a thread per core; the same numbers as fn(*arrays). out: where the rows go (default: a new array like
    arrays[0]). Speed: NumPy's elementwise work runs on one core and, on big arrays, goes through memory pass
    after pass; a few rows stay in the core's cache, and NumPy lets go of Python's lock inside each operation,
    so the threads keep every core busy."""
    out, parts = np.empty_like(arrays[0]) if out is None else out, [rows(a) for a in arrays]
    step = max(1, NUMBERS_AT_ONCE // parts[0].shape[1])
    errors = np.geterr()  # the caller's np.errstate, which is per thread

    def work(start):
        with np.errstate(**errors):
            rows(out)[start:start + step] = fn(*(part[start:start + step] for part in parts))

    list(THREADS.map(work, range(0, len(parts[0]), step)))
    return out


def gelu_backward(dy, x):  # [..., n], [..., n] -> [..., n]
    """Undoes gelu: y = x s(x), s = 1 / (1 + exp(-2 sqrt(2/pi) (x + 0.044715 x^3))), a logistic curve.
    dx = dy (s + x s (1 - s) 2 sqrt(2/pi) (1 + 3 0.044715 x^2)), as s' = s (1 - s) times the inner derivative."""
    x2 = x * x
    s = x2 * (0.044715 * MINUS_TWO_SQRT_2_OVER_PI)
    s += MINUS_TWO_SQRT_2_OVER_PI
    s *= x
    np.minimum(s, 80, out=s)  # as gelu does: exp stays finite, and s is 0 to float precision there
    np.exp(s, out=s)
    s += 1
    np.reciprocal(s, out=s)  # s
    x2 *= 3 * 0.044715 * TWO_SQRT_2_OVER_PI
    x2 += TWO_SQRT_2_OVER_PI
    x2 *= x  # x 2 sqrt(2/pi) (1 + 3 0.044715 x^2)
    x2 *= 1 - s
    x2 += 1
    x2 *= s  # gelu'(x) = s (1 + (1 - s) x 2 sqrt(2/pi) (1 + 3 0.044715 x^2))
    x2 *= dy
    return x2


def softmax_backward(dy, y, out=None):  # [..., n], [..., n] -> [..., n]
    """Undoes softmax along the last axis, given its output y: dx = y (dy - sum(dy y)).
    out=dy overwrites dy instead of making a new array, for the big attention weights."""
    dx = np.subtract(dy, np.einsum("...i,...i->...", dy, y)[..., None], out=out)
    dx *= y
    return dx


def layer_norm_backward(dy, x, g, b, eps=1e-5, frozen=False):  # [..., n_embd] x2, [n_embd] x2 -> [..., n_embd], {g, b}
    """Undoes layer_norm: y = xhat g + b, xhat = (x - mean(x)) / sqrt(var(x) + eps), along the last axis.
    dg = sum over rows of dy xhat, db = sum over rows of dy,
    dx = (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) / sqrt(var(x) + eps), where dxhat = dy g.
    frozen: g and b do not train: dx alone."""
    n = x.shape[-1]
    xhat = x - x.sum(axis=-1, keepdims=True) / n  # recomputed from x, as layer_norm does: keeping it costs memory
    rstd = 1 / np.sqrt(np.square(xhat).sum(axis=-1, keepdims=True) / n + eps)
    xhat *= rstd
    grads = {} if frozen else {"g": rows(dy * xhat).sum(axis=0), "b": rows(dy).sum(axis=0)}
    dxhat = dy * g
    dx = dxhat - dxhat.sum(axis=-1, keepdims=True) / n
    dxhat *= xhat
    xhat *= dxhat.sum(axis=-1, keepdims=True) / n  # xhat mean(dxhat xhat)
    dx -= xhat
    dx *= rstd
    return dx, grads


def linear_backward(dy, x, w, b=None, frozen=False):  # [..., m, out], [..., m, in], [in, out], [out] -> dx, {w, b}
    """Undoes linear: y = x w + b.  dx = dy w^T,  dw = x^T dy,  db = dy summed over rows.
    frozen: w and b do not train: dx alone, and x is not read (it may be None)."""
    grads = {}
    if not frozen:
        grads["w"] = rows(x).T @ rows(dy)
        if b is not None:
            grads["b"] = rows(dy).sum(axis=0)
    return (rows(dy) @ w.T).reshape(*dy.shape[:-1], w.shape[0]), grads


def lora_linear(x, w, b=None, A=None, B=None, scale=1.0):  # [..., m, in] -> [..., m, out]
    """linear with a low-rank adapter (Hu et al., "LoRA"): x w + b + scale (x A) B, with A [in, r], B [r, out] and
    scale = alpha / r, a Python float (see add_lora). It splats a linear's dict as linear does, and without an
    adapter it is linear. (x A) B takes r (in + out) multiply-adds a row against x w's in x out, and the
    [in, out] matrix A B is never made."""
    y = linear(x, w, b)
    if A is not None:
        y += linear(scale * linear(x, A), B)  # scale on [m, r], the smallest place
    return y


def lora_linear_backward(dy, x, w, b=None, A=None, B=None, scale=1.0, frozen=False):  # -> dx, {w, b, A, B}
    """Undoes lora_linear: y = x w + b + s u B with u = x A [..., m, r]:
    dB = s u^T dy,  du = s dy B^T,  dA = x^T du,  dx = dy w^T + du A^T  (and linear_backward's dw, db).
    frozen: w and b do not train (LoRA's case): no dw, no db; x is read only for an adapter's gradients."""
    dx, grads = linear_backward(dy, x, w, b, frozen=frozen)
    if A is not None:
        dy, x = rows(dy), rows(x)
        du = scale * (dy @ B.T)  # [rows, r]
        grads["A"] = x.T @ du
        grads["B"] = (scale * (x @ A)).T @ dy  # u again rather than kept: one small product
        dx += (du @ A.T).reshape(dx.shape)
    return dx, grads


# Which tensors train. `trained` is None (every one) or a set of names relative to the function's parameters, as
# utils.flatten writes them: "c_fc/w" in ffn_forward, "attn/c_attn/A" in a block, "blocks/3/ln_1/g" in gpt2_forward.
# Work that only a frozen tensor's gradient would need is skipped, and so is keeping its input.

def trains(trained, name):
    return trained is None or name in trained


def within(trained, prefix):
    """The names in trained below prefix, without it: within({"attn/c_attn/A"}, "attn") = {"c_attn/A"}."""
    return None if trained is None else {name[len(prefix) + 1:] for name in trained if name.startswith(prefix + "/")}


def frozen(trained, layer):
    """Whether a linear's w and b, or a layer norm's g and b, take no gradient (an adapter's A and B may)."""
    return trained is not None and not {f"{layer}/w", f"{layer}/b", f"{layer}/g"} & trained


def reads_input(layer, trained, name):
    """Whether the backward of the linear `name` reads its input x: when its w trains, or it has an adapter."""
    return "A" in layer or not frozen(trained, name)


def kept_input(x, layer, trained, name):
    return x if reads_input(layer, trained, name) else None  # memory: nothing kept that no backward reads


def ffn_forward(x, c_fc, c_proj, trained=None):  # [..., n_seq, n_embd] -> [..., n_seq, n_embd], kept
    """gpt2.ffn, also returning what ffn_backward needs: its input x (when c_fc's backward reads it) and the hidden
    layer h before gelu. Each linear may hold an adapter (lora_linear)."""
    h = lora_linear(x, **c_fc)
    return lora_linear(by_rows(gelu, h), **c_proj), {"x": kept_input(x, c_fc, trained, "c_fc"), "h": h}


def ffn_backward(dy, kept, c_fc, c_proj, trained=None):  # [..., n_seq, n_embd], kept -> dx, {c_fc, c_proj}
    """Undoes ffn: y = linear(gelu(h), c_proj), h = linear(x, c_fc), one backward after the other.
    gelu(h) is computed again rather than kept (memory: 4 n_embd numbers per position and layer), and only if
    c_proj's backward reads it."""
    h = kept.pop("h")
    a = by_rows(gelu, h) if reads_input(c_proj, trained, "c_proj") else None
    da, d_proj = lora_linear_backward(dy, a, **c_proj, frozen=frozen(trained, "c_proj"))
    del a
    dx, d_fc = lora_linear_backward(by_rows(gelu_backward, da, h), kept.pop("x"), **c_fc,
                                    frozen=frozen(trained, "c_fc"))
    return dx, {"c_fc": d_fc, "c_proj": d_proj}


def attention_backward(dy, q, k, v, weights):  # [..., n_q, d_head], q k v as attention's, its weights
    """Undoes attention: y = w v, w = softmax(q k^T / sqrt(d_head) + mask), given w (the mask is a constant).
    dv = w^T dy,  ds = softmax_backward(dy v^T, w),  dq = ds k / sqrt(d_head),  dk = ds^T q / sqrt(d_head).
    Returns dq, dk, dv."""
    scale = 1 / math.sqrt(q.shape[-1])
    dv = weights.swapaxes(-1, -2) @ dy
    ds = dy @ v.swapaxes(-1, -2)  # [..., n_q, n_k]
    softmax_backward(ds, weights, out=ds)
    dq = ds @ k
    dq *= scale  # on dq, not on ds: fewer numbers
    return dq, ds.swapaxes(-1, -2) @ (q * scale), dv


def causal_attention_backward(dy, q, k, v, kept, out=None):  # [..., n_q, n_head, d_head], causal_attention's
    """Undoes causal_attention, given the attention weights it kept: attention_backward block by block. A block's
    queries are its own and its keys and values are all positions up to its last query, so dq is written block
    by block while dk and dv add up over the blocks. Returns dq, dk, dv [..., n_head, n_*, d_head], written
    into out (three zeroed arrays) if given."""
    dy = dy.swapaxes(-3, -2)  # [..., n_head, n_q, d_head], as q
    dq, dk, dv = (np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)) if out is None else out
    for weights in kept:
        seen = weights.shape[-1]  # keys up to the block's last query
        stop = seen - k.shape[-2] + q.shape[-2]  # the block's queries are q[..., start:stop, :]
        start = stop - weights.shape[-2]
        dq_block, dk_block, dv_block = attention_backward(dy[..., start:stop, :], q[..., start:stop, :],
                                                          k[..., :seen, :], v[..., :seen, :], weights)
        dq[..., start:stop, :] = dq_block
        dk[..., :seen, :] += dk_block
        dv[..., :seen, :] += dv_block
    return dq, dk, dv


def mha_forward(x, c_attn, c_proj, n_head, trained=None):  # [..., n_seq, n_embd] -> [..., n_seq, n_embd], kept
    """gpt2.mha without a cache, also returning what mha_backward needs: its input x and the heads side by side
    (c_attn's and c_proj's inputs, each when its backward reads it), the c_attn output qkv, and each query block's
    attention weights."""
    *batch, n_seq, n_embd = x.shape
    qkv = lora_linear(x, **c_attn)
    weights = []
    heads = causal_attention(*split_heads(qkv, n_head), kept=weights).reshape(*batch, n_seq, n_embd)
    return lora_linear(heads, **c_proj), {"x": kept_input(x, c_attn, trained, "c_attn"), "qkv": qkv,
                                          "weights": weights, "heads": kept_input(heads, c_proj, trained, "c_proj")}


def mha_backward(dy, kept, c_attn, c_proj, n_head, trained=None):  # [..., n_seq, n_embd], kept -> dx, {c_attn, c_proj}
    """Undoes mha: y = linear(heads, c_proj), heads = causal_attention(q, k, v), q, k, v = linear(x, c_attn):
    linear_backward, causal_attention_backward, linear_backward."""
    dheads, d_proj = lora_linear_backward(dy, kept.pop("heads"), **c_proj, frozen=frozen(trained, "c_proj"))
    qkv = kept.pop("qkv")
    dqkv = np.zeros_like(qkv)  # dq, dk, dv are written through the views that cut q, k, v out of qkv
    causal_attention_backward(dheads.reshape(*dy.shape[:-1], n_head, -1), *split_heads(qkv, n_head),
                              kept.pop("weights"), out=split_heads(dqkv, n_head))
    dx, d_attn = lora_linear_backward(dqkv, kept.pop("x"), **c_attn, frozen=frozen(trained, "c_attn"))
    return dx, {"c_attn": d_attn, "c_proj": d_proj}


def transformer_block_forward(x, mlp, attn, ln_1, ln_2, n_head, trained=None):  # [..., n_seq, n_embd] -> same, kept
    """gpt2.transformer_block without a cache, also returning what transformer_block_backward needs."""
    y, kept_attn = mha_forward(layer_norm(x, **ln_1), **attn, n_head=n_head, trained=within(trained, "attn"))
    x_mid = x + y
    y, kept_mlp = ffn_forward(layer_norm(x_mid, **ln_2), **mlp, trained=within(trained, "mlp"))
    return x_mid + y, {"x": x, "attn": kept_attn, "x_mid": x_mid, "mlp": kept_mlp}


def transformer_block_backward(dy, kept, mlp, attn, ln_1, ln_2, n_head, trained=None):  # -> dx, {mlp, attn, ...}
    """Undoes transformer_block: x_mid = x + mha(layer_norm(x, ln_1)), y = x_mid + ffn(layer_norm(x_mid, ln_2)).
    A residual connection passes its gradient on unchanged, and its branch's gradient is added to it:
    dx_mid = dy + (ffn and ln_2 backward of dy),  dx = dx_mid + (mha and ln_1 backward of dx_mid)."""
    da, d_mlp = ffn_backward(dy, kept.pop("mlp"), **mlp, trained=within(trained, "mlp"))
    dx_mid, d_ln_2 = layer_norm_backward(da, kept.pop("x_mid"), **ln_2, frozen=frozen(trained, "ln_2"))
    dx_mid += dy
    da, d_attn = mha_backward(dx_mid, kept.pop("attn"), **attn, n_head=n_head, trained=within(trained, "attn"))
    dx, d_ln_1 = layer_norm_backward(da, kept.pop("x"), **ln_1, frozen=frozen(trained, "ln_1"))
    dx += dx_mid
    return dx, {"mlp": d_mlp, "attn": d_attn, "ln_1": d_ln_1, "ln_2": d_ln_2}


def lowest_trained_block(trained, n_layer):
    """The lowest block the backward must undo: the lowest holding a trained tensor, or 0 when an embedding trains
    (its gradient comes up through every block); n_layer when none must be."""
    if trained is None or {"wte", "wpe"} & trained:
        return 0
    return min((int(name.split("/")[1]) for name in trained if name.startswith("blocks/")), default=n_layer)


def frozen_block(x, block, n_head):  # [..., n_seq, n_embd] -> same
    """transformer_block for a block below every trained tensor: no backward will reach it, so nothing is kept.
    A block holding an adapter that does not train goes through the twin, its kept tensors let go at once."""
    if any("A" in layer for part in ("attn", "mlp") for layer in block[part].values()):
        return transformer_block_forward(x, **block, n_head=n_head, trained=set())[0]
    return transformer_block(x, **block, n_head=n_head)


def hidden_forward(inputs, wte, wpe, blocks, ln_f, n_head, trained=None):  # [..., n_seq] -> [..., n_seq, n_embd], kept
    """gpt2.gpt2 up to its final hidden state a = layer_norm(x, ln_f), before any projection, also returning what
    hidden_backward needs: the kept tensors of every block from the lowest that trains up, and the last residual x.
    The blocks below that one run as gpt2.transformer_block, keeping nothing."""
    x = wte[inputs] + wpe[:inputs.shape[-1]]
    lowest, kept_blocks = lowest_trained_block(trained, len(blocks)), []
    for i, block in enumerate(blocks):
        if i < lowest:
            x = frozen_block(x, block, n_head)
        else:
            x, kept = transformer_block_forward(x, **block, n_head=n_head, trained=within(trained, f"blocks/{i}"))
            kept_blocks.append(kept)
    return layer_norm(x, **ln_f), {"blocks": kept_blocks, "x": x}


def hidden_backward(da, kept, inputs, wte, wpe, blocks, ln_f, n_head, trained=None, dwte=None):  # -> grads
    """Undoes hidden_forward: a = layer_norm(x, ln_f) after the blocks, x = wte[inputs] + wpe[:n_seq]; only the
    blocks it kept. Each position's dx is added to its token's row of dwte (the embedding's part of the tied wte's
    gradient, added in place to the output projection's part if given), and dwpe[:n_seq] = dx summed over the
    batch (later rows 0). Returns the gradients computed, in a dict shaped like params (all when trained is None)."""
    dx, d_ln_f = layer_norm_backward(da, kept.pop("x"), **ln_f, frozen=frozen(trained, "ln_f"))
    d_blocks = [{} for _ in blocks]
    for i in reversed(range(len(blocks) - len(kept["blocks"]), len(blocks))):
        dx, d_blocks[i] = transformer_block_backward(dx, kept["blocks"].pop(), **blocks[i], n_head=n_head,
                                                     trained=within(trained, f"blocks/{i}"))
    grads = {"blocks": d_blocks, "ln_f": d_ln_f}
    if trains(trained, "wte"):
        grads["wte"] = np.zeros_like(wte) if dwte is None else dwte
        np.add.at(grads["wte"], inputs, dx)  # the embedding: a token that occurs twice gets both its positions'
    if trains(trained, "wpe"):
        grads["wpe"] = np.zeros_like(wpe)
        grads["wpe"][:inputs.shape[-1]] = dx.reshape(-1, *dx.shape[-2:]).sum(axis=0)
    return grads


def gpt2_forward(inputs, wte, wpe, blocks, ln_f, n_head, trained=None):  # [..., n_seq] -> [..., n_seq, n_vocab], kept
    """gpt2.gpt2 without a cache, also returning what gpt2_backward needs: hidden_forward's kept tensors and the
    final hidden state a (the output projection's input, when wte trains). Its logits are gpt2()'s, bit for bit."""
    a, kept = hidden_forward(inputs, wte, wpe, blocks, ln_f, n_head, trained)
    kept["a"] = a if trains(trained, "wte") else None
    return linear(a, wte.T), kept


def gpt2_backward(dy, kept, inputs, wte, wpe, blocks, ln_f, n_head, trained=None):  # [..., n_seq, n_vocab] -> grads
    """Undoes gpt2: logits = a wte^T with a the final hidden state (hidden_forward). The tied wte gets both its
    gradients: dwte = dy^T a as the output projection, then hidden_backward adds its part as the embedding.
    Returns the gradients in a dict shaped like the parameters (those that train, if trained is given)."""
    a = kept.pop("a")
    dwte = None if a is None else rows(dy).T @ rows(a)  # the output projection
    del a
    da = (rows(dy) @ wte).reshape(*dy.shape[:-1], -1)
    return hidden_backward(da, kept, inputs, wte, wpe, blocks, ln_f, n_head, trained, dwte)


def take_backward(dy, shape, at):  # [n, ...], the taken-from shape, index arrays -> [shape]
    """Undoes y = x[at], reading chosen positions (e.g. each text's last token, at = (row, last)) where `at` picks
    each position once: dx is dy at those positions and 0 everywhere else."""
    dx = np.zeros(shape, dy.dtype)
    dx[at] = dy
    return dx


def cross_entropy(logits, targets):  # [..., n_seq, n_vocab], [..., n_seq] -> float, probs
    """The mean over positions of -log softmax(logits)[target] = log(sum(exp(logits))) - logits[target], in nats.
    Also returns softmax(logits), which cross_entropy_backward needs, written over the logits (memory: n_vocab
    numbers per position)."""
    e, targets = rows(logits), targets.reshape(-1)
    target_logits = e[np.arange(len(targets)), targets]
    log_sums = by_rows(softmax_in_place, e, out=np.empty((len(e), 1), e.dtype))
    return float(np.mean(log_sums[:, 0] - target_logits, dtype=np.float64)), e.reshape(logits.shape)


def softmax_in_place(x):  # [m, n] -> [m, 1]
    """log(sum(exp(x))) of each row, with x overwritten by softmax(x). The max is taken out first, so that exp
    cannot overflow."""
    top = x.max(axis=-1, keepdims=True)
    x -= top
    np.exp(x, out=x)
    sums = x.sum(axis=-1, keepdims=True)
    x /= sums
    return np.log(sums) + top


def cross_entropy_backward(probs, targets):  # [..., n_seq, n_vocab], [..., n_seq] -> [..., n_seq, n_vocab]
    """Undoes cross_entropy: dlogits = (softmax(logits) - onehot(target)) / n_rows, written over probs."""
    d, targets = rows(probs), targets.reshape(-1)
    d *= 1 / len(targets)
    d[np.arange(len(targets)), targets] -= 1 / len(targets)
    return probs


def loss_and_grads(inputs, targets, params, n_head, trained=None):  # [..., n_seq] x2 -> float, grads
    """The mean cross-entropy (nats) of predicting targets from inputs, and its gradient with respect to every
    parameter, as a dict shaped like params (same keys, shapes and dtype; A and B where adapters are, no scale).

    inputs, targets: token ids, [n_seq] or [n_batch, n_seq]; targets are usually the inputs shifted by one.
    trained: None, or the flat names of the tensors that train (see trained_names): then the gradients are
    {name: gradient} for exactly those, and only the work they need is done (see hidden_forward).
    Computes in params' dtype (float32, or float64 to check the gradients) and never writes into params.
    """
    inputs, targets = check_batch(inputs, targets, params)
    trained = check_trained(trained, params)
    logits, kept = gpt2_forward(inputs, **params, n_head=n_head, trained=trained)
    loss, probs = cross_entropy(logits, targets)
    del logits  # the same array as probs, and soon as the gradient
    grads = gpt2_backward(cross_entropy_backward(probs, targets), kept, inputs, **params, n_head=n_head,
                          trained=trained)
    return loss, picked(grads, trained)


def check_batch(inputs, targets, params):
    """inputs and targets as integer arrays, or a ValueError that says what is wrong with them."""
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    n_vocab, n_ctx = params["wte"].shape[0], params["wpe"].shape[0]
    if params["wte"].dtype not in (np.float32, np.float64):
        raise ValueError(f"params must be float32 or float64, not {params['wte'].dtype}")
    for name, ids in (("inputs", inputs), ("targets", targets)):
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{name} must be token ids (integers), not {ids.dtype}")
        if ids.ndim not in (1, 2) or ids.size == 0 or ids.shape[-1] > n_ctx:
            raise ValueError(f"{name} must be [n_seq] or [n_batch, n_seq] with n_batch >= 1 and 1 <= n_seq <= "
                             f"{n_ctx} (the context), not of shape {ids.shape}")
        if ids.size and not (0 <= ids.min() and ids.max() < n_vocab):
            raise ValueError(f"{name} must be token ids from 0 to {n_vocab - 1}, not {ids.min()} to {ids.max()}")
    if inputs.shape != targets.shape:
        raise ValueError(f"inputs {inputs.shape} and targets {targets.shape} must have the same shape")
    return inputs.astype(np.int64), targets.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Training less: the names of the tensors that train, LoRA adapters, frozen blocks


def named_arrays(tree, prefix=""):
    """{"wte": array, ..., "blocks/0/attn/c_attn/w": array, ...}: the arrays of a tree shaped like params by the
    flat names utils.flatten gives them (an adapter's scale is a number, not an array, and is left out)."""
    if isinstance(tree, (dict, list)):
        items = tree.items() if isinstance(tree, dict) else enumerate(tree)
        return {name: array for key, value in items for name, array in named_arrays(value, f"{prefix}{key}/").items()}
    return {prefix[:-1]: tree} if isinstance(tree, np.ndarray) else {}


def check_trained(trained, params):
    """trained as a set of names (None: every tensor trains), or a ValueError naming those params does not hold."""
    if trained is None:
        return None
    if isinstance(trained, str):
        raise ValueError(f"trained must be a collection of names, not the one string {trained!r}")
    unknown = sorted(map(str, set(trained) - named_arrays(params).keys()))
    if unknown:
        raise ValueError(f"params holds no tensor named {', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}"
                         " (names are like 'wte', 'ln_f/g', 'blocks/0/attn/c_attn/w': see trained_names)")
    return set(trained)


def picked(grads, trained):
    """The gradients as the caller asked: the tree shaped like params when every tensor trains, else
    {name: gradient} for exactly the trained names (a backward also makes a few cheap ones nobody asked for)."""
    return grads if trained is None else {name: g for name, g in named_arrays(grads).items() if name in trained}


def trained_names(params, train_blocks=None):
    """The flat names of the tensors to train, for loss_and_grads(trained=): with adapters in params (add_lora),
    their A's and B's alone; else with train_blocks N, every tensor of the last N blocks and ln_f; else every one.
    With both, the A's and B's of the last N blocks. wte and wpe never train with train_blocks: the tied wte's
    gradient includes its use as the input embedding, below every frozen block, which would take the backward
    down through all of them."""
    names, n_layer = named_arrays(params), len(params["blocks"])
    if train_blocks is not None and not (is_whole(train_blocks, 0) and train_blocks <= n_layer):
        raise ValueError(f"train_blocks must be a whole number from 0 to {n_layer} (the model's blocks), "
                         f"not {train_blocks!r}")
    lowest = 0 if train_blocks is None else n_layer - train_blocks
    lora = any(name.endswith("/A") for name in names)

    def chosen(name):
        block = int(name.split("/")[1]) if name.startswith("blocks/") else -1
        if lora:
            return name.endswith(("/A", "/B")) and block >= lowest
        return train_blocks is None or name.startswith("ln_f/") or block >= lowest
    return [name for name in names if chosen(name)]


def writable_trained(params, names):
    """(a tree like params whose named arrays are writable copies in one piece, every other array params' own;
    {name: copy}), for adamw to update in place: the trained tensors alone are copied, the frozen weights stay
    the loader's read-only views, and the trained ones stay in the tree the model reads."""
    tree, copies, names = tree_map(lambda leaf: leaf, params), {}, check_trained(names, params)  # new dicts, lists
    for name in (name for name in named_arrays(params) if name in names):  # in params' order
        *path, key = name.split("/")
        node = tree
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[key] = copies[name] = np.array(node[key], order="C")
    return tree, copies


LORA_TARGETS = {"c_attn": ("attn", "c_attn"), "attn.c_proj": ("attn", "c_proj"), "c_fc": ("mlp", "c_fc"),
                "mlp.c_proj": ("mlp", "c_proj")}  # add_lora's names for a block's linears


def add_lora(params, rank, alpha, targets=("c_attn",), blocks=None, rng=None):
    """A new params tree in which each targeted linear of the chosen blocks (None: all) holds a LoRA adapter
    (Hu et al.): {"w", "b", "A": [in, rank], "B": [rank, out], "scale": alpha / rank}, which lora_linear reads.
    A is drawn uniform in +-1/sqrt(in) (PyTorch's kaiming_uniform with a = sqrt(5), the start of Hugging Face's
    PEFT and of microsoft's loralib), B is 0, so the model starts as it was; both in w's dtype. rng: a
    np.random.Generator or a seed. targets: among "c_attn", "attn.c_proj", "c_fc", "mlp.c_proj". c_attn is
    adapted whole (queries, keys and values), as PEFT does for GPT-2, so that the adapters are PEFT's exactly;
    microsoft's MergedLinear adapts only the queries and values.
    The dicts are new and the arrays params' own: nothing is copied or written."""
    check_lora(params, rank, alpha, targets, blocks)
    rng, adapted = np.random.default_rng(rng), tree_map(lambda leaf: leaf, params)  # new dicts, the same leaves
    for i in range(len(params["blocks"])) if blocks is None else blocks:
        for part, name in (LORA_TARGETS[target] for target in targets):
            layer = adapted["blocks"][i][part][name]
            (n_in, n_out), bound = layer["w"].shape, 1 / math.sqrt(layer["w"].shape[0])
            layer.update(A=rng.uniform(-bound, bound, (n_in, rank)).astype(layer["w"].dtype),
                         B=np.zeros((rank, n_out), layer["w"].dtype), scale=alpha / rank)
    return adapted


def check_lora(params, rank, alpha, targets, blocks):
    """add_lora's arguments, or a ValueError that says what is wrong with them."""
    n_layer = len(params["blocks"])
    if not is_whole(rank, 1):
        raise ValueError(f"rank must be a whole number >= 1, not {rank!r}")
    if not (is_real(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a number > 0, not {alpha!r}")
    if isinstance(targets, str) or not targets or not set(targets) <= LORA_TARGETS.keys():
        raise ValueError(f"targets must be one or more of {', '.join(LORA_TARGETS)}, not {targets!r}")
    if blocks is not None and not all(is_whole(i, 0) and i < n_layer for i in blocks):
        raise ValueError(f"blocks must be numbers of blocks from 0 to {n_layer - 1}, not {blocks!r}")
    smallest = min(min(params["blocks"][0][part][name]["w"].shape) for part, name in map(LORA_TARGETS.get, targets))
    if rank > smallest:  # a rank above min(in, out) adds numbers, not rank
        raise ValueError(f"rank must be at most {smallest} (the smallest side of the adapted weights), not {rank}")
    for i in range(n_layer) if blocks is None else blocks:
        if any("A" in params["blocks"][i][part][name] for part, name in map(LORA_TARGETS.get, targets)):
            raise ValueError(f"block {i} already holds an adapter there: merge_lora first, or adapt other linears")


def merge_lora(params):
    """params without adapters: each adapted w becomes w + scale A B, computed in float64 and rounded once to w's
    dtype (to save a checkpoint, or to run gpt2.py's functions); every other array is params' own."""
    if isinstance(params, list):
        return [merge_lora(branch) for branch in params]
    if not isinstance(params, dict):
        return params
    if "A" not in params:
        return {key: merge_lora(value) for key, value in params.items()}
    w, A, B = (params[key].astype(np.float64) for key in ("w", "A", "B"))
    merged = {key: value for key, value in params.items() if key not in ("A", "B", "scale")}
    merged["w"] = (w + params["scale"] * (A @ B)).astype(params["w"].dtype)
    return merged


# ---------------------------------------------------------------------------------------------
# Tasks: a classifier head on the last token (GPT-1's recipe)


def classify_loss_and_grads(texts, labels, params, w, n_head, lm_weight=0.0, trained=None):  # -> loss, grads, dw
    """The mean cross-entropy of a classifier head w [n_embd, n_classes] on the final hidden state at each text's
    last token (gpt2.classify's probabilities), plus lm_weight times the language-model loss over the texts' own
    tokens (GPT-1's auxiliary objective: each position predicts the next token of its text, the mean over all such
    predictions of the batch, so a long text weighs more; GPT-1's code takes each text's mean, then the texts');
    and its gradients: grads as loss_and_grads gives them (shaped like params, or {name: gradient} for `trained`),
    and dw [n_embd, n_classes] (the head always trains).

    texts: 1 to n_ctx token ids each, right-padded with EOT into one batch (the causal mask keeps the padding from
    every real position); labels: a class index per text. With lm_weight 0 the vocabulary projection is never
    computed (most of a forward's cost at small sizes). Computes in params' dtype (w's must be the same) and
    writes none of its inputs.
    """
    batch, lengths, labels = check_texts(texts, labels, params, w, lm_weight)
    trained = check_trained(trained, params)
    a, kept = hidden_forward(batch, **params, n_head=n_head, trained=trained)  # [n_texts, n_seq, n_embd]
    loss, da, dw = head_loss_and_grads(a, lengths - 1, labels, w)
    dwte = None
    if lm_weight:
        lm_loss, da_lm, dwte = lm_loss_and_grads(a, batch, lengths, params["wte"], lm_weight, trains(trained, "wte"))
        loss, da = loss + lm_weight * lm_loss, np.add(da, da_lm, out=da)
    del a
    grads = hidden_backward(da, kept, batch, **params, n_head=n_head, trained=trained, dwte=dwte)
    return loss, picked(grads, trained), dw


def head_loss_and_grads(a, last, labels, w):  # [n, n_seq, n_embd], [n], [n], [n_embd, n_classes] -> loss, da, dw
    """The mean cross-entropy of logits = a[row, last[row]] w, and its gradients with respect to a and w: the
    head's backward (linear_backward), then the backward of reading one position per text (take_backward)."""
    at = (np.arange(len(last)), last)
    h = a[at]  # [n, n_embd]: each text's last position
    loss, probs = cross_entropy(linear(h, w), labels)
    dh, dw = linear_backward(cross_entropy_backward(probs, labels), h, w)
    return loss, take_backward(dh, a.shape, at), dw["w"]


def lm_loss_and_grads(a, batch, lengths, wte, weight, wte_trains):  # -> loss, da [n, n_seq, n_embd], dwte or None
    """The language-model loss of the padded batch [n, n_seq] of texts of these lengths: the mean cross-entropy of
    each real position but a text's last predicting the next token, logits = a wte^T there alone (the padding's are
    never computed). Returns it, and `weight` times its gradients with respect to a and (if it trains) wte."""
    at = np.nonzero(np.arange(batch.shape[1]) < lengths[:, None] - 1)  # (rows, positions) that predict a token
    if not len(at[0]):  # every text is one token long: nothing to predict
        return 0.0, np.zeros_like(a), None
    h, targets = a[at], batch[at[0], at[1] + 1]  # [n_predictions, n_embd], [n_predictions]
    loss, probs = cross_entropy(linear(h, wte.T), targets)
    dlogits = cross_entropy_backward(probs, targets)
    dlogits *= weight
    dwte = dlogits.T @ h if wte_trains else None  # the output projection's part of wte's gradient
    return loss, take_backward(dlogits @ wte, a.shape, at), dwte


def check_texts(texts, labels, params, w, lm_weight):
    """texts right-padded with EOT into one batch [n_texts, longest], their lengths, and the labels as an array;
    or a ValueError that says what is wrong with them."""
    texts, labels, n_ctx = [np.asarray(text) for text in texts], np.asarray(labels), len(params["wpe"])
    if not texts or any(t.ndim != 1 or not 0 < len(t) <= n_ctx or not np.issubdtype(t.dtype, np.integer)
                        for t in texts):
        raise ValueError(f"texts must be one or more lists of 1 to {n_ctx} (the context) token ids each")
    batch = pad_right(texts)
    check_batch(batch, batch, params)  # token ids within the vocabulary, params float32 or float64
    n_embd, dtype = params["wte"].shape[1], params["wte"].dtype
    if not (isinstance(w, np.ndarray) and w.ndim == 2 and len(w) == n_embd and w.dtype == dtype):
        raise ValueError(f"w must be a {dtype} array [n_embd, n_classes] = [{n_embd}, ...] (params' dtype), not "
                         f"{getattr(w, 'dtype', type(w).__name__)} of shape {np.shape(w)}")
    if not (labels.shape == (len(texts),) and np.issubdtype(labels.dtype, np.integer)
            and 0 <= labels.min() and labels.max() < w.shape[1]):
        raise ValueError(f"labels must be one class index from 0 to {w.shape[1] - 1} per text ({len(texts)})")
    if not (is_real(lm_weight) and lm_weight >= 0):
        raise ValueError(f"lm_weight must be a number >= 0, not {lm_weight!r}")
    return batch, np.array([len(text) for text in texts]), labels.astype(np.int64)


def tree_map(fn, *trees):
    """fn applied to the arrays at the same place in trees shaped like params, as a tree of that shape."""
    if isinstance(trees[0], dict):
        return {key: tree_map(fn, *(tree[key] for tree in trees)) for key in trees[0]}
    if isinstance(trees[0], list):
        return [tree_map(fn, *branches) for branches in zip(*trees, strict=True)]
    return fn(*trees)


def leaves(tree):
    """The arrays of a tree shaped like params, in one fixed order (keys sorted, blocks in turn)."""
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in leaves(tree[key])]
    if isinstance(tree, list):
        return [leaf for branch in tree for leaf in leaves(branch)]
    return [tree]


def writable_copy(params):
    """params as new writable arrays in one piece each, for training in place (the loader's arrays are
    read-only views of the checkpoint)."""
    return tree_map(lambda p: np.array(p, order="C"), params)


def adamw_state(params):
    """AdamW's state before the first step: the step count and two moments shaped like params, all zero.
    Only arrays and an int, so that saving and loading it makes a resumed run repeat exactly."""
    return {"step": 0, "m": tree_map(lambda p: np.zeros(p.shape, p.dtype), params),
            "v": tree_map(lambda p: np.zeros(p.shape, p.dtype), params)}


ADAMW_CHUNK = 1 << 16  # numbers of a tensor updated at once: p, g, m, v and the temporaries stay in the CPU cache


def global_norm(grads):
    """sqrt of the sum of every gradient's squares: the length of all gradients as one vector. Summed in
    float64 a piece at a time (a float32 sum over millions of numbers would be off in the 5th digit)."""
    total = 0.0
    for g in leaves(grads):
        g = g.reshape(-1)
        for i in range(0, len(g), ADAMW_CHUNK):
            part = g[i:i + ADAMW_CHUNK].astype(np.float64)
            total += float(part @ part)
    return math.sqrt(total)


def adamw(params, grads, state, lr, weight_decay=0.0, max_norm=None, beta1=0.9, beta2=0.999, eps=1e-8):
    """One AdamW step (Loshchilov and Hutter, "Decoupled weight decay regularization"), in place on params and
    state. Returns the gradients' global norm before clipping.

    With t = state["step"] + 1, the gradients first clipped to a global norm of at most max_norm
    (g *= max_norm / (norm + 1e-6) when norm > max_norm, as PyTorch's clip_grad_norm_), each parameter p does
        m = beta1 m + (1 - beta1) g            v = beta2 v + (1 - beta2) g^2
        p = p - lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) - lr weight_decay p
    where the weight decay applies only to the matrices and embeddings (ndim >= 2), not to biases and
    layer-norm gains, as nanoGPT does. params must be writable (see writable_copy).
    """
    if not all(p.flags.writeable and p.flags.c_contiguous for p in leaves(params)):
        raise ValueError("adamw updates params in place and needs writable arrays in one piece: give it "
                         "writable_copy(params) (the loader's arrays are read-only views of the checkpoint)")
    norm = global_norm(grads)
    clip = max_norm / (norm + 1e-6) if max_norm is not None and norm > max_norm else 1.0
    state["step"] += 1
    t = state["step"]
    for p, g, m, v in zip(leaves(params), leaves(grads), leaves(state["m"]), leaves(state["v"]), strict=True):
        decay = weight_decay if p.ndim >= 2 else 0.0
        p, g, m, v = p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)  # views: in place
        for i in range(0, len(p), ADAMW_CHUNK):
            part = slice(i, i + ADAMW_CHUNK)
            adamw_update(p[part], g[part], m[part], v[part], lr, decay, clip, beta1 ** t, beta2 ** t, beta1, beta2,
                         eps)
    return norm


def adamw_update(p, g, m, v, lr, decay, clip, beta1_t, beta2_t, beta1, beta2, eps):  # [n] x4, in place
    """adamw's update of one piece of one parameter; beta1_t, beta2_t are beta1^t, beta2^t."""
    g = g * clip
    m *= beta1
    m += (1 - beta1) * g
    g *= g
    v *= beta2
    v += (1 - beta2) * g
    step = np.divide(v, 1 - beta2_t, out=g)
    np.sqrt(step, out=step)
    step += eps
    np.divide(m, step, out=step)  # m / (sqrt(v / (1 - beta2^t)) + eps)
    if decay:
        p *= 1 - lr * decay
    step *= lr / (1 - beta1_t)
    p -= step


# ---------------------------------------------------------------------------------------------
# Fine-tuning on a text: random windows of it, a step, the validation loss


def get_batch(tokens, batch_size, seq_len, rng):  # [n_tokens] -> inputs, targets: [batch_size, seq_len] each
    """batch_size windows of seq_len + 1 tokens, each starting at a random place of the text: a window's
    first seq_len tokens are the inputs and its last seq_len the targets, so every position predicts the next."""
    starts = rng.integers(0, len(tokens) - seq_len, batch_size)  # the last window ends on the last token
    windows = tokens[starts[:, None] + np.arange(seq_len + 1)]
    return windows[:, :-1], windows[:, 1:]


def learning_rate(step, lr, warmup, schedule="constant", min_lr=0.0, decay_steps=None):
    """The rate of the step-th step (from 1): rising linearly to lr over the first `warmup` steps, then
    "constant": lr from there on;
    "cosine": falling from lr to min_lr along half a cosine, from the warmup's end to step decay_steps, and min_lr
    after it (nanoGPT's schedule, its lr_decay_iters being decay_steps).
    Neither depends on how many steps the run takes in the end, so a run that goes on later is the same run."""
    if warmup and step < warmup:
        return lr * step / warmup
    if schedule == "constant":
        return lr
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup) / (decay_steps - warmup)  # 0 at the warmup's end, 1 at decay_steps
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def train_step(params, state, tokens, rng, n_head, batch_size, seq_len, lr, accumulate=1, weight_decay=0.0,
               max_norm=None):
    """One AdamW step on the mean gradient of `accumulate` batches drawn from tokens, in place on params
    and state. Returns (the batches' mean loss, the gradients' global norm before clipping).
    FloatingPointError if either is not finite: params must then not be used (nor saved)."""
    loss, grads = mean_of(loss_and_grads(*get_batch(tokens, batch_size, seq_len, rng), params, n_head)
                          for _ in range(accumulate))
    return loss, adamw_step(params, grads, state, loss, lr, weight_decay, max_norm)


def mean_of(results):  # (loss, grads) of each batch -> (mean loss, mean grads)
    """The mean loss and gradients of several batches (gradient accumulation), summed into the first batch's
    gradients as each batch comes, so that only two sets of gradients are ever held at once."""
    n, loss, grads = 0, 0.0, None
    for batch_loss, batch_grads in results:
        n, loss = n + 1, loss + batch_loss
        grads = batch_grads if grads is None else tree_map(lambda g, h: np.add(g, h, out=g), grads, batch_grads)
    if n > 1:
        tree_map(lambda g: np.multiply(g, 1 / n, out=g), grads)
    return loss / n, grads


def adamw_step(params, grads, state, loss, lr, weight_decay=0.0, max_norm=None):
    """adamw, then a FloatingPointError if the loss or the gradients' norm is not finite (params must then not be
    used, nor saved). Returns the norm."""
    norm = adamw(params, grads, state, lr, weight_decay, max_norm)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise FloatingPointError(f"the loss is {loss} and the gradients' norm {norm}")
    return norm


def eval_windows(tokens, seq_len, max_windows):  # [n_tokens] -> [n_windows, seq_len + 1]
    """Windows of seq_len + 1 tokens side by side over the text (overlapping by one token, so that every
    token but the first is predicted once), at most max_windows of them, spread evenly over the text:
    the same windows at every evaluation, so that the validation losses of a run compare."""
    starts = np.arange(0, len(tokens) - seq_len, seq_len)
    if len(starts) > max_windows:
        starts = starts[np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
    return tokens[starts[:, None] + np.arange(seq_len + 1)]


def evaluate(windows, params, n_head, batch_size):  # [n_windows, seq_len + 1] -> mean loss
    """The mean cross-entropy over every position of the windows, a batch of them at a time, forward only."""
    total = 0.0
    for i in range(0, len(windows), batch_size):
        batch = windows[i:i + batch_size]
        loss, _ = cross_entropy(gpt2(batch[:, :-1], **params, n_head=n_head), batch[:, 1:])
        total += loss * len(batch)
    return total / len(windows)


if __name__ == "__main__":  # python train.py --data my_text.txt: the command line lives in cli.py
    from cli import train_command

    train_command()
