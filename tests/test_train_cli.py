"""`python train.py ...` end to end in a subprocess, as a user runs it, on the tiny model: download, training,
OpenAI's checkpoint layout read back by TensorFlow, resuming bit for bit, SIGKILL while saving, Ctrl-C, and a
one-line error for each kind of bad input."""
import os
import signal
import time

import numpy as np
import pytest

import store
from helpers import DICKENS, assert_one_line_error, gpt2_cli, reference_greedy_text, start, tensorflow_arrays, train_cli
from server import serve
from utils import flatten, load_encoder_hparams_and_params

OPENAI_LAYOUT = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001", "model.ckpt.index",
                 "vocab.bpe")
FAST = ("--seq_len", "32", "--batch_size", "4", "--lr", "3e-3", "--warmup", "2", "--sample_every", "0")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "dickens.txt"
    path.write_text(DICKENS * 12, encoding="utf-8")
    return str(path)


def log_rows(out):
    with open(os.path.join(out, "log.csv"), encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    return [dict(zip(header.split(","), row.split(","))) for row in rows]


def data_bytes(out):
    with open(os.path.join(out, "model.ckpt.data-00000-of-00001"), "rb") as f:
        return f.read()


def test_download_fine_tune_and_generate_from_the_result(tiny_models, text, tmp_path):
    server = serve(tiny_models)
    try:
        result = train_cli("--data", text, "--models_dir", str(tmp_path / "models"), "--steps", "24", "--eval_every", "8",
                       *FAST, base_url=server.url)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    out = str(tmp_path / "models" / "124M-dickens")
    assert set(OPENAI_LAYOUT) <= set(os.listdir(out))
    assert "model.ckpt.meta" not in os.listdir(out)
    with open(os.path.join(out, "checkpoint"), encoding="utf-8") as f:
        assert f.read().startswith('model_checkpoint_path: "model.ckpt"\n')
    val = [(int(row["step"]), float(row["val_loss"])) for row in log_rows(out) if row["val_loss"]]
    print("validation loss by step:", val)
    assert [step for step, _ in val] == [0, 8, 16, 24] and val[-1][1] < val[0][1] - 1
    assert "step 24: saved to" in result.stdout

    _, hparams, params = load_encoder_hparams_and_params(model_dir=out)
    ours, theirs = flatten(params), tensorflow_arrays(out)
    assert sorted(ours) == sorted(theirs) and all(np.array_equal(ours[name], theirs[name]) for name in ours)
    _, _, start = load_encoder_hparams_and_params("124M", str(tmp_path / "models"))
    assert not np.array_equal(params["wte"], start["wte"])  # it learned

    generated = gpt2_cli("It was the", "--model_dir", out, "--n_tokens_to_generate", "8")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == reference_greedy_text(out, "It was the", 8)


def test_resume_gives_the_same_bits_as_one_run(tiny_models, text, tmp_path):
    model = ("--model_dir", os.path.join(tiny_models, "124M"))
    straight = train_cli("--data", text, *model, "--out", str(tmp_path / "straight"), "--steps", "10", *FAST)
    first = train_cli("--data", text, *model, "--out", str(tmp_path / "resumed"), "--steps", "5", *FAST)
    second = train_cli("--data", text, "--out", str(tmp_path / "resumed"), "--steps", "10", "--resume")
    for result in (straight, first, second):
        assert result.returncode == 0, result.stderr
    assert data_bytes(tmp_path / "straight") == data_bytes(tmp_path / "resumed")
    with np.load(tmp_path / "straight" / "train_state.npz") as a, np.load(tmp_path / "resumed" / "train_state.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(np.array_equal(a[name], b[name]) for name in a.files if name not in ("record",))
    assert [row["step"] for row in log_rows(tmp_path / "resumed")] == [str(step) for step in range(11)]


def test_sigkill_while_saving_leaves_a_save_that_resumes_bit_for_bit(tiny_models, text, tmp_path):
    """Killed in the middle of a save (while its .saving folder exists), the run always leaves one whole save:
    the folder loads, and resuming from it to the end gives exactly the weights of a run never killed."""
    args = ("--data", text, "--model_dir", os.path.join(tiny_models, "124M"), "--steps", "30", "--save_every", "1",
            "--eval_every", "0", *FAST)
    assert train_cli(*args, "--out", str(tmp_path / "straight")).returncode == 0
    out = str(tmp_path / "killed")
    saving = os.path.join(out, store.SAVING_DIR)
    for kill in range(3):
        process = start("train.py", *args, "--out", out, *(["--resume"] if kill else []))
        for line in process.stdout:  # in the loop that saves every step
            if "saved to" in line:
                break
        while not os.path.isdir(saving) and process.poll() is None:
            time.sleep(0.001)
        assert process.poll() is None, "the run ended before it was killed: give it more steps"
        process.kill()
        process.communicate()
        _, _, params = load_encoder_hparams_and_params(model_dir=out)  # whole, whatever the moment
        assert np.isfinite(params["wte"]).all() and not os.path.exists(saving)
    result = train_cli(*args, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr
    assert data_bytes(tmp_path / "straight") == data_bytes(out)


def test_ctrl_c_stops_at_once_and_keeps_the_last_save(tiny_models, text, tmp_path):
    out = str(tmp_path / "run")
    process = start("train.py", "--data", text, "--model_dir", os.path.join(tiny_models, "124M"), "--out", out,
                            "--steps", "100000", "--save_every", "3", "--eval_every", "0", *FAST)
    for line in process.stdout:
        if "saved to" in line:
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    with np.load(os.path.join(out, "train_state.npz")) as state:
        step = int(state["step"])
    assert step % 3 == 0 and step >= 3
    assert f"{out} holds step {step}, the last save" in err
    load_encoder_hparams_and_params(model_dir=out)


@pytest.mark.parametrize("lr, why, saved", [
    ("1e30", "the loss is nan", "holds step 1, the last save"),  # step 1 is finite (weights near 1e30), step 2 not
    ("1e39", "some weights are not finite", "nothing was saved yet"),  # step 1 overflows the weights themselves
])
def test_a_learning_rate_far_too_high_stops_before_saving_anything_wrong(tiny_models, text, tmp_path, lr, why, saved):
    out = str(tmp_path / "run")
    result = train_cli("--data", text, "--model_dir", os.path.join(tiny_models, "124M"), "--out", out, "--steps", "20",
                   "--save_every", "1", "--eval_every", "0", "--seq_len", "32", "--lr", lr, "--warmup", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr and "RuntimeWarning" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step 2 " if saved.startswith("holds") else "error: step 1 ") and why in last and "lower --lr" in last and saved in last, last
    if saved.startswith("holds"):
        _, _, params = load_encoder_hparams_and_params(model_dir=out)
        assert all(np.isfinite(p).all() for p in flatten(params).values())
    else:
        assert not os.path.exists(os.path.join(out, "train_state.npz"))


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    files = {"empty.txt": b"", "blank.txt": b" \n\n ", "latin1.txt": "caf\xe9 au lait".encode("latin-1"),
             "tiny.txt": b"Just a few words here, thirty tokens or so, not more than that at all, really."}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


BAD = [
    (["--data", "{short}/nowhere.txt"], "No such file or directory"),
    (["--data", "{short}"], "Is a directory"),
    (["--data", "{short}/empty.txt"], "holds no text"),
    (["--data", "{short}/blank.txt"], "holds no text"),
    (["--data", "{short}/latin1.txt"], "not UTF-8 text: byte offset 3"),
    (["--data", "{short}/tiny.txt", "--seq_len", "32"], "too few for one window of --seq_len 32 + 1: use --seq_len"),
    (["--data", "{text}", "--val_data", "{short}/tiny.txt", "--seq_len", "60"], "the validation part has"),
    (["--data", "{text}", "--seq_len", "65"], "longer than the model's context of 64"),
    (["--data", "{text}", "--steps", "0"], "--steps must be a whole number >= 1"),
    (["--data", "{text}", "--batch_size", "0"], "--batch_size must be a whole number >= 1"),
    (["--data", "{text}", "--accumulate", "-1"], "--accumulate must be a whole number >= 1"),
    (["--data", "{text}", "--lr", "0"], "--lr must be a number above 0"),
    (["--data", "{text}", "--lr", "-1e-4"], "--lr must be a number above 0"),
    (["--data", "{text}", "--resume=no"], "--resume is a switch"),
    ([], "give the text to learn: --data"),
    (["--data", "{text}", "--model_size", "355M"], "--model_size does not go with --model_dir"),
    (["--data", "{text}", "--out", "{model}"], "is the starting model's folder"),
    (["--data", "{text}", "--out", "{tmp}/124M"], "is named as OpenAI's downloads are"),
    (["--data", "{text}", "--out", "{short}"], "is not a new or empty folder"),
    (["--data", "{text}", "--out", "{tmp}/new", "--resume"], "holds no saved run of train.py"),
]


@pytest.mark.parametrize("args, fragment", BAD)
def test_bad_input_is_one_line_and_leaves_no_folder(tiny_models, text, short, tmp_path, args, fragment):
    model = os.path.join(tiny_models, "124M")
    args = [arg.format(short=short, text=text, model=model, tmp=tmp_path) for arg in args]
    before = sorted(os.listdir(tmp_path))
    result = train_cli(*args, "--model_dir", model)
    assert_one_line_error(result, fragment)
    assert sorted(os.listdir(tmp_path)) == before  # no model folder left behind
    assert not os.path.exists(f"{model}-dickens") and not os.path.exists(f"{model}-tiny")


def test_a_run_is_resumed_only_as_it_began(tiny_models, text, short, tmp_path):
    model = os.path.join(tiny_models, "124M")
    out = str(tmp_path / "run")
    assert train_cli("--data", text, "--model_dir", model, "--out", out, "--steps", "2", *FAST).returncode == 0
    assert_one_line_error(train_cli("--data", text, "--model_dir", model, "--out", out, "--steps", "4", *FAST),
                          "holds a run of train.py (at step 2): add --resume")
    assert_one_line_error(train_cli("--data", text, "--out", out, "--steps", "4", "--resume", "--lr", "1e-3"),
                          "--lr 0.001 is not the 0.003 that the run")
    other = tmp_path / "other.txt"
    other.write_text(DICKENS * 11, encoding="utf-8")
    assert_one_line_error(train_cli("--data", str(other), "--out", out, "--steps", "4", "--resume"),
                          "learned from another --data (its sha256 differs)")
    assert_one_line_error(train_cli("--data", text, "--out", out, "--steps", "2", "--resume"), "is at step 2 already")
    assert_one_line_error(train_cli("--data", text, "--out", out, "--steps", "4", "--resume", "--model_dir", str(short)),
                          "do not name the model the run in")
