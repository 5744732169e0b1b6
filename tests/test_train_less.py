"""`python train.py --lora_rank ...` and `--train_blocks ...` end to end, on the tiny model: what is saved is what
the formulas say (TensorFlow reads the merged weights; the frozen ones are the starting model's, bit for bit),
resuming is bit for bit, a changed starting model is refused, and bad flags are one-line errors."""
import json
import os
import shutil

import numpy as np
import pytest

from checkpoints import write_model
from helpers import SHAPES, assert_one_line_error, data_bytes, gpt2_cli, kill_while_saving, reference_greedy_text, \
    start, straight_and_resumed, tensorflow_arrays, train_cli

FAST = ("--seq_len", "32", "--lr", "1e-2", "--warmup", "0", "--sample_every", "0", "--eval_every", "0")


@pytest.fixture
def model(tiny_models, tmp_path):
    """A private copy of the tiny model, which a test may change."""
    return str(shutil.copytree(os.path.join(tiny_models, "124M"), tmp_path / "start"))


def test_lora_saves_the_merged_weights_and_the_adapters(model, dickens, tmp_path):
    """The checkpoint TensorFlow reads holds W + (alpha / r) A B, computed in float64 and rounded once, for each
    adapted weight (from adapters.npz and the starting model as TensorFlow reads it), and every other tensor as
    the starting model has it, bit for bit."""
    out = str(tmp_path / "run")
    result = train_cli("--data", dickens, "--model_dir", model, "--out", out, "--steps", "4", "--lora_rank", "4",
                       "--lora_alpha", "8", "--lora_targets", "c_attn,mlp.c_proj", *FAST)
    assert result.returncode == 0, result.stderr
    assert "LoRA adapters of rank 4 on c_attn,mlp.c_proj" in result.stderr
    saved, base = tensorflow_arrays(out), tensorflow_arrays(model)
    with np.load(os.path.join(out, "adapters.npz"), allow_pickle=False) as adapters:
        assert (int(adapters["rank"]), float(adapters["alpha"]), str(adapters["targets"])) == (4, 8.0,
                                                                                             "c_attn,mlp.c_proj")
        names = {name.rsplit("/", 1)[0] for name in adapters.files if name.endswith("/A")}
        assert names == {f"blocks/{i}/{layer}" for i in range(2) for layer in ("attn/c_attn", "mlp/c_proj")}
        for layer in names:
            A, B = adapters[layer + "/A"].astype(np.float64), adapters[layer + "/B"].astype(np.float64)
            assert np.abs(B).max() > 0  # it learned
            merged = (base[layer + "/w"].astype(np.float64) + 8 / 4 * (A @ B)).astype(np.float32)
            assert np.array_equal(saved[layer + "/w"], merged), layer
    for name in set(base) - {layer + "/w" for layer in names}:
        assert np.array_equal(saved[name], base[name]), name


def test_adapters_merged_at_load_give_the_merged_save(model, dickens, tmp_path):
    """gpt2.py --model_dir BASE --adapters RUN (the folder or its adapters.npz) prints what --model_dir RUN does."""
    out = str(tmp_path / "run")
    assert train_cli("--data", dickens, "--model_dir", model, "--out", out, "--steps", "3", "--lora_rank", "4",
                     *FAST).returncode == 0
    merged = gpt2_cli("It was the", "--model_dir", out, "--n_tokens_to_generate", "8")
    for adapters in (out, os.path.join(out, "adapters.npz")):
        at_load = gpt2_cli("It was the", "--model_dir", model, "--adapters", adapters, "--n_tokens_to_generate", "8")
        assert at_load.returncode == 0 and merged.returncode == 0, at_load.stderr + merged.stderr
        assert at_load.stdout == merged.stdout == reference_greedy_text(out, "It was the", 8)
    assert_one_line_error(gpt2_cli("Hi", "--model_dir", model, "--adapters", str(tmp_path)),
                          f"there are no adapters at {tmp_path / 'adapters.npz'}")
    other = tmp_path / "wide"
    write_model(other / "124M", {**SHAPES["tiny"], "n_embd": 32}, seed=5)
    assert_one_line_error(gpt2_cli("Hi", "--model_dir", str(other / "124M"), "--adapters", out),
                          "does not fit the model", "these adapters were trained on another model")


def test_lora_resumes_bit_for_bit_and_refuses_a_changed_starting_model(model, dickens, tmp_path):
    straight_and_resumed(("--model_dir", model, "--lora_rank", "4", *FAST), dickens, tmp_path, 6)
    assert data_bytes(tmp_path / "straight") == data_bytes(tmp_path / "resumed")
    assert (tmp_path / "straight" / "adapters.npz").read_bytes() == (tmp_path / "resumed" / "adapters.npz").read_bytes()
    write_model(model, SHAPES["tiny"], seed=99)  # the starting model is not what it was
    result = train_cli("--data", dickens, "--out", str(tmp_path / "resumed"), "--steps", "8", "--resume")
    assert_one_line_error(result, f"trains part of {model}, whose checkpoint has changed since the run began")


def test_lora_killed_while_saving_resumes_bit_for_bit(model, dickens, tmp_path):
    args = ("--data", dickens, "--model_dir", model, "--steps", "20", "--save_every", "1", "--lora_rank", "4", *FAST)
    assert train_cli(*args, "--out", str(tmp_path / "straight")).returncode == 0
    out = str(tmp_path / "killed")
    kill_while_saving(start("train.py", *args, "--out", out), out)
    result = train_cli(*args, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr
    assert data_bytes(tmp_path / "straight") == data_bytes(out)


def test_train_blocks_trains_the_last_blocks_alone_and_resumes_bit_for_bit(model, dickens, tmp_path):
    straight, _, _ = straight_and_resumed(("--model_dir", model, "--train_blocks", "1", *FAST), dickens, tmp_path, 4)
    assert "the last block and ln_f (" in straight.stderr
    assert data_bytes(tmp_path / "straight") == data_bytes(tmp_path / "resumed")
    saved, base = tensorflow_arrays(tmp_path / "straight"), tensorflow_arrays(model)
    for name in base:
        trains = name.startswith(("blocks/1/", "ln_f/"))
        assert np.array_equal(saved[name], base[name]) != trains, name
    with np.load(tmp_path / "straight" / "train_state.npz") as state:  # AdamW's moments of what trains alone
        assert {name[2:] for name in state.files if name.startswith("m/")} == {
            name for name in base if name.startswith(("blocks/1/", "ln_f/"))}
        assert json.loads(str(state["record"]))["flags"]["train_blocks"] == 1


@pytest.mark.parametrize("args, fragment", [
    (["--lora_rank", "65"], "--lora_rank 65 does not fit this model: rank must be at most 64"),
    (["--lora_rank", "-1"], "--lora_rank must be a whole number >= 0"),
    (["--lora_rank", "4", "--lora_targets", "c_attn,q_proj"], "--lora_targets must name each of c_attn,"),
    (["--lora_rank", "4", "--lora_targets", "c_fc,c_fc"], "--lora_targets must name each of"),
    (["--lora_rank", "4", "--lora_alpha", "0"], "--lora_alpha must be a number above 0"),
    (["--lora_alpha", "16"], "--lora_alpha goes with --lora_rank"),
    (["--train_blocks", "0"], "--train_blocks must be a whole number >= 1"),
    (["--train_blocks", "3"], "--train_blocks 3 is more than the model's 2 blocks"),
])
def test_bad_flags_are_one_line_errors(model, dickens, tmp_path, args, fragment):
    result = train_cli("--data", dickens, "--model_dir", model, "--out", str(tmp_path / "run"), *args, *FAST)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()
