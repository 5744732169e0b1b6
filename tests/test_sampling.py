"""Sampling controls, streaming output and scoring."""
import math
import os

import numpy as np
import pytest

import cli
import gpt2
from checkpoints import reference_logits
from helpers import expected_distribution, gpt2_cli as run

PROMPT_IDS = [464, 2068, 7586, 21831, 18045, 625]


def test_temperature_zero_and_top_k_one_are_greedy(tiny):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    greedy = gpt2.generate(PROMPT_IDS, params, n_head, 8, stop_id=None)
    assert greedy == gpt2.generate(PROMPT_IDS, params, n_head, 8, temperature=0.0, seed=3, stop_id=None)
    assert greedy == gpt2.generate(PROMPT_IDS, params, n_head, 8, temperature=1.5, top_k=1, seed=3, stop_id=None)


def test_seed_reproduces_and_different_seeds_differ(tiny):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    a = gpt2.generate(PROMPT_IDS, params, n_head, 12, temperature=1.0, seed=1, stop_id=None)
    assert a == gpt2.generate(PROMPT_IDS, params, n_head, 12, temperature=1.0, seed=1, stop_id=None)
    assert a != gpt2.generate(PROMPT_IDS, params, n_head, 12, temperature=1.0, seed=2, stop_id=None)


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, None, None), (0.5, 12, None), (0.8, None, 0.5),
                                                       (0.6, 30, 0.8)])
def test_first_token_follows_the_filtered_softmax(temperature, top_k, top_p):
    """On logits of a known spread (std 2.5 over GPT-2's vocabulary), so that the filters matter
    whatever a random model would predict."""
    logits = np.random.default_rng(1).normal(0, 2.5, 50257).astype(np.float32)
    rng, n = np.random.default_rng(0), 2000
    draws = np.array([gpt2.sample(logits, temperature, top_k, top_p, rng) for _ in range(n)])
    right = expected_distribution(logits.astype(np.float64), temperature, top_k, top_p)
    # Compare on the 10 likeliest tokens one by one, and all others together: with 50257 tokens
    # most counts would be noise.
    buckets = sorted(right, key=right.get, reverse=True)[:10]

    def total_variation(dist):
        observed = [np.mean(draws == i) for i in buckets]
        expected = [dist.get(i, 0.0) for i in buckets]
        return 0.5 * (sum(abs(o - e) for o, e in zip(observed, expected)) + abs(sum(expected) - sum(observed)))

    assert total_variation(right) < 0.05
    # The same draws against what a wrong temperature, or forgetting to filter and renormalize,
    # would give: the tolerance above must be tight enough to tell them apart.
    assert total_variation(expected_distribution(logits.astype(np.float64), 2 * temperature, top_k, top_p)) > 0.1
    if (top_k, top_p) != (None, None):
        assert total_variation(expected_distribution(logits.astype(np.float64), temperature)) > 0.1


def test_generate_samples_with_its_own_seeded_generator(tiny):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    logits = gpt2.gpt2(PROMPT_IDS, **params, n_head=n_head)[-1]
    first = gpt2.sample(logits, 0.8, 20, 0.9, np.random.default_rng(5))
    assert gpt2.generate(PROMPT_IDS, params, n_head, 1, 0.8, 20, 0.9, seed=5, stop_id=None) == [first]


def test_top_p_keeps_the_smallest_set_reaching_p():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([0.1, 0.4, 0.2, 0.3], dtype=np.float32))
    for top_p, allowed in [(0.35, {1}), (0.65, {1, 3}), (0.85, {1, 3, 2}), (1.0, {0, 1, 2, 3})]:
        seen = {gpt2.sample(logits, 1.0, top_p=top_p, rng=rng) for _ in range(400)}
        assert seen == allowed, top_p


def test_top_p_with_ties_prefers_lower_ids():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 2.0, 2.0, 2.0, 1.0], dtype=np.float32)  # ids 1, 2, 3 tie
    one = math.exp(2) / (3 * math.exp(2) + math.exp(1) + 1)  # probability of each tied id
    assert {gpt2.sample(logits, 1.0, top_p=one * 0.9, rng=rng) for _ in range(200)} == {1}
    assert {gpt2.sample(logits, 1.0, top_p=one * 1.5, rng=rng) for _ in range(200)} == {1, 2}
    assert {gpt2.sample(logits, 1.0, top_k=2, rng=rng) for _ in range(200)} == {1, 2}


@pytest.mark.parametrize("kwargs, message", [({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"),
                                             ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                                             ({"seed": "x"}, "seed"), ({"temperature": float("nan")}, "temperature")])
def test_invalid_settings_are_clear_errors(tiny, kwargs, message):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    with pytest.raises(ValueError, match=message):
        gpt2.generate(PROMPT_IDS, params, n_head, 3, **kwargs)


def test_generation_stops_at_endoftext(tiny):
    _, hparams, params = tiny
    n_head = hparams["n_head"]
    ids = gpt2.generate(PROMPT_IDS, params, n_head, 20, stop_id=None)
    stop = ids[3]  # pretend the fourth token were <|endoftext|>
    assert gpt2.generate(PROMPT_IDS, params, n_head, 20, stop_id=stop) == ids[:ids.index(stop)]


def test_streaming_never_prints_half_a_character(tiny, monkeypatch, capsys, tiny_models):
    encoder, _, _ = tiny
    text = " naïve café → 日本語 🤗👩‍👩‍👧 ok"
    ids = encoder.encode(text)
    assert any("\ufffd" in encoder.decode([i]) for i in ids)  # some tokens hold part of a character
    monkeypatch.setattr(gpt2, "stream", lambda *args, **kwargs: iter(ids))
    pieces = list(cli.detokenize(iter(ids), encoder))
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert cli.gpt2_main("Hi", models_dir=tiny_models) == text
    assert capsys.readouterr().out == text


def test_cli_sampling_is_reproducible_and_validated(tiny_models):
    args = ["The", "--n_tokens_to_generate", "6", "--models_dir", tiny_models, "--temperature", "0.9",
            "--top_k", "40", "--top_p", "0.95", "--seed", "7", "--ignore_eos"]
    first, second = run(*args), run(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout
    bad = run("The", "--models_dir", tiny_models, "--top_k", "0")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: --top_k")


def test_score_matches_reference_log_softmax(tiny, tiny_models):
    encoder, hparams, params = tiny
    n_head = hparams["n_head"]
    ids = encoder.encode("The quick brown fox jumps over the lazy dog")
    ours = gpt2.score(ids, params, n_head)
    logits = reference_logits(os.path.join(tiny_models, "124M"), [50256] + ids[:-1]).astype(np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    np.testing.assert_allclose(ours, log_probs[np.arange(len(ids)), ids], atol=1e-4)


def test_cli_score(tiny_models):
    result = run("The quick brown fox", "--score", "--models_dir", tiny_models)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5 and "perplexity" in lines[-1]
