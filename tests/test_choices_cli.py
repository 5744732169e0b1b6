"""`python gpt2.py --choices`: zero- and few-shot answers chosen by likelihood, each choice's log-probability against
the TensorFlow reference on prompt + choice, acc and acc_norm against a plain computation, few-shot prompts built
as GPT-3's paper writes them, and every bad input refused in one line."""
import os

import numpy as np
import pytest

from encoder import get_encoder
from helpers import assert_one_line_error, gpt2_cli as run, reference_choice_log_probs

TEMPLATE = "Review: {text}\nSentiment:"
TEST_ROWS = [("a wonderful film", "positive"), ("dull, and far too long", "negative"), ("I smiled", "positive")]
TRAIN_ROWS = [("great fun", "positive"), ("a bore", "negative"), ("lovely", "positive"), ("awful", "negative")]


@pytest.fixture(scope="module")
def model(tiny_models):
    return os.path.join(tiny_models, "124M"), get_encoder("124M", tiny_models)


def reference_scores(model_dir, encoder, prompt, choices):
    """[(total, total / characters)] per choice, TensorFlow's log-probabilities of encode(" " + choice) after
    encode(prompt) (tests/test_tasks.py shows these are the harness's tokens for a prompt ending in no space)."""
    totals = [reference_choice_log_probs(model_dir, encoder.encode(prompt), encoder.encode(" " + choice)).sum()
              for choice in choices]
    return [(total, total / len(choice)) for total, choice in zip(totals, choices)]


def write_csv(path, rows):
    path.write_text("text,label\n" + "".join(f'"{text}",{label}\n' for text, label in rows), encoding="utf-8")
    return str(path)


def test_a_prompt_and_its_choices_likeliest_first(model):
    """\\n typed in the prompt is a newline; a choice of several tokens is scored over all of them."""
    model_dir, encoder = model
    choices = ["positive", "negative", "not sure at all"]
    result = run("--model_dir", model_dir, "Review: a wonderful film.\\nSentiment:", "--choices", "|".join(choices))
    assert result.returncode == 0, result.stderr
    expected = reference_scores(model_dir, encoder, "Review: a wonderful film.\nSentiment:", choices)
    order = sorted(range(3), key=lambda i: -expected[i][0])
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == [choices[i] for i in order]
    for row, i in zip(rows, order):
        total, per_char = expected[i]
        assert abs(float(row[1]) - total) < 5e-4 and abs(float(row[2]) - per_char) < 1e-4, (row, expected[i])


def test_a_labeled_file_with_a_template_gives_acc_and_acc_norm(model, tmp_path):
    model_dir, encoder = model
    choices = ["positive", "negative"]
    path = write_csv(tmp_path / "test.csv", TEST_ROWS)
    result = run("--model_dir", model_dir, "--prompt_file", path, "--choices", "positive | negative",
                 "--template", TEMPLATE.replace("\n", "\\n"))
    assert result.returncode == 0, result.stderr
    *rows, acc, acc_norm = result.stdout.splitlines()
    right = [0, 0]
    for line, row, (text, label) in zip([2, 3, 4], rows, TEST_ROWS):
        scores = reference_scores(model_dir, encoder, f"Review: {text}\nSentiment:", choices)
        by_total, by_char = (choices[int(np.argmax([s[k] for s in scores]))] for k in (0, 1))
        assert row.split("\t") == [str(line), by_total, by_char]
        right = [right[0] + (by_total == label), right[1] + (by_char == label)]
    assert acc == f"acc {right[0] / 3:.4f} ({right[0]} of 3)"
    assert acc_norm == f"acc_norm {right[1] / 3:.4f} ({right[1]} of 3)"


def test_few_shot_prompts_draw_their_examples_per_row(model, tmp_path):
    """Each row's prompt: two examples drawn from the training file with the seed's generator, each the filled
    template, a space, its label and a blank line, then the row's own filled template."""
    model_dir, encoder = model
    choices = ["positive", "negative"]
    test, train = write_csv(tmp_path / "test.csv", TEST_ROWS), write_csv(tmp_path / "train.csv", TRAIN_ROWS)
    result = run("--model_dir", model_dir, "--prompt_file", test, "--choices", "positive|negative",
                 "--template", TEMPLATE.replace("\n", "\\n"), "--shots", "2", "--shots_from", train, "--seed", "5")
    assert result.returncode == 0, result.stderr
    rng = np.random.default_rng(5)
    for row, (text, _) in zip(result.stdout.splitlines(), TEST_ROWS):
        shots = [TRAIN_ROWS[i] for i in rng.choice(len(TRAIN_ROWS), 2, replace=False)]
        prompt = (f"Review: {shots[0][0]}\nSentiment: {shots[0][1]}\n\n"
                  f"Review: {shots[1][0]}\nSentiment: {shots[1][1]}\n\nReview: {text}\nSentiment:")
        scores = reference_scores(model_dir, encoder, prompt, choices)
        assert row.split("\t")[1:] == [choices[int(np.argmax([s[k] for s in scores]))] for k in (0, 1)]
    again = run("--model_dir", model_dir, "--prompt_file", test, "--choices", "positive|negative", "--template",
                TEMPLATE.replace("\n", "\\n"), "--shots", "2", "--shots_from", train, "--seed", "5")
    assert again.stdout == result.stdout


def test_each_line_without_labels_prints_rows_only(model, tmp_path):
    model_dir, _ = model
    path = tmp_path / "lines.txt"
    path.write_text("great fun\n\nawful\n", encoding="utf-8")
    result = run("--model_dir", model_dir, "--prompt_file", str(path), "--each_line", "--choices", "yes|no")
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["1", "3"]


@pytest.mark.parametrize("args, message", [
    (["Hi", "--choices", "positive||negative"], "--choices 'positive||negative' has an empty choice"),
    (["Hi", "--choices", "positive|"], "has an empty choice"),
    (["Hi", "--choices", "positive"], "--choices 'positive' has one choice"),
    (["Hi", "--choices", "yes|no|yes"], "--choices names 'yes' twice"),
    (["Hi", "--choices", "a|b", "--template", "Review:\\nSentiment:"], "has no {text}"),
    (["Hi", "--choices", "a|b", "--score"], "--score does not go with --choices"),
    (["Hi", "--choices", "a|b", "--temperature", "1"], "--temperature is for generating; --choices reads"),
    (["Hi", "--choices", "a|b", "--seed", "1"], "(--seed goes with --shots)"),
    (["Hi", "--choices", "a|b", "--shots", "2"], "--shots K and --shots_from FILE go together"),
    (["Hi", "--choices", "a|b", "--shots", "-1"], "--shots must be a whole number >= 0"),
    (["Hi", "--template", "{text}:"], "--template goes with --choices"),
    (["Hi", "--shots", "1"], "--shots goes with --choices"),
    (["Hi", "--choices"], "--choices needs a value"),
    (["word " * 70, "--choices", "a|b"], "the prompt (70 tokens) and the choice 'a' (2) do not fit the model's "
                                         "context of 64 tokens"),  # the prompt's last space starts each choice
])
def test_bad_choices_and_flags_are_one_line(model, args, message):
    assert_one_line_error(run("--model_dir", model[0], *args), message)


@pytest.mark.parametrize("test_rows, train_rows, args, message", [
    (TEST_ROWS + [("meh", "neutral")], None, [], "line 5: the label 'neutral' is not one of --choices"),
    (TEST_ROWS, None, ["--choices", "positive|negative|neutral"], "--choices 'neutral' is not a label of"),
    (TEST_ROWS, TRAIN_ROWS + [("so-so", "meh")], ["--shots", "1"], "line 6: the label 'meh' is not one of --choices"),
    (TEST_ROWS, TRAIN_ROWS, ["--shots", "5"], "--shots 5 asks for more examples than --shots_from"),
    ([("long " * 45, "positive"), ("short", "negative")], TRAIN_ROWS, ["--shots", "4"], "or give fewer --shots"),
])
def test_labels_shots_and_lengths_that_do_not_fit_are_one_line(model, tmp_path, test_rows, train_rows, args,
                                                               message):
    test = write_csv(tmp_path / "test.csv", test_rows)
    shots = ["--shots_from", write_csv(tmp_path / "train.csv", train_rows)] if train_rows else []
    choices = [] if "--choices" in args else ["--choices", "positive|negative"]
    result = run("--model_dir", model[0], "--prompt_file", test, *choices, "--template", "{text}:", *shots, *args)
    assert_one_line_error(result, message)


def test_shots_from_the_file_itself_never_show_a_text_its_own_answer(model, tmp_path):
    """Three rows, two shots each, drawn from the same file: each row's examples are the other two rows."""
    model_dir, encoder = model
    test = write_csv(tmp_path / "test.csv", TEST_ROWS)
    result = run("--model_dir", model_dir, "--prompt_file", test, "--choices", "positive|negative", "--template",
                 "{text}:", "--shots", "2", "--shots_from", test)
    assert result.returncode == 0, result.stderr
    rng = np.random.default_rng(0)  # --seed not given: 0
    for row, (text, _) in zip(result.stdout.splitlines(), TEST_ROWS):
        others = [(t, label) for t, label in TEST_ROWS if t != text]
        shots = [others[i] for i in rng.choice(2, 2, replace=False)]
        prompt = "".join(f"{t}: {label}\n\n" for t, label in shots) + f"{text}:"
        scores = reference_scores(model_dir, encoder, prompt, ["positive", "negative"])
        assert row.split("\t")[1:] == [["positive", "negative"][int(np.argmax([s[k] for s in scores]))]
                                       for k in (0, 1)]
