"""`--n_samples` and `--score --each_line` through the CLI, against the TensorFlow reference."""
import os

import numpy as np
import pytest

import gpt2
from checkpoints import reference_logits
from encoder import get_encoder
from helpers import assert_one_line_error, gpt2_cli as run, long_text, reference_greedy_text


@pytest.fixture(scope="module")
def model_dir(tiny_models):
    return os.path.join(tiny_models, "124M")


def test_n_samples_prints_each_under_a_header(tiny_models, model_dir):
    """top_k 1 makes every sample the greedy text, which the reference gives independently."""
    result = run("Alan Turing", "--models_dir", tiny_models, "--n_samples", "3", "--temperature", "1",
                 "--top_k", "1", "--seed", "4", "--n_tokens_to_generate", "5")
    assert result.returncode == 0, result.stderr
    greedy = reference_greedy_text(model_dir, "Alan Turing", 5)
    assert result.stdout == "".join(f"======== SAMPLE {i} ========\n{greedy}\n" for i in (1, 2, 3))
    assert "3 samples" in result.stderr  # the progress bar


def test_one_sample_is_one_sample(tiny_models):
    result = run("Alan Turing", "--models_dir", tiny_models, "--n_samples", "1", "--temperature", "1",
                 "--n_tokens_to_generate", "3", "--ignore_eos")
    assert result.returncode == 0, result.stderr
    assert "1 sample:" in result.stderr and "1 samples" not in result.stderr  # the progress bar


def test_n_samples_are_repeatable_and_differ(tiny_models):
    args = ("Hello", "--models_dir", tiny_models, "--n_samples", "2", "--temperature", "1", "--seed", "9",
            "--n_tokens_to_generate", "6", "--ignore_eos")
    first, second = run(*args), run(*args)
    assert first.returncode == 0 and first.stdout == second.stdout
    samples = first.stdout.split("======== SAMPLE 2 ========\n")
    assert len(samples) == 2 and samples[0].removeprefix("======== SAMPLE 1 ========\n") != samples[1]


@pytest.mark.parametrize("args, fragment", [
    (["--n_samples", "0"], "--n_samples must be a whole number >= 1, not 0"),
    (["--n_samples", "-3"], "--n_samples must be a whole number >= 1, not -3"),
    (["--n_samples", "many"], "--n_samples must be a whole number >= 1, not 'many'"),
    (["--n_samples", "2.5", "--temperature", "1"], "--n_samples must be a whole number >= 1, not 2.5"),
    (["--n_samples", "2"], "set --temperature"),
    (["--n_samples", "2", "--temperature", "1", "--score"], "--temperature and --n_samples are for generating"),
    (["--each_line"], "--each_line goes with --prompt_file and --score, --classify or --choices"),
    (["--each_line", "--score"], "--each_line goes with --prompt_file and --score, --classify or --choices"),
    (["--each_line=no", "--score"], "--each_line is a switch"),
])
def test_bad_batch_flags(tiny_models, args, fragment):
    assert_one_line_error(run("Hi", "--models_dir", tiny_models, *args), fragment)


def test_each_line_scores_non_empty_lines_alone(tiny_models, model_dir, tmp_path):
    lines = ["The cat sat on the mat.", "", "   ", "Zoë's café", "", "A dog."]
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run("--models_dir", tiny_models, "--score", "--each_line", "--prompt_file", str(path))
    assert result.returncode == 0, result.stderr
    *rows, summary = result.stdout.splitlines()
    encoder = get_encoder("124M", tiny_models)
    expected_rows, total, n_tokens = [], 0.0, 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        ids = encoder.encode(line)
        logits = reference_logits(model_dir, [gpt2.EOT] + ids[:-1]).astype(np.float64)
        log_probs = [row[t] - row.max() - np.log(np.exp(row - row.max()).sum()) for row, t in zip(logits, ids)]
        expected_rows.append((number, len(ids), sum(log_probs), np.exp(-np.mean(log_probs))))
        total, n_tokens = total + sum(log_probs), n_tokens + len(ids)
    assert len(rows) == len(expected_rows)
    for row, (number, n, log_prob, perplexity) in zip(rows, expected_rows):
        cells = row.split("\t")
        assert [int(cells[0]), int(cells[1])] == [number, n], row
        assert float(cells[2]) == pytest.approx(log_prob, abs=1e-3), row
        assert float(cells[3]) == pytest.approx(perplexity, rel=1e-4), row
    assert summary.startswith(f"3 lines, {n_tokens} tokens: total log-probability {total:.2f}")


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_each_line_on_a_file_without_text(tiny_models, tmp_path, text):
    path = tmp_path / "empty.txt"
    path.write_text(text, encoding="utf-8")
    result = run("--models_dir", tiny_models, "--score", "--each_line", "--prompt_file", str(path))
    assert_one_line_error(result, "nothing to score", f"--prompt_file {path} is empty" if text == "" else
                          "every line of the prompt is empty")


def test_each_line_longer_than_the_context_is_scored_in_windows(tiny_models, tmp_path):
    """A line of over 2 contexts goes through score's windows: its row says what `--score` of that
    line alone says (tested against the reference in test_score.py), at the same stride."""
    long_line, short_line = long_text(150).strip(), "Short one."
    path, alone = tmp_path / "lines.txt", tmp_path / "alone.txt"
    path.write_text(f"{short_line}\n{long_line}\n", encoding="utf-8")
    alone.write_text(long_line, encoding="utf-8")
    result = run("--models_dir", tiny_models, "--score", "--each_line", "--prompt_file", str(path), "--stride", "16")
    single = run("--models_dir", tiny_models, "--score", "--prompt_file", str(alone), "--stride", "16")
    assert result.returncode == 0 and single.returncode == 0, result.stderr + single.stderr
    n_tokens = len(get_encoder("124M", tiny_models).encode(long_line))
    assert n_tokens > 2 * 64
    row = result.stdout.splitlines()[1].split("\t")
    assert row[:2] == ["2", str(n_tokens)]
    assert f"total log-probability {row[2]} over {n_tokens} tokens, perplexity {row[3]}" in single.stdout


def test_each_line_numbers_lines_as_the_file_has_them(tiny_models, tmp_path):
    """Lines end at newlines only: a form feed, U+0085, U+2028 or a lone carriage return inside a
    line is part of it (str.splitlines would split there and shift every later number). A
    Windows line's closing \\r is not part of it."""
    lines = ["a form\ffeed", "next\x85line", "line\u2028separator", "carriage\rreturn", "", "windows\r", "last"]
    path = tmp_path / "odd.txt"
    path.write_bytes("\n".join(lines).encode("utf-8"))
    result = run("--models_dir", tiny_models, "--score", "--each_line", "--prompt_file", str(path))
    assert result.returncode == 0, result.stderr
    encoder = get_encoder("124M", tiny_models)
    rows = [row.split("\t")[:2] for row in result.stdout.splitlines()[:-1]]
    assert rows == [[str(n), str(len(encoder.encode(line.removesuffix("\r"))))]
                    for n, line in enumerate(lines, 1) if line]


def test_each_line_checks_the_stride_up_front(tiny_models, tmp_path):
    """Short lines never need windows, but a stride past the context is still an error."""
    path = tmp_path / "pairs.txt"
    path.write_text("The cat sat.\nThe mat sat.\n", encoding="utf-8")
    result = run("--models_dir", tiny_models, "--score", "--each_line", "--prompt_file", str(path), "--stride", "99999")
    assert_one_line_error(result, "--stride must be a whole number from 1 to 64")


def test_score_many_checks_the_stride_up_front(tiny_models):
    from utils import load_encoder_hparams_and_params

    _, hparams, params = load_encoder_hparams_and_params("124M", tiny_models)
    with pytest.raises(ValueError, match="stride must be a whole number from 1 to 64"):
        gpt2.score_many([[1, 2, 3]], params, hparams["n_head"], stride=99999)
