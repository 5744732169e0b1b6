"""score on texts of any length: strided windows against a fresh forward pass per token, short
texts against the TensorFlow reference."""
import os

import numpy as np
import pytest

import gpt2
from checkpoints import reference_log_probs

N_CTX = 64  # the tiny model's context (conftest.SHAPES["tiny"])


def test_the_tiny_models_context_is_n_ctx(tiny):
    assert tiny[1]["n_ctx"] == N_CTX


def random_ids(n, seed=0):
    return [int(i) for i in np.random.default_rng(seed).integers(0, 50257, n)]


def window_start(i, stride):
    """Where the window that scores inputs[i] starts in [EOT] + inputs: windows start at
    multiples of stride and end n_ctx tokens later, and a token belongs to the first one that
    reaches it (inputs[i] is position i + 1, predicted from positions up to i)."""
    k = 0
    while k * stride + N_CTX < i + 1:
        k += 1
    return k * stride


def reference_score(inputs, params, n_head, stride):
    """For each token on its own: a fresh forward pass over exactly the tokens of its window that
    come before it, and the log-softmax of the last row, via logaddexp."""
    text = [gpt2.EOT] + list(inputs)
    out = []
    for i, token in enumerate(inputs):
        start = window_start(i, stride)
        context = text[start:i + 1]
        assert 1 <= len(context) <= N_CTX
        if i >= N_CTX:  # after the first window: more than n_ctx - stride tokens of context
            assert len(context) > N_CTX - stride
        logits = gpt2.gpt2(context, **params, n_head=n_head, last_only=True)[-1].astype(np.float64)
        out.append(logits[token] - np.logaddexp.reduce(logits))
    return np.array(out)


# Texts shorter than, as long as, just over and several times the context; each pass of the
# reference costs as much as a window, so stride 1 (a pass per token) gets a shorter long text.
@pytest.mark.parametrize("n, stride", [(10, N_CTX // 2), (N_CTX, N_CTX), (N_CTX + 1, 1), (100, 1),
                                       (130, 7), (200, N_CTX // 2), (130, N_CTX)])
def test_windows_match_a_fresh_pass_per_token(tiny, n, stride):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    ids = random_ids(n, seed=n)
    ours = gpt2.score(ids, params, n_head, stride=stride)
    expected = reference_score(ids, params, n_head, stride)
    assert ours.shape == (n,)
    worst = np.abs(ours - expected).max()
    assert worst < 1e-4, f"stride {stride}, {n} tokens: log-probs differ by up to {worst:.2e}"


def test_default_stride_is_half_the_context(tiny):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    ids = random_ids(150, seed=3)
    np.testing.assert_array_equal(gpt2.score(ids, params, n_head), gpt2.score(ids, params, n_head, N_CTX // 2))


@pytest.mark.parametrize("n", [1, 5, N_CTX - 1, N_CTX])
@pytest.mark.parametrize("stride", [None, 1, N_CTX])
def test_short_texts_take_one_pass_that_matches_tensorflow(tiny, tiny_models, n, stride):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    ids = random_ids(n, seed=n + 100)
    ours = gpt2.score(ids, params, n_head, stride=stride)
    worst = np.abs(ours - reference_log_probs(os.path.join(tiny_models, "124M"), ids)).max()
    assert worst < 1e-4, f"{n} tokens, stride {stride}: log-probs differ from TensorFlow's by up to {worst:.2e}"


def record_passes(monkeypatch):
    """Replace gpt2.gpt2 with a stand-in that notes the inputs of every forward pass and returns
    zero logits (only the windows matter here, and this keeps the test instant)."""
    passes = []

    def recording(inputs, wte, *args, **kwargs):
        passes.append(list(inputs))
        return np.zeros((len(inputs), len(wte)), np.float32)

    monkeypatch.setattr(gpt2, "gpt2", recording)
    return passes


@pytest.mark.parametrize("n", [1, N_CTX - 1, N_CTX, N_CTX + 1, 200, 1000])
@pytest.mark.parametrize("stride", [1, 5, N_CTX // 2, N_CTX - 1, N_CTX])
def test_passes_follow_the_formula(tiny, monkeypatch, n, stride):
    """1 pass up to n_ctx tokens, then 1 + ceil((N - n_ctx) / stride), each at most n_ctx long;
    `progress` sees every window."""
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    passes, seen = record_passes(monkeypatch), []
    ids = random_ids(n, seed=7)

    def progress(windows):
        seen.append(len(windows))
        return windows

    gpt2.score(ids, params, n_head, stride=stride, progress=progress)
    expected = 1 if n <= N_CTX else 1 + -(-(n - N_CTX) // stride)
    assert len(passes) == expected == seen[0]
    assert all(1 <= len(p) <= N_CTX for p in passes)
    text = [gpt2.EOT] + ids
    assert all(p == text[k * stride:k * stride + len(p)] for k, p in enumerate(passes))  # k-th at k * stride
    assert passes[-1][-1] == text[-2]  # the last window reaches the end (its last input predicts the last token)


def test_stride_of_the_whole_context_makes_disjoint_windows(tiny, monkeypatch):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    passes = record_passes(monkeypatch)
    ids = random_ids(3 * N_CTX + 10, seed=11)
    gpt2.score(ids, params, n_head, stride=N_CTX)
    assert [len(p) for p in passes] == [N_CTX, N_CTX, N_CTX, 10]
    assert sum(passes, []) == [gpt2.EOT] + ids[:-1]  # side by side, each token fed once


def test_empty_text_scores_nothing(tiny):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    assert gpt2.score([], params, n_head).shape == (0,)


@pytest.mark.parametrize("stride", [0, -1, N_CTX + 1, 1.5, True, "8", np.float32(4)])
def test_bad_stride_is_a_clear_error(tiny, stride):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    with pytest.raises(ValueError, match=f"stride must be a whole number from 1 to {N_CTX}"):
        gpt2.score(random_ids(10), params, n_head, stride=stride)


def test_numpy_integer_stride_is_fine(tiny):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    ids = random_ids(100, seed=5)
    np.testing.assert_array_equal(gpt2.score(ids, params, n_head, stride=np.int64(9)),
                                  gpt2.score(ids, params, n_head, stride=9))
