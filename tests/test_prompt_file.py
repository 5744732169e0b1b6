"""`--prompt_file` (a file, or stdin for "-") and scoring long texts, through the CLI."""
import os

import numpy as np
import pytest

import cli
import gpt2
from checkpoints import reference_logits
from helpers import assert_one_line_error, gpt2_cli as run, long_text, reference_greedy_text
from utils import load_encoder_hparams_and_params

TEXT = "Zoë's café on the corner\nsells crêpes"  # non-ASCII and a newline, read verbatim


@pytest.fixture(scope="module")
def model_dir(tiny_models):
    return os.path.join(tiny_models, "124M")


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_generate_from_a_file(tiny_models, model_dir, tmp_path, bom):
    path = tmp_path / "prompt.txt"
    path.write_bytes(bom + TEXT.encode("utf-8"))  # a byte-order mark is not part of the text
    result = run("--prompt_file", str(path), "--n_tokens_to_generate", "5", "--models_dir", tiny_models)
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference_greedy_text(model_dir, TEXT, 5)


@pytest.mark.parametrize("flag", [["--prompt_file", "-"], ["--prompt_file=-"]])
def test_generate_from_stdin(tiny_models, model_dir, flag):
    result = run(*flag, "--n_tokens_to_generate", "5", "--models_dir", tiny_models, stdin=TEXT.encode("utf-8"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference_greedy_text(model_dir, TEXT, 5)


def test_score_from_stdin_matches_the_reference(tiny_models, model_dir):
    result = run("--prompt_file", "-", "--score", "--models_dir", tiny_models, stdin=TEXT.encode("utf-8"))
    assert result.returncode == 0, result.stderr
    encoder, _, _ = load_encoder_hparams_and_params("124M", tiny_models)
    ids = encoder.encode(TEXT)
    logits = reference_logits(model_dir, [gpt2.EOT] + ids[:-1]).astype(np.float64)
    expected = [row[i] - np.logaddexp.reduce(row) for row, i in zip(logits, ids)]
    lines = result.stdout.splitlines()
    assert len(lines) == len(ids) + 1 and "perplexity" in lines[-1]
    printed = [float(line.split()[0]) for line in lines[:-1]]
    np.testing.assert_allclose(printed, expected, atol=2e-4)  # printed to 4 decimals


@pytest.mark.parametrize("tokens", [False, True])
def test_long_score_prints_the_summary_last(tiny_models, tmp_path, tokens):
    """Over 256 tokens: a progress bar on stderr and only the summary on stdout, unless --tokens;
    the numbers are score's with the stride asked for."""
    text = long_text(300)
    path = tmp_path / "long.txt"
    path.write_text(text, encoding="utf-8")
    result = run("--prompt_file", str(path), "--score", "--stride", "16", "--models_dir", tiny_models,
                 *(["--tokens"] if tokens else []))
    assert result.returncode == 0, result.stderr
    encoder, hparams, params = load_encoder_hparams_and_params("124M", tiny_models)
    ids = encoder.encode(text)
    assert len(ids) > cli.TOKEN_LINES
    log_probs = gpt2.score(ids, params, hparams["n_head"], stride=16)
    lines = result.stdout.splitlines()
    assert len(lines) == (len(ids) + 1 if tokens else 1)
    assert lines[-1] == (f"total log-probability {log_probs.sum():.4f} over {len(ids)} tokens, "
                         f"perplexity {np.exp(-log_probs.mean()):.4f}")
    if tokens:
        np.testing.assert_allclose([float(line.split()[0]) for line in lines[:-1]], log_probs, atol=1e-4)
    windows = 1 + -(-(len(ids) - hparams["n_ctx"]) // 16)
    assert f"/{windows} [" in result.stderr  # tqdm's bar: "n/total [elapsed..."
    assert ("--tokens" in result.stderr) != tokens  # the hint how to get the lines, when they are left out


def test_positional_prompt_and_file_together(tiny_models, tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("Hi", encoding="utf-8")
    for prompt in ["Hello", ""]:
        assert_one_line_error(run(prompt, "--prompt_file", str(path), "--models_dir", tiny_models),
                              "either as an argument or with --prompt_file, not both")


def test_no_prompt_at_all(tiny_models):
    assert_one_line_error(run("--models_dir", tiny_models), "give a prompt", "--prompt_file")


def test_missing_file(tiny_models, tmp_path):
    path = tmp_path / "nowhere.txt"
    assert_one_line_error(run("--prompt_file", str(path), "--models_dir", tiny_models),
                          str(path), "No such file or directory")


def test_directory(tiny_models, tmp_path):
    assert_one_line_error(run("--prompt_file", str(tmp_path), "--score", "--models_dir", tiny_models),
                          str(tmp_path), "Is a directory")


@pytest.mark.parametrize("data, offset", [(b"caf\xe9 au lait", 3), ("ok ✓".encode("utf-8")[:-1], 3),
                                          (b"\xff", 0)])
def test_not_utf8_names_the_byte_offset(tiny_models, tmp_path, data, offset):
    path = tmp_path / "latin1.txt"
    path.write_bytes(data)
    assert_one_line_error(run("--prompt_file", str(path), "--models_dir", tiny_models),
                          str(path), "not UTF-8", f"byte offset {offset} (0x{data[offset]:02x})")


def test_not_utf8_on_stdin(tiny_models):
    assert_one_line_error(run("--prompt_file", "-", "--score", "--models_dir", tiny_models, stdin=b"ab\x80"),
                          "stdin is not UTF-8", "byte offset 2")


def test_empty_file_has_nothing_to_score(tiny_models, tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    assert_one_line_error(run("--prompt_file", str(path), "--score", "--models_dir", tiny_models),
                          "nothing to score")


@pytest.mark.parametrize("args, fragment", [(["--stride", "8"], "--stride goes with --score"),
                                            (["--tokens"], "--tokens goes with --score"),
                                            (["--score", "--stride", "0"], "--stride must be a whole number"),
                                            (["--score", "--stride", "abc"], "--stride must be a whole number"),
                                            (["--score", "--stride", "65"], "from 1 to 64"),
                                            (["--score", "--tokens=no"], "--tokens is a switch"),
                                            (["--score", "--temperature", "1"], "--temperature is for generating"),
                                            (["--score", "--top_k", "5", "--seed", "1"],
                                             "--top_k and --seed are for generating"),
                                            (["--score", "--top_p", "0.5"], "--top_p is for generating"),
                                            (["--score", "--ignore_eos"], "--ignore_eos is for generating"),
                                            (["--score", "--n_tokens_to_generate", "3"],
                                             "--n_tokens_to_generate is for generating")])
def test_bad_score_flags(tiny_models, args, fragment):
    assert_one_line_error(run("Hello there", *args, "--models_dir", tiny_models), fragment)
