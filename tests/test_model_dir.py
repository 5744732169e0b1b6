"""`python gpt2.py --model_dir PATH`: a model folder used as it is (one save_model_folder wrote, or
the five files alone), against the TensorFlow reference; nothing downloaded, nothing set aside,
and a one-line error for what is missing, damaged or given with it."""
import filecmp
import json
import os
import shutil

import numpy as np
import pytest

import store
from checkpoints import reference_log_probs
from store import REQUIRED_FILES
from helpers import PROMPT, assert_one_line_error, gpt2_cli as run, reference_greedy_text
from utils import MODEL_FILES, load_encoder_hparams_and_params, save_model_folder


@pytest.fixture(scope="module")
def tuned(tiny_models, tmp_path_factory):
    """A folder that save_model_folder wrote: the tiny model with its token embeddings' rows moved
    by one, so that it is a model of its own, not the one it came from."""
    source = os.path.join(tiny_models, "124M")
    _, hparams, params = load_encoder_hparams_and_params(model_dir=source)
    params = {**params, "wte": np.roll(params["wte"], 1, axis=0)}
    model_dir = str(tmp_path_factory.mktemp("tuned") / "124M-my_text")
    save_model_folder(model_dir, params, hparams, source)
    return model_dir


def test_a_saved_folder_generates_what_tensorflow_does_on_it(tuned, tiny_models):
    result = run(PROMPT, "--n_tokens_to_generate", "8", "--model_dir", tuned)
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference_greedy_text(tuned, PROMPT, 8)
    assert result.stdout != reference_greedy_text(os.path.join(tiny_models, "124M"), PROMPT, 8)  # not the source's


def test_a_saved_folder_scores_as_tensorflow_does(tuned):
    result = run("Hello there", "--score", "--model_dir", tuned)
    assert result.returncode == 0, result.stderr
    ids = [15496, 612]  # "Hello there"
    total = reference_log_probs(tuned, ids).sum()
    assert f"total log-probability {total:.4f} over 2 tokens" in result.stdout


def test_the_five_files_alone_are_enough(tiny_models, tmp_path):
    source = os.path.join(tiny_models, "124M")
    for name in REQUIRED_FILES:
        shutil.copyfile(os.path.join(source, name), tmp_path / name)
    result = run(PROMPT, "--n_tokens_to_generate", "6", "--model_dir", str(tmp_path), "--n_samples", "2",
                 "--temperature", "1", "--top_k", "1")  # top_k 1: each sample is the greedy text
    assert result.returncode == 0, result.stderr
    greedy = reference_greedy_text(source, PROMPT, 6)
    assert result.stdout == "".join(f"======== SAMPLE {i} ========\n{greedy}\n" for i in (1, 2))


def test_a_save_cut_short_after_its_commit_is_finished_first(tuned, tiny_models, tmp_path):
    """The tiny model in place, the tuned one's files committed in .saving/, and the kill after the
    first of them (the index) was moved: a mix, which the run must finish into the tuned model."""
    model_dir, saving = tmp_path / "folder", tmp_path / "folder" / store.SAVING_DIR
    shutil.copytree(os.path.join(tiny_models, "124M"), model_dir, ignore=shutil.ignore_patterns("verified.json"))
    saving.mkdir()
    for name in MODEL_FILES:
        shutil.copyfile(os.path.join(tuned, name), saving / name)
    (saving / store.COMMIT_FILE).write_text(json.dumps(sorted(MODEL_FILES)))
    os.replace(saving / "model.ckpt.index", model_dir / "model.ckpt.index")
    result = run(PROMPT, "--n_tokens_to_generate", "8", "--model_dir", str(model_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference_greedy_text(tuned, PROMPT, 8)
    assert not saving.exists()
    assert all(filecmp.cmp(model_dir / name, os.path.join(tuned, name), shallow=False) for name in MODEL_FILES)


def test_a_save_cut_short_before_its_commit_is_dropped(tuned, tmp_path):
    model_dir = tmp_path / "folder"
    shutil.copytree(tuned, model_dir)
    (model_dir / store.SAVING_DIR).mkdir()
    (model_dir / store.SAVING_DIR / "model.ckpt.index").write_bytes(b"half a")
    result = run(PROMPT, "--n_tokens_to_generate", "8", "--model_dir", str(model_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference_greedy_text(tuned, PROMPT, 8)
    assert not (model_dir / store.SAVING_DIR).exists()


@pytest.mark.parametrize("name", REQUIRED_FILES)
def test_a_missing_file_is_named_and_nothing_is_downloaded(tuned, tmp_path, name):
    shutil.copytree(tuned, tmp_path / "m")
    (tmp_path / "m" / name).unlink()
    assert_one_line_error(run("Hi", "--model_dir", str(tmp_path / "m")), str(tmp_path / "m" / name), "is missing",
                          "nothing is downloaded")


@pytest.mark.parametrize("name", ["hparams.json", "vocab.bpe", "model.ckpt.index", "model.ckpt.data-00000-of-00001"])
def test_a_damaged_file_is_named_and_left_as_it_is(tuned, tmp_path, name):
    shutil.copytree(tuned, tmp_path / "m", ignore=shutil.ignore_patterns("verified.json"))
    path = tmp_path / "m" / name
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    damaged = path.read_bytes()
    assert_one_line_error(run("Hi", "--model_dir", str(tmp_path / "m")), str(path), "nothing is downloaded")
    assert path.read_bytes() == damaged and not os.path.exists(str(path) + ".part")  # not set aside


def test_a_folder_of_two_models_is_called_inconsistent_not_sent_to_download(tuned, tmp_path):
    """Its index and hparams.json disagree: no download can mend a model_dir, so the message says what is wrong."""
    shutil.copytree(tuned, tmp_path / "m", ignore=shutil.ignore_patterns("verified.json"))
    path = tmp_path / "m" / "hparams.json"
    path.write_text(path.read_text().replace('"n_layer": 2', '"n_layer": 3'))
    result = run("Hi", "--model_dir", str(tmp_path / "m"))
    assert_one_line_error(result, f"{tmp_path / 'm'} is inconsistent", "are of different models (2 layers in the "
                          "index, 3 by hparams)", "copy a whole model folder in")
    assert "download" not in result.stderr


def test_no_such_folder(tmp_path):
    assert_one_line_error(run("Hi", "--model_dir", str(tmp_path / "nowhere")), "there is no model folder",
                          str(tmp_path / "nowhere"))
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--model_size", "355M"], "--model_size does not go with --model_dir"),
    (["--models_dir", "elsewhere"], "--models_dir does not go with --model_dir"),
    (["--model_size", "355M", "--models_dir", "elsewhere"], "--model_size and --models_dir do not go with --model_dir"),
])
def test_model_dir_goes_alone(tuned, args, fragment):
    assert_one_line_error(run("Hi", "--model_dir", tuned, *args), fragment)


def test_model_dir_is_taken_verbatim(tuned, tmp_path):
    """A folder named like a number ("1e3") is a folder, not the number 1000.0."""
    shutil.copytree(tuned, tmp_path / "1e3")
    result = run(PROMPT, "--n_tokens_to_generate", "3", "--model_dir", "1e3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference_greedy_text(tuned, PROMPT, 3)


def test_the_loader_takes_model_dir_alone(tuned):
    with pytest.raises(ValueError, match="give model_dir alone"):
        load_encoder_hparams_and_params("355M", model_dir=tuned)
