"""gpt2.score_choices, for zero- and few-shot tasks: each choice scored as the continuation of one prompt, against
the TensorFlow reference on prompt + choice, and against each choice scored alone."""
import os

import numpy as np
import pytest

import gpt2
from checkpoints import reference_logits
from helpers import reference_choice_log_probs

N_CTX = 64  # the tiny model's context
rng = np.random.default_rng(11)
PROMPT = rng.integers(0, 50257, 12).tolist()
CHOICES = [rng.integers(0, 50257, n).tolist() for n in (3, 1, 7, 2)]  # of different lengths, not in order


def test_choices_match_tensorflow_on_prompt_and_choice(tiny, tiny_models):
    _, hparams, params = tiny
    ours = gpt2.score_choices(PROMPT, CHOICES, params, hparams["n_head"])
    assert len(ours) == len(CHOICES)
    for choice, log_probs in zip(CHOICES, ours):
        expected = reference_choice_log_probs(os.path.join(tiny_models, "124M"), PROMPT, choice)
        assert log_probs.shape == (len(choice),) and log_probs.dtype == np.float64
        worst = np.abs(log_probs - expected).max()
        assert worst < 1e-4, f"a choice of {len(choice)} tokens: off TensorFlow's log-probs by {worst:.1e}"


def test_a_batch_of_choices_is_each_choice_alone(tiny):
    _, hparams, params = tiny
    together = gpt2.score_choices(PROMPT, CHOICES, params, hparams["n_head"])
    for choice, log_probs in zip(CHOICES, together):
        (alone,) = gpt2.score_choices(PROMPT, [choice], params, hparams["n_head"])
        np.testing.assert_allclose(log_probs, alone, atol=1e-5, err_msg=f"a choice of {len(choice)} tokens")


def test_one_token_choices_and_a_prompt_filling_the_context(tiny, tiny_models):
    """Choices of one token are read off the prompt's last position alone; a prompt of n_ctx tokens may take
    them, as the model is never fed a choice's last token."""
    _, hparams, params = tiny
    prompt = rng.integers(0, 50257, N_CTX).tolist()
    ours = gpt2.score_choices(prompt, [[5], [50256], [17]], params, hparams["n_head"])
    logits = reference_logits(os.path.join(tiny_models, "124M"), prompt)[-1].astype(np.float64)
    expected = logits[[5, 50256, 17]] - np.logaddexp.reduce(logits)
    np.testing.assert_allclose(np.concatenate(ours), expected, atol=1e-4)


@pytest.mark.parametrize("prompt, choices, message", [
    ([], [[1]], "inputs must hold at least one token"),
    ([1, 2], [], "choices must hold at least one choice"),
    ([1, 2], [[1], []], "choice 1 is empty"),
    (list(range(N_CTX)), [[1], [1, 2]], "the prompt is 64 tokens and choice 1 is 2, but the model sees at most 64"),
    (list(range(60)), [[1] * 6], "shorten the prompt"),
])
def test_bad_arguments_are_plain_value_errors(tiny, prompt, choices, message):
    _, hparams, params = tiny
    with pytest.raises(ValueError) as error:
        gpt2.score_choices(prompt, choices, params, hparams["n_head"])
    assert message in str(error.value)
