"""Batches: the model with a leading batch axis, N samples of one prompt side by side, and
score_many. Each is checked against an independent reference: the TensorFlow model, a fresh
single-sequence forward pass per prefix, or the plainly written softmax of test_sampling."""
import os

import numpy as np
import pytest
from scipy.stats import chi2

import gpt2
from checkpoints import reference_logits
from helpers import expected_distribution

PROMPT_IDS = [464, 2068, 7586, 21831, 18045, 625]


def fresh_logits(ids, params, n_head):
    """Next-token logits after `ids`, from one uncached single-sequence pass."""
    return gpt2.gpt2(list(ids), **params, n_head=n_head)[-1]


def test_batched_logits_equal_each_sequence_alone(tiny, tiny_models):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    batch = np.array([PROMPT_IDS, PROMPT_IDS[::-1], [50256] * 6])
    ours = gpt2.gpt2(batch, **params, n_head=n_head)
    assert ours.shape == (3, 6, 50257) and ours.dtype == np.float32
    for row, ids in zip(ours, batch):
        diff = np.abs(row - reference_logits(os.path.join(tiny_models, "124M"), ids)).max()
        assert diff <= 1e-4, f"row {ids}: max abs logit diff {diff:.2e} against TensorFlow"
    out, weights = gpt2.mha(np.ones((2, 5, 64), np.float32), **params["blocks"][0]["attn"], n_head=n_head,
                            return_weights=True)
    assert out.shape == (2, 5, 64) and weights.shape == (2, n_head, 5, 5)


def test_batched_cache_step_by_step_equals_full_recompute(tiny):
    """Rows fed through a kv_cache(n_batch=...) a few tokens at a time: each step's logits equal
    a fresh pass over that row's own sequence so far (no row sees another's keys)."""
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    seqs = np.array([PROMPT_IDS * 2, PROMPT_IDS[::-1] * 2])
    cache = gpt2.kv_cache(params, n_head, 12, n_batch=2)
    assert cache[0]["k"].shape == (2, n_head, 12, 16)
    done = 0
    for n in (5, 1, 1, 5):
        logits = gpt2.gpt2(seqs[:, done:done + n], **params, n_head=n_head, cache=cache)
        done += n
        for row, ids in zip(logits, seqs):
            np.testing.assert_allclose(row, gpt2.gpt2(ids[:done], **params, n_head=n_head)[-n:], atol=1e-5)


def test_top_k_one_rows_are_greedy(tiny):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    rows = gpt2.generate(PROMPT_IDS, params, n_head, 10, temperature=1.0, top_k=1, seed=0, stop_id=None,
                         n_samples=3)
    ids = list(PROMPT_IDS)
    for _ in range(10):
        ids.append(int(np.argmax(fresh_logits(ids, params, n_head))))
    assert rows == [ids[len(PROMPT_IDS):]] * 3


def test_same_seed_same_rows_and_rows_differ(tiny):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    a = gpt2.generate(PROMPT_IDS, params, n_head, 12, temperature=1.0, seed=7, stop_id=None, n_samples=4)
    assert a == gpt2.generate(PROMPT_IDS, params, n_head, 12, temperature=1.0, seed=7, stop_id=None, n_samples=4)
    assert len(a) == 4 and all(len(row) == 12 for row in a)
    assert len({tuple(row) for row in a}) == 4  # 12 draws from ~50k tokens: a repeat would be a shared row


def test_n_samples_none_and_one_keep_todays_results(tiny):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    greedy = gpt2.generate(PROMPT_IDS, params, n_head, 6, stop_id=None)
    assert isinstance(greedy, list) and all(isinstance(t, int) for t in greedy)
    assert gpt2.generate(PROMPT_IDS, params, n_head, 6, stop_id=None, n_samples=1) == [greedy]
    assert gpt2.generate(PROMPT_IDS, params, n_head, 0, temperature=1.0, n_samples=3) == [[], [], []]


def test_first_two_tokens_follow_the_reference_softmax(tiny, tiny_models):
    """Over 2,400 rows, the pair (first token, second token) is drawn from p(t1) p(t2 | t1), each
    factor the filtered softmax of a TensorFlow forward pass. A cache row holding another row's
    keys, or one row's first token fed to another, would draw t2 from the wrong conditional."""
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    model_dir, temperature, top_k = os.path.join(tiny_models, "124M"), 1.0, 3
    first = expected_distribution(reference_logits(model_dir, PROMPT_IDS)[-1].astype(np.float64), temperature, top_k)
    cells = {}
    for t1, p1 in first.items():
        second = expected_distribution(reference_logits(model_dir, PROMPT_IDS + [t1])[-1].astype(np.float64),
                                       temperature, top_k)
        cells.update({(t1, t2): p1 * p2 for t2, p2 in second.items()})
    rows = [tuple(row) for seed in range(8) for row in
            gpt2.generate(PROMPT_IDS, params, n_head, 2, temperature, top_k, seed=seed, stop_id=None, n_samples=300)]
    assert set(rows) <= set(cells), "a pair outside the top 3 of its own prefix"
    observed = np.array([rows.count(cell) for cell in cells])
    expected = np.array(list(cells.values())) * len(rows)
    assert expected.min() >= 5, "the chi-square approximation needs 5 expected draws per cell"
    statistic = ((observed - expected) ** 2 / expected).sum()
    # A correct sampler fails this with probability 1e-6 (chi-square, 8 degrees of freedom).
    limit = chi2.isf(1e-6, len(cells) - 1)
    print(f"chi-square {statistic:.1f} (limit {limit:.1f}) over {len(rows)} rows; observed {observed}, "
          f"expected {np.round(expected)}")
    assert statistic < limit
    # The same counts against t2 drawn from its marginal, independently of t1 (what rows mixing
    # up their caches would give) must fail, or the test could not tell the two apart.
    marginal = {}
    for (t1, t2), p in cells.items():
        marginal[t2] = marginal.get(t2, 0.0) + p
    wrong = np.array([first[t1] * marginal[t2] for t1, t2 in cells]) * len(rows)
    print(f"against independent draws: chi-square {((observed - wrong) ** 2 / wrong).sum():.1f}")
    assert ((observed - wrong) ** 2 / wrong).sum() > limit


def test_top_k_two_rows_stop_on_their_own(tiny):
    """Some rows draw stop_id and end; the others go on. Every token of every row is among the top
    2 of a fresh pass over that row's own prefix, and a short row's prefix had stop_id in its top 2."""
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    stop_id = int(np.argsort(fresh_logits(PROMPT_IDS, params, n_head))[-2])  # the runner-up after the prompt
    n = 8
    rows = gpt2.generate(PROMPT_IDS, params, n_head, n, temperature=1.0, top_k=2, seed=3, stop_id=stop_id,
                         n_samples=12)
    lengths = [len(row) for row in rows]
    assert min(lengths) < n and max(lengths) == n, lengths  # the seed gives both kinds
    for row in rows:
        assert stop_id not in row
        for i in range(len(row) + (len(row) < n)):
            top2 = np.argsort(fresh_logits(PROMPT_IDS + row[:i], params, n_head))[-2:]
            assert (row[i] if i < len(row) else stop_id) in top2, f"row {row}, token {i}"


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_samples=0), "n_samples must be a whole number >= 1, not 0"),
    (dict(n_samples=-2), "n_samples must be a whole number >= 1, not -2"),
    (dict(n_samples=True), "n_samples must be a whole number >= 1, not True"),
    (dict(n_samples=2.0), "n_samples must be a whole number >= 1, not 2.0"),
    (dict(n_samples="3"), "n_samples must be a whole number >= 1, not '3'"),
    (dict(n_samples=4, temperature=0), "4 samples at temperature 0 would all be the same greedy text: set a "
                                       "temperature"),
])
def test_bad_n_samples_are_clear_errors(tiny, kwargs, message):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        gpt2.generate(PROMPT_IDS, params, n_head, 4, **kwargs)


def test_score_many_equals_score_of_each_text(tiny):
    """Texts of every length from 1 to n_ctx - 1 tokens and beyond the context (scored in
    windows), in an order that is not by length, with small batches so that many form."""
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    rng = np.random.default_rng(0)
    lengths = list(range(1, 64)) + [64, 65, 150, 0]
    rng.shuffle(lengths)
    texts = [rng.integers(0, 50257, n).tolist() for n in lengths]
    many = gpt2.score_many(texts, params, n_head, stride=16, max_rows=5, max_positions=200)
    assert len(many) == len(texts)
    for text, ours in zip(texts, many):
        alone = gpt2.score(text, params, n_head, stride=16)
        assert ours.shape == (len(text),)
        np.testing.assert_allclose(ours, alone, atol=1e-4, err_msg=f"a text of {len(text)} tokens")


def test_score_many_matches_reference_log_softmax(tiny, tiny_models):
    """Two texts of different lengths in one padded batch, against TensorFlow's log-softmax."""
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    texts = [PROMPT_IDS, PROMPT_IDS[:2], PROMPT_IDS[::-1][:4]]
    for text, ours in zip(texts, gpt2.score_many(texts, params, n_head)):
        logits = reference_logits(os.path.join(tiny_models, "124M"), [50256] + text[:-1]).astype(np.float64)
        expected = [row[t] - np.log(np.exp(row - row.max()).sum()) - row.max() for row, t in zip(logits, text)]
        np.testing.assert_allclose(ours, expected, atol=1e-4)
