"""train.py's fine-tuning pieces: windows of a text, the learning rate, a step of accumulated batches, and
the validation loss, each against a plain computation written out here."""
import numpy as np
import pytest

import gpt2
import train


def test_batches_are_windows_of_the_text_shifted_by_one():
    tokens = np.arange(1000, 1100)  # token i of the text is 1000 + i: a window shows where it came from
    rng = np.random.default_rng(0)
    starts = []
    for _ in range(300):
        inputs, targets = train.get_batch(tokens, 3, 8, rng)
        assert inputs.shape == targets.shape == (3, 8)
        assert (np.diff(inputs, axis=1) == 1).all() and (targets == inputs + 1).all()
        starts += list(inputs[:, 0] - 1000)
    assert min(starts) == 0 and max(starts) == len(tokens) - 9  # every window fits, the last ends on the last token


def test_the_same_seed_draws_the_same_batches():
    tokens = np.arange(500)
    draw = [train.get_batch(tokens, 2, 16, np.random.default_rng(7)) for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(*draw))


def test_learning_rate_warms_up_then_stays():
    rates = [train.learning_rate(step, 3e-4, 10) for step in range(1, 40)]  # steps count from 1
    assert rates[:3] == pytest.approx([3e-5, 6e-5, 9e-5]) and rates[4] == pytest.approx(1.5e-4)
    assert rates[9:] == [3e-4] * 30
    assert [train.learning_rate(step, 3e-4, warmup) for warmup in (0, 1) for step in (1, 2, 50)] == [3e-4] * 6


def test_cosine_warms_up_then_falls_to_min_lr_by_decay_steps_and_stays():
    """Against the rates written out: warmup 4 to 1e-3, then half a cosine to 1e-4 at step 12 (4 + 8 steps)."""
    rates = [train.learning_rate(step, 1e-3, 4, "cosine", 1e-4, 12) for step in range(1, 16)]
    half_down = 1e-4 + 0.5 * 9e-4  # halfway: cos(pi / 2) = 0
    quarter = 1e-4 + 0.5 * (1 + 0.7071067811865476) * 9e-4  # a quarter of the way: cos(pi / 4)
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert rates[5] == pytest.approx(quarter) and rates[7] == pytest.approx(half_down)
    assert rates[11:] == [1e-4] * 4 and all(a > b for a, b in zip(rates[3:11], rates[4:12]))


def test_accumulated_batches_make_one_big_batch(tiny):
    """Two batches of 2 accumulated take the same step as one batch of 4 drawing the same windows (float64:
    the two differ only by rounding)."""
    _, hparams, params = tiny
    params = train.tree_map(lambda p: np.array(p, np.float64), params)
    tokens = np.random.default_rng(1).integers(0, hparams["n_vocab"], 400)
    results = []
    for batch_size, accumulate in ((4, 1), (2, 2)):
        p, state = train.writable_copy(params), train.adamw_state(params)
        loss, norm = train.train_step(p, state, tokens, np.random.default_rng(3), hparams["n_head"], batch_size, 16,
                                      1e-3, accumulate, weight_decay=0.1, max_norm=1.0)
        results.append((loss, norm, train.leaves(p)))
    (loss_a, norm_a, a), (loss_b, norm_b, b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-12) and norm_a == pytest.approx(norm_b, rel=1e-10)
    assert all(np.allclose(x, y, rtol=0, atol=1e-12) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, train.leaves(params)))  # the step did move the weights


@pytest.mark.filterwarnings("error::RuntimeWarning")  # np.errstate must reach by_rows' threads too
def test_a_step_that_goes_non_finite_says_so(tiny):
    _, hparams, params = tiny
    p, state = train.writable_copy(params), train.adamw_state(params)
    p["ln_f"]["g"][0] = np.inf
    tokens = np.arange(200)
    with pytest.raises(FloatingPointError, match="not finite|nan|inf"), np.errstate(all="ignore"):
        train.train_step(p, state, tokens, np.random.default_rng(0), hparams["n_head"], 2, 8, 1e-3)


def test_validation_windows_are_fixed_and_spread_over_the_text():
    tokens = np.arange(1000)
    windows = train.eval_windows(tokens, 9, 1000)
    assert windows.shape == (111, 10) and (windows[:, 0] == np.arange(0, 999, 9)).all()  # side by side
    spread = train.eval_windows(tokens, 9, 5)
    assert len(spread) == 5 and spread[0, 0] == 0 and spread[-1, 0] == 990


def test_validation_loss_is_the_mean_over_every_window_and_position(tiny):
    _, hparams, params = tiny
    windows = train.eval_windows(np.random.default_rng(2).integers(0, hparams["n_vocab"], 200), 16, 10)
    expected = []
    for window in windows:  # one window at a time, through score's float64 log-softmax
        logits = gpt2.gpt2(window[:-1], **params, n_head=hparams["n_head"])
        expected.append(-gpt2.log_softmax_at(logits, window[1:]).mean())
    assert train.evaluate(windows, params, hparams["n_head"], batch_size=3) == pytest.approx(np.mean(expected), rel=1e-5)
