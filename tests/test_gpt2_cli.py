"""`python gpt2.py ...` end to end in a subprocess, as a user runs it: download from a local
mirror, generation, and a clear one-line error for each kind of bad input."""
import filecmp
import os
import shutil

import pytest

from helpers import PROMPT, assert_one_line_error, gpt2_cli as run, reference_greedy_text
from server import serve
from utils import FILENAMES, VERIFIED_FILE


@pytest.fixture(scope="module")
def source(tiny_models):
    """The tiny model's seven files, as a mirror would serve them."""
    return os.path.join(tiny_models, "124M")


def test_download_then_generate_then_offline(source, tmp_path):
    server = serve(os.path.dirname(source))
    try:
        first = run(PROMPT, "--n_tokens_to_generate", "8", "--models_dir", str(tmp_path), base_url=server.url)
    finally:
        server.shutdown()
    assert first.returncode == 0, first.stderr
    for name in FILENAMES:
        assert filecmp.cmp(tmp_path / "124M" / name, os.path.join(source, name), shallow=False), name
    assert not [p for p in os.listdir(tmp_path / "124M") if p.endswith(".part")]
    expected = reference_greedy_text(source, PROMPT, 8)
    assert first.stdout == expected
    second = run(PROMPT, "--n_tokens_to_generate=8", "--models_dir", str(tmp_path))  # no server now
    assert second.returncode == 0, second.stderr
    assert second.stdout == expected


def test_first_run_without_tensorflow(source, tmp_path):
    """Download, checksums, generation: a machine without TensorFlow needs none of it."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['tensorflow'] = None  # `import tensorflow` fails\n")
    server = serve(os.path.dirname(source))
    try:
        result = run(PROMPT, "--n_tokens_to_generate", "8", "--models_dir", str(tmp_path / "models"),
                     base_url=server.url, env={"PYTHONPATH": str(tmp_path)})
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference_greedy_text(source, PROMPT, 8)
    assert "tensorflow" not in result.stderr.lower() and "cuda" not in result.stderr.lower()
    assert sorted(os.listdir(tmp_path / "models" / "124M")) == sorted([*FILENAMES, VERIFIED_FILE])


def test_folder_of_another_size_is_refused(source, tmp_path):
    """OpenAI's 124M hparams in models/355M: refused before anything is read or fetched."""
    shutil.copytree(source, tmp_path / "355M")
    (tmp_path / "355M" / "hparams.json").write_text('{"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, '
                                                    '"n_head": 12, "n_layer": 12}')
    result = run("Hi", "--model_size", "355M", "--models_dir", str(tmp_path))
    assert_one_line_error(result, "hparams.json is GPT-2 124M's", "not 355M's", str(tmp_path / "124M"))


def test_prompt_is_taken_verbatim(tiny_models):
    """fire would read "1e3" as a number; the model must see the text as typed."""
    result = run("1e3", "--n_tokens_to_generate", "4", "--models_dir", tiny_models)
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference_greedy_text(os.path.join(tiny_models, "124M"), "1e3", 4)


def test_empty_prompt_starts_from_endoftext(tiny_models):
    result = run("", "--n_tokens_to_generate", "3", "--models_dir", tiny_models)
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference_greedy_text(os.path.join(tiny_models, "124M"), "", 3)


@pytest.mark.parametrize("size", ["7B", "../x", "124M/../355M"])
def test_unknown_model_size(tiny_models, size):
    assert_one_line_error(run("Hi", "--model_size", size, "--models_dir", tiny_models),
                          "unknown model size", "124M, 355M, 774M, 1558M")


def test_prompt_plus_tokens_longer_than_context(tiny_models):
    result = run(" word" * 60, "--n_tokens_to_generate", "10", "--models_dir", tiny_models)
    assert_one_line_error(result, "60 tokens", "10 more", "at most 64")


@pytest.mark.parametrize("n", ["-1", "abc"])
def test_bad_token_count(tiny_models, n):
    assert_one_line_error(run("Hi", f"--n_tokens_to_generate={n}", "--models_dir", tiny_models),
                          "n_tokens_to_generate")


def test_unquoted_prompt_of_several_words_says_to_quote_it(tiny_models):
    """`python gpt2.py Hello world`: fire reads "world" as n_tokens_to_generate."""
    assert_one_line_error(run("Hello", "world", "--models_dir", tiny_models),
                          "not 'world'", 'a prompt of several words goes in quotes')


def test_no_network_and_no_files(tmp_path):
    result = run("Hi", "--models_dir", str(tmp_path))
    assert_one_line_error(result, "http://127.0.0.1:", "/124M/", "GPT2_BASE_URL")


def test_truncated_data_file_is_named(source, tmp_path):
    shutil.copytree(source, tmp_path / "124M", ignore=shutil.ignore_patterns(VERIFIED_FILE))
    data = tmp_path / "124M" / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    assert_one_line_error(run("Hi", "--models_dir", str(tmp_path)), "model.ckpt.data-00000-of-00001")


@pytest.mark.parametrize("name", ["hparams.json", "encoder.json", "vocab.bpe", "model.ckpt.index"])
def test_truncated_small_file_is_named(source, tmp_path, name):
    shutil.copytree(source, tmp_path / "124M", ignore=shutil.ignore_patterns(VERIFIED_FILE))
    path = tmp_path / "124M" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_one_line_error(run("Hi", "--models_dir", str(tmp_path)), name)


def test_missing_file_offline_names_the_url(source, tmp_path):
    shutil.copytree(source, tmp_path / "124M")
    (tmp_path / "124M" / "vocab.bpe").unlink()
    assert_one_line_error(run("Hi", "--models_dir", str(tmp_path)), "/124M/vocab.bpe")
