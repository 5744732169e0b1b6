"""The GPT-2 model in NumPy: token ids to next-token logits, and the generation and scoring that run it.

Shapes: n_seq positions, n_embd model width, n_head heads of d_head = n_embd // n_head each,
n_vocab tokens. Everything runs in the weights' dtype: float32, as OpenAI's checkpoints are
stored (train.py's gradient checks run the same functions in float64). Read each shape as one
sequence; a leading `...` means the function also takes a batch of sequences in front of it
(e.g. [n_batch, n_seq, n_embd]), which is how several samples share one read of the weights.
"""
import math

import numpy as np

EOT = 50256  # <|endoftext|>: GPT-2 saw it between documents, so it also marks "start of text"


# -2 sqrt(2/pi) for gelu, once; a Python float, so float32 arrays stay float32 when they meet it
MINUS_TWO_SQRT_2_OVER_PI = -2 * math.sqrt(2 / math.pi)


def gelu(x):  # [..., n] -> [..., n]
    """Gaussian error linear unit, in the tanh approximation GPT-2 was trained with:
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    Computed as x / (1 + exp(-2 sqrt(2/pi) (x + 0.044715 x^3))), the same function since
    1 + tanh(y) = 2 / (1 + exp(-2y)), in place in one new array (speed: a prompt's [n_seq, 3072]
    hidden layer is the largest elementwise work in the model, and exp costs about half of tanh).
    """
    z = x * x
    z *= 0.044715 * MINUS_TWO_SQRT_2_OVER_PI
    z += MINUS_TWO_SQRT_2_OVER_PI
    z *= x  # -2 sqrt(2/pi) (x + 0.044715 x^3)
    np.minimum(z, 80, out=z)  # exp(80) is finite in float32 and x / it is 0 to float precision anyway
    np.exp(z, out=z)
    z += 1
    return np.divide(x, z, out=z)


def softmax(x, out=None):
    """Along the last axis. Subtracting the max first keeps exp from overflowing.
    out=x overwrites x instead of making a new array, for the big attention scores."""
    e = np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e


def layer_norm(x, g, b, eps=1e-5):  # [..., n_embd] -> [..., n_embd]
    """Normalize each position to mean 0 and variance 1, then scale by g and shift by b."""
    x = x - x.sum(axis=-1, keepdims=True) / x.shape[-1]  # (sum / n: np.mean costs more calls for one row)
    variance = np.square(x).sum(axis=-1, keepdims=True) / x.shape[-1]
    x /= np.sqrt(variance + eps)
    x *= g
    x += b
    return x


def linear(x, w, b=None):  # [..., m, in] @ [in, out] + [out] -> [..., m, out]
    """x w + b. The batch and positions go through as one [rows, in] matrix (speed: @ with a
    leading batch axis would multiply by w once per sequence, reading the weights each time)."""
    y = x.reshape(-1, x.shape[-1]) @ w
    if b is not None:
        y += b  # in place: no second [m, out] array
    return y.reshape(*x.shape[:-1], w.shape[-1])


def ffn(x, c_fc, c_proj):  # [..., n_seq, n_embd] -> [..., n_seq, n_embd]
    """Position-wise feed-forward network: widen 4x, gelu, project back."""
    return linear(gelu(linear(x, **c_fc)), **c_proj)


def attention(q, k, v, mask=None):  # [..., n_q, d_head], [..., n_k, d_head] x2, [n_q, n_k] or None
    """softmax(q k^T / sqrt(d_head) + mask) v for every head at once.

    Returns the output [..., n_q, d_head] and the attention weights [..., n_q, n_k].
    mask=None: every query may see every key (one new token after the cache).
    """
    scores = (q * (1 / math.sqrt(q.shape[-1]))) @ k.swapaxes(-1, -2)  # scaling q: fewer numbers than the scores
    if mask is not None:
        scores += mask
    weights = softmax(scores, out=scores)
    return weights @ v, weights


def causal_mask(n_q, n_k):  # -> [n_q, n_k]
    """-1e10 where a query would see a later position. The queries are the last n_q of n_k
    positions (n_q < n_k when earlier keys come from a cache)."""
    return np.triu(np.full((n_q, n_k), -1e10, dtype=np.float32), k=n_k - n_q + 1)


QUERY_BLOCK = 128  # rows of queries attended at once in a long prompt (see causal_attention)


def split_heads(qkv, n_head):  # [..., n_seq, 3 n_embd] -> q, k, v: [..., n_head, n_seq, d_head] each
    """The c_attn output cut into queries, keys and values, each cut into heads (views, no copy)."""
    qkv = qkv.reshape(*qkv.shape[:-1], 3, n_head, qkv.shape[-1] // (3 * n_head))
    return np.moveaxis(qkv, (-3, -2), (0, -3))


def causal_attention(q, k, v, block=None, kept=None):  # [..., n_head, n_q, d_head], [..., n_head, n_k, d_head] x2
    """attention() where the queries are the last n_q of n_k positions and each sees the keys up
    to its own position. Returns the heads side by side, [..., n_q, n_head, d_head].

    The queries are attended `block` (default QUERY_BLOCK) at a time, each block against the keys
    up to its own last position (speed: most of the masked half of the [n_head, n_q, n_k] scores is
    never computed, and a block's scores stay in the CPU cache; exp over them was the largest cost
    of a prompt after the matrix products).
    kept: None, or a list that gets each block's attention weights [..., n_head, block, seen]
    (to plot them, or for the backward pass).
    """
    *batch, n_head, n_q, d_head = q.shape
    n_k, block = k.shape[-2], block or QUERY_BLOCK
    heads = np.empty((*batch, n_q, n_head, d_head), q.dtype)  # q's dtype: float64 params compute in float64
    for start in range(0, n_q, block):
        stop = min(start + block, n_q)
        seen = n_k - n_q + stop  # keys up to the block's last query
        mask = causal_mask(stop - start, seen) if stop - start > 1 else None
        out, weights = attention(q[..., start:stop, :], k[..., :seen, :], v[..., :seen, :], mask)
        heads[..., start:stop, :, :] = out.swapaxes(-3, -2)
        if kept is not None:
            kept.append(weights)
    return heads


def mha(x, c_attn, c_proj, n_head, cache=None, return_weights=False):  # [..., n_seq, n_embd] -> same
    """Multi-head causal self-attention.

    cache: None, or one block's entry of kv_cache(): the keys and values of x's positions are
    written into its next free slots, and x attends to every position filled before it, so after
    the prompt only the newest token has to be computed.
    return_weights: also return the attention weights [..., n_head, n_seq, n_k], e.g. to plot them.
    """
    *batch, n_seq, n_embd = x.shape
    q, k, v = split_heads(linear(x, **c_attn), n_head)  # [..., n_head, n_seq, d_head] each
    if cache is not None:  # in place: no copy of the earlier keys and values
        n_past, n_k = cache["n"], cache["n"] + n_seq
        cache["k"][..., n_past:n_k, :] = k
        cache["v"][..., n_past:n_k, :] = v
        k, v, cache["n"] = cache["k"][..., :n_k, :], cache["v"][..., :n_k, :], n_k
    kept = [] if return_weights else None
    heads = causal_attention(q, k, v, n_seq if return_weights else None, kept)  # all at once to return the weights
    out = linear(heads.reshape(*batch, n_seq, n_embd), **c_proj)
    return (out, kept[0]) if return_weights else out


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head, cache=None):  # [..., n_seq, n_embd] -> same
    """Pre-norm residual block: attention, then the feed-forward network."""
    x = x + mha(layer_norm(x, **ln_1), **attn, n_head=n_head, cache=cache)
    x = x + ffn(layer_norm(x, **ln_2), **mlp)
    return x


def kv_cache(params, n_head, n_positions, n_batch=None):
    """An empty KV cache for gpt2(..., cache=), with room for n_positions positions (at most n_ctx).

    A list of one dict per block: {"k": [n_head, n_positions, d_head], "v": the same, "n": 0};
    with n_batch, one row per sequence of a batch: [n_batch, n_head, n_positions, d_head].
    Each call of gpt2 writes its inputs' keys and values into slots n, n+1, ... and advances n;
    attention reads only the slots filled so far, so the rest may hold anything (np.empty: pages
    of memory are only taken as they are filled).
    """
    if n_positions > len(params["wpe"]):
        raise ValueError(f"a cache of {n_positions} positions is larger than the model's context "
                         f"({len(params['wpe'])} positions)")
    shape = (*(() if n_batch is None else (n_batch,)), n_head, n_positions, params["wte"].shape[-1] // n_head)
    return [{"k": np.empty(shape, np.float32), "v": np.empty(shape, np.float32), "n": 0} for _ in params["blocks"]]


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head, cache=None, last_only=False,
         head=None):  # [..., n_seq] -> [..., n_seq, n_vocab]
    """Logits for the token after each input position.

    cache: None, or a kv_cache() kept by the caller: then `inputs` are only the tokens the cache
    has not seen, and they are placed after the cached positions.
    last_only: project only the last position onto the vocabulary, all that generation needs.
    head: None, or a matrix [n_embd, n_out] that the final hidden state is projected onto instead
    of the vocabulary (a classifier's, see classify): then the result is [..., n_seq, n_out].
    """
    inputs = np.asarray(inputs, dtype=np.int64)  # (an empty list would otherwise be float64)
    n_seq, n_past = inputs.shape[-1], cache[0]["n"] if cache else 0
    if n_past + n_seq > len(wpe):
        raise ValueError(f"positions {n_past} to {n_past + n_seq - 1} do not fit the model's context of "
                         f"{len(wpe)} positions")
    if cache and n_past + n_seq > cache[0]["k"].shape[-2]:
        raise ValueError(f"the cache holds {cache[0]['k'].shape[-2]} positions; {n_past} are filled "
                         f"and {n_seq} more came")
    x = wte[inputs] + wpe[n_past:n_past + n_seq]  # token + position embeddings [..., n_seq, n_embd]
    for block, block_cache in zip(blocks, cache or [None] * len(blocks), strict=True):
        x = transformer_block(x, **block, n_head=n_head, cache=block_cache)
    if last_only:
        x = x[..., -1:, :]
    return linear(layer_norm(x, **ln_f), wte.T if head is None else head)  # the output projection reuses wte


def sample(logits, temperature=0.0, top_k=None, top_p=None, rng=None):  # [n_vocab] -> token id
    """The argmax at temperature 0. Otherwise a draw from softmax(logits / temperature) over the
    top_k highest logits, then over the smallest of those whose probability reaches top_p
    (ties keep the lower id first)."""
    if temperature == 0:
        return int(np.argmax(logits))
    rng = rng or np.random.default_rng()
    ids = np.arange(len(logits))
    if top_k is not None:  # a partition finds the candidates much faster than sorting them all
        ids = np.flatnonzero(logits >= np.partition(logits, -top_k)[-top_k]) if top_k < len(ids) else ids
    if top_k is not None or top_p is not None:
        ids = ids[np.argsort(-logits[ids], kind="stable")[:top_k]]  # most likely first, ties by id
    with np.errstate(over="ignore"):  # float64 for exact sums; a tiny temperature sends all but the max to -inf
        probs = softmax((logits[ids].astype(np.float64) - logits.max()) / temperature)
    if top_p is not None and top_p < 1:
        n_keep = int(np.searchsorted(np.cumsum(probs), top_p)) + 1
        ids, probs = ids[:n_keep], probs[:n_keep] / probs[:n_keep].sum()
    return int(rng.choice(ids, p=probs))


def stream_tokens(inputs, params, n_head, n_tokens_to_generate, temperature, top_k, top_p, seed, stop_id):
    """The generator behind `stream`, its arguments already checked."""
    rng = np.random.default_rng(seed)  # a generator of our own: no global random state
    cache = kv_cache(params, n_head, len(inputs) + n_tokens_to_generate - 1)  # the last token is not fed back
    new = list(inputs)  # the whole prompt goes in once; after that, only the latest token
    for _ in range(n_tokens_to_generate):
        logits = gpt2(new, **params, n_head=n_head, cache=cache, last_only=True)[-1]
        token = sample(logits, temperature, top_k, top_p, rng)
        if token == stop_id:
            return
        yield token
        new = [token]


def stream(inputs, params, n_head, n_tokens_to_generate, temperature=0.0, top_k=None, top_p=None,
           seed=None, stop_id=EOT):
    """Like `generate`, but yields each new id as soon as it is chosen. The arguments are checked
    at the call, not at the first id."""
    check_generation(inputs, params, n_tokens_to_generate, temperature, top_k, top_p, seed)
    return stream_tokens(inputs, params, n_head, n_tokens_to_generate, temperature, top_k, top_p, seed, stop_id)


def prompt_into_rows(inputs, params, n_head, cache):
    """Run the prompt once through row 0 of a batched kv_cache and copy its keys and values into
    every other row. Returns the last position's logits [n_vocab]."""
    first_row = [{"k": c["k"][0], "v": c["v"][0], "n": 0} for c in cache]  # views of the cache's row 0
    logits = gpt2(list(inputs), **params, n_head=n_head, cache=first_row, last_only=True)[-1]
    for c in cache:
        c["k"][1:, :, :len(inputs)] = c["k"][:1, :, :len(inputs)]
        c["v"][1:, :, :len(inputs)] = c["v"][:1, :, :len(inputs)]
        c["n"] = len(inputs)
    return logits


def keep_rows(cache, going):
    """Move the cache rows listed in `going` to the top and drop the rest: a copy when rows end,
    none per step."""
    for c in cache:
        c["k"][:len(going), :, :c["n"]] = c["k"][going, :, :c["n"]]
        c["v"][:len(going), :, :c["n"]] = c["v"][going, :, :c["n"]]
        c["k"], c["v"] = c["k"][:len(going)], c["v"][:len(going)]


def generate_many(inputs, params, n_head, n_tokens_to_generate, n_samples, temperature=0.0, top_k=None,
                  top_p=None, seed=None, stop_id=EOT, progress=None):
    """n_samples lists of ids continuing `inputs`, sampled side by side as one batch.

    The prompt goes through the model once; its keys and values are then copied into every row of
    a kv_cache(n_batch=n_samples), and each step feeds the rows' latest tokens together, so one
    read of the weights serves every sample. The rows draw from one generator seeded by `seed`.
    A row that draws stop_id ends there (its list stops before it) and leaves the batch.
    progress: wraps the steps, e.g. tqdm, to show how far generation has got.
    """
    check_n_samples(n_samples, temperature)
    check_generation(inputs, params, n_tokens_to_generate, temperature, top_k, top_p, seed)
    rng = np.random.default_rng(seed)
    samples = [[] for _ in range(n_samples)]
    if n_tokens_to_generate == 0:
        return samples
    cache = kv_cache(params, n_head, len(inputs) + n_tokens_to_generate - 1, n_batch=n_samples)
    logits = np.broadcast_to(prompt_into_rows(inputs, params, n_head, cache), (n_samples, len(params["wte"])))
    rows = list(range(n_samples))  # the sample each row of the batch belongs to
    for step in (progress or iter)(range(n_tokens_to_generate)):
        tokens = [sample(row_logits, temperature, top_k, top_p, rng) for row_logits in logits]
        going = [i for i, token in enumerate(tokens) if token != stop_id]
        for i in going:
            samples[rows[i]].append(tokens[i])
        if len(going) < len(rows):
            rows, tokens = [rows[i] for i in going], [tokens[i] for i in going]
            keep_rows(cache, going)
        if not rows or step == n_tokens_to_generate - 1:
            break
        logits = gpt2(np.array(tokens)[:, None], **params, n_head=n_head, cache=cache, last_only=True)[:, -1]
    return samples


def generate(inputs, params, n_head, n_tokens_to_generate, temperature=0.0, top_k=None, top_p=None,
             seed=None, stop_id=EOT, n_samples=None):
    """The ids of up to n_tokens_to_generate tokens that follow `inputs`, as a list.

    Greedy by default; see `sample` for the rest. Stops before stop_id (None: never stop).
    n_samples=N: N such lists, sampled side by side (see `generate_many`).
    """
    if n_samples is not None:
        return generate_many(inputs, params, n_head, n_tokens_to_generate, n_samples, temperature, top_k, top_p,
                             seed, stop_id)
    return list(stream(inputs, params, n_head, n_tokens_to_generate, temperature, top_k, top_p, seed, stop_id))


def log_softmax_at(logits, ids):  # [n, n_vocab], [n] -> [n]
    """log softmax(logits[i])[ids[i]] for each row i, in float64 for exact sums. A few rows at a
    time: a float64 copy of 1024 rows of logits would take 400 MB."""
    out = np.empty(len(ids))
    for i in range(0, len(ids), 64):
        rows = logits[i:i + 64].astype(np.float64)
        rows -= rows.max(axis=-1, keepdims=True)
        out[i:i + 64] = rows[np.arange(len(rows)), ids[i:i + 64]] - np.log(np.exp(rows).sum(axis=-1))
    return out


def score(inputs, params, n_head, stride=None, progress=None):  # [n_seq] -> [n_seq]
    """Log-probability of each token given the ones before it. The first token is scored after
    <|endoftext|>, the way GPT-2 saw documents begin. Sum for the total; exp(-mean) is perplexity.

    A text of up to n_ctx tokens takes one forward pass over [EOT] + inputs[:-1]. A longer one is
    read in windows of n_ctx tokens of [EOT] + inputs, the k-th starting at k * stride (default
    n_ctx // 2) and the last one cut short at the end of the text. Each window's inputs predict
    their next tokens, and each window scores only the tokens after the end of the one before, so
    every token is scored once, and each one after the first window sees more than n_ctx - stride
    tokens before it. stride = n_ctx gives disjoint windows (fastest, least context); stride = 1
    gives every token n_ctx tokens of context at one pass per token. A text of N > n_ctx tokens
    takes 1 + ceil((N - n_ctx) / stride) passes.
    progress: wraps the windows' start positions, e.g. tqdm, to show how far scoring has got.
    """
    n_ctx = len(params["wpe"])
    stride = n_ctx // 2 if stride is None else stride
    check_stride(stride, n_ctx)
    inputs = list(inputs)
    if not inputs:
        return np.zeros(0)
    text = [EOT] + inputs  # inputs[i] is text[i + 1], predicted from the window's tokens before it
    log_probs, n_done = [], 0
    for start in (progress or iter)(range(0, max(len(inputs) - n_ctx, 0) + stride, stride)):
        end = min(start + n_ctx, len(inputs))
        logits = gpt2(text[start:end], **params, n_head=n_head)[n_done - start:]
        log_probs.append(log_softmax_at(logits, inputs[n_done:end]))
        n_done = end
    return np.concatenate(log_probs)


def length_batches(lengths, max_rows, max_positions):
    """Indices into `lengths` grouped into batches, shortest first: each batch holds at most
    max_rows items and, with every item padded to its longest, at most max_positions positions."""
    batches, batch = [], []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batch and (len(batch) == max_rows or (len(batch) + 1) * lengths[i] > max_positions):
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch] if batch else batches


def pad_right(ids):  # n_rows lists of ids -> [n_rows, the longest]
    """Lists of token ids of different lengths as one batch, each right-padded with EOT. The causal mask makes
    the padding exact: no position sees the ones after it."""
    batch = np.full((len(ids), max(map(len, ids), default=0)), EOT)
    for row, row_ids in enumerate(ids):
        batch[row, :len(row_ids)] = row_ids
    return batch


def score_many(texts, params, n_head, stride=None, max_rows=64, max_positions=512, progress=None):
    """`score` of each text in a list of token-id lists, as a list of arrays, computed in batches.

    The texts go by length, the shortest first, so that texts of about one length share a batch,
    and each batch's contexts are right-padded to its longest: the causal mask makes the padding
    exact, as no position sees the ones after it. A batch holds at most max_rows texts and
    max_positions positions in all (its logits take max_positions x n_vocab floats: 100 MB at 512).
    Texts longer than the context are scored alone, in score's windows of `stride`.
    progress: wraps the batches, e.g. tqdm, to show how far scoring has got.
    """
    texts, n_ctx = [list(text) for text in texts], len(params["wpe"])
    if stride is not None:
        check_stride(stride, n_ctx)
    results = [score(text, params, n_head, stride) if not 0 < len(text) <= n_ctx else None for text in texts]
    short = [i for i, result in enumerate(results) if result is None]
    for batch in (progress or iter)(length_batches([len(texts[i]) for i in short], max_rows, max_positions)):
        batch = [short[j] for j in batch]
        contexts = pad_right([[EOT] + texts[i][:-1] for i in batch])  # [n_rows, n_seq]
        logits = gpt2(contexts, **params, n_head=n_head)  # [n_rows, n_seq, n_vocab]
        for row, i in enumerate(batch):
            results[i] = log_softmax_at(logits[row, :len(texts[i])], texts[i])
    return results


def classify(texts, params, w, n_head, max_rows=64, max_positions=2048, progress=None):  # -> [n_texts, n_classes]
    """Class probabilities (float64) of each text of a list of token-id lists, from a classifier head
    w [n_embd, n_classes] on the final hidden state at the text's last token: GPT-1's recipe, and the position
    Hugging Face's GPT2ForSequenceClassification reads. No <|endoftext|> is added before or after a text.

    Each text holds 1 to n_ctx tokens (a longer one is a ValueError: cut it first). The texts go in batches by
    length, right-padded (see score_many, and pad_right): a text's probabilities do not depend on its batch.
    The head's logits take n_classes numbers a position, not n_vocab, so a batch may hold more positions.
    progress: wraps the batches, e.g. tqdm.
    """
    texts, n_ctx = [list(text) for text in texts], len(params["wpe"])
    if np.ndim(w) != 2 or len(w) != params["wte"].shape[1]:
        raise ValueError(f"the head must be [n_embd, n_classes] = [{params['wte'].shape[1]}, ...], "
                         f"not of shape {np.shape(w)}")
    for i, text in enumerate(texts):
        if not 0 < len(text) <= n_ctx:
            raise ValueError(f"text {i} has {len(text)} tokens; a text to classify must have 1 to {n_ctx} "
                             "(the context): cut it first")
    probs = np.empty((len(texts), w.shape[1]))
    for batch in (progress or iter)(length_batches([len(text) for text in texts], max_rows, max_positions)):
        last = np.array([len(texts[i]) for i in batch]) - 1
        logits = gpt2(pad_right([texts[i] for i in batch]), **params, n_head=n_head, head=w)  # [n_rows, n_seq, n_out]
        probs[batch] = softmax(logits[np.arange(len(batch)), last].astype(np.float64))
    return probs


def score_choices(inputs, choices, params, n_head):  # [n_prompt], n_choices lists of ids -> n_choices arrays
    """Each choice's per-token log-probabilities (float64) as the continuation of the prompt `inputs`: sum them
    for a choice's total, for zero- and few-shot tasks (the likeliest answer has the highest).

    The prompt goes through the model once; its keys and values are copied into every row of a batched
    kv_cache, one row per choice (see prompt_into_rows), and the choices then go through it as one batch,
    right-padded with EOT, each fed its tokens but the last. A choice's first token is predicted by the
    prompt's last position. So n choices cost about one forward pass over the prompt and the longest choice.
    """
    inputs, choices = list(inputs), [list(choice) for choice in choices]
    check_choices(inputs, choices, len(params["wpe"]))
    fed = pad_right([choice[:-1] for choice in choices])  # [n_choices, longest - 1]
    cache = kv_cache(params, n_head, len(inputs) + fed.shape[1], n_batch=len(choices))
    first = prompt_into_rows(inputs, params, n_head, cache)[None]  # [1, n_vocab]
    no_rows = np.empty((len(choices), 0, first.shape[1]), first.dtype)  # every choice one token long
    after = gpt2(fed, **params, n_head=n_head, cache=cache) if fed.shape[1] else no_rows  # [n_choices, ., n_vocab]
    return [log_softmax_at(np.concatenate([first, after[row, :len(choice) - 1]]), choice)
            for row, choice in enumerate(choices)]


# ---------------------------------------------------------------------------------------------
# The checks below raise a plain ValueError before any work is done. `flag` is how a name is
# written in the message: "" in Python, "--" when the command line checks its flags with them.

def is_whole(x, least):
    """Whether x is a whole number >= least (True and False are not numbers here)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= least


def is_real(x):
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x)


def check_whole(x, name, least):
    if not is_whole(x, least):
        raise ValueError(f"{name} must be a whole number >= {least}, not {x!r}")


def check_sampling(n_tokens_to_generate, temperature, top_k, top_p, seed, flag=""):
    check_whole(n_tokens_to_generate, f"{flag}n_tokens_to_generate", 0)
    if not (is_real(temperature) and temperature >= 0):
        raise ValueError(f"{flag}temperature must be a number >= 0 (0 is greedy), not {temperature!r}")
    if top_k is not None:
        check_whole(top_k, f"{flag}top_k", 1)
    if top_p is not None and not (is_real(top_p) and 0 < top_p <= 1):
        raise ValueError(f"{flag}top_p must be a number in (0, 1], not {top_p!r}")
    if seed is not None:
        check_whole(seed, f"{flag}seed", 0)


def check_n_samples(n_samples, temperature, flag=""):
    check_whole(n_samples, f"{flag}n_samples", 1)
    if n_samples > 1 and temperature == 0:
        raise ValueError(f"{n_samples} samples at temperature 0 would all be the same greedy text: "
                         f"set {flag or 'a '}temperature (e.g. 1) to sample")


def check_generation(inputs, params, n_tokens_to_generate, temperature, top_k, top_p, seed):
    """The sampling settings, and that the prompt and the new tokens fit the context: the model
    is fed the prompt and every new token but the last, so n_ctx tokens of prompt may get one."""
    check_sampling(n_tokens_to_generate, temperature, top_k, top_p, seed)
    if len(inputs) == 0:
        raise ValueError("inputs must hold at least one token; [EOT] starts from nothing, as GPT-2 does")
    n_ctx, n_fed = len(params["wpe"]), len(inputs) + max(n_tokens_to_generate - 1, 0)
    if n_fed > n_ctx:
        raise ValueError(f"the prompt is {len(inputs)} tokens and {n_tokens_to_generate} more were asked for, "
                         f"but the model sees at most {n_ctx} (the prompt and every new token but the last): "
                         "shorten the prompt or generate fewer tokens")


def check_stride(stride, n_ctx=None, flag=""):
    """A stride for score's windows: a whole number from 1 to n_ctx (n_ctx None: not known yet)."""
    if not (is_whole(stride, 1) and (n_ctx is None or stride <= n_ctx)):
        upto = f" from 1 to {n_ctx} (the context)" if n_ctx is not None else " >= 1"
        raise ValueError(f"{flag}stride must be a whole number{upto}, not {stride!r}")


def check_choices(inputs, choices, n_ctx):
    """A prompt and answers to score after it: the model is fed the prompt and every token of an answer but
    its last, so a prompt of n_ctx tokens may get answers of one."""
    if not inputs:
        raise ValueError("inputs must hold at least one token; [EOT] starts from nothing, as GPT-2 does")
    if not choices:
        raise ValueError("choices must hold at least one choice (a list of token ids)")
    for i, choice in enumerate(choices):
        if not choice:
            raise ValueError(f"choice {i} is empty: each choice must hold at least one token")
        if len(inputs) + len(choice) - 1 > n_ctx:
            raise ValueError(f"the prompt is {len(inputs)} tokens and choice {i} is {len(choice)}, but the model "
                             f"sees at most {n_ctx} (the prompt and every token of a choice but the last): "
                             "shorten the prompt")


if __name__ == "__main__":  # the command line lives in cli.py; `import gpt2` stays NumPy only
    from cli import gpt2_command

    gpt2_command()
