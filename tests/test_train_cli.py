"""`python train.py ...` end to end in a subprocess, as a user runs it, on the tiny model: download, training,
OpenAI's checkpoint layout read back by TensorFlow, resuming bit for bit, SIGKILL while saving, Ctrl-C, and a
one-line error for each kind of bad input."""
import os
import signal

import numpy as np
import pytest

import store
from helpers import DICKENS, assert_one_line_error, data_bytes, gpt2_cli, kill_while_saving, log_rows, \
    reference_greedy_text, start, straight_and_resumed, tensorflow_arrays, train_cli
from server import serve
from utils import flatten, load_encoder_hparams_and_params

OPENAI_LAYOUT = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001", "model.ckpt.index",
                 "vocab.bpe")
FAST = ("--seq_len", "32", "--batch_size", "4", "--lr", "3e-3", "--warmup", "2", "--sample_every", "0")


@pytest.fixture
def text(dickens):
    return dickens


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
    straight_and_resumed((*model, *FAST), text, tmp_path, 10)
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
        kill_while_saving(start("train.py", *args, "--out", out, *(["--resume"] if kill else [])), out)
        _, _, params = load_encoder_hparams_and_params(model_dir=out)  # whole, whatever the moment
        assert np.isfinite(params["wte"]).all() and not os.path.exists(saving)
    result = train_cli(*args, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr
    assert data_bytes(tmp_path / "straight") == data_bytes(out)


@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_stops_at_once_and_keeps_the_last_save(tiny_models, text, tmp_path, stop, code):
    """SIGTERM (docker stop, systemd, a job scheduler) ends a run as Ctrl-C does, saying which step --out holds."""
    out = str(tmp_path / "run")
    process = start("train.py", "--data", text, "--model_dir", os.path.join(tiny_models, "124M"), "--out", out,
                    "--steps", "100000", "--save_every", "3", "--eval_every", "0", *FAST)
    for line in process.stdout:
        if "saved to" in line:
            break
    process.send_signal(stop)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
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
             "tiny.txt": b"Just a few words here, thirty tokens or so, not more than that at all, really.",
             "nul.txt": DICKENS.encode()[:12] + b"\0" * 5000, "controls.txt": b"\x1b[0m\x07\x08ab" * 2000}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


BAD = [
    (["--data", "{short}/nowhere.txt"], "No such file or directory"),
    (["--data", "{short}"], "Is a directory"),
    (["--data", "{short}/empty.txt"], "holds no text"),
    (["--data", "{short}/blank.txt"], "holds no text"),
    (["--data", "{short}/latin1.txt"], "not UTF-8 text: byte offset 3"),
    (["--data", "{short}/nul.txt"], "holds NUL bytes at character 12: it is not a text file"),
    (["--data", "{text}", "--val_data", "{short}/controls.txt"], "is 38% control characters: it is not a text file"),
    (["--data", "{short}/tiny.txt", "--seq_len", "32"], "too few for one window of --seq_len 32 + 1: use --seq_len"),
    (["--data", "{text}", "--val_data", "{short}/tiny.txt", "--seq_len", "60"], "the validation part has"),
    (["--data", "{text}", "--seq_len", "65"], "longer than the model's context of 64"),
    (["--data", "{text}", "--steps", "0"], "--steps must be a whole number >= 1"),
    (["--data", "{text}", "--batch_size", "0"], "--batch_size must be a whole number >= 1"),
    (["--data", "{text}", "--accumulate", "-1"], "--accumulate must be a whole number >= 1"),
    (["--data", "{text}", "--lr", "0"], "--lr must be a number above 0"),
    (["--data", "{text}", "--lr", "-1e-4"], "--lr must be a number above 0"),
    (["--data", "{text}", "--resume=no"], "--resume is a switch"),
    (["--data", "{text}", "--keep_best", "1"], "--keep_best is a switch"),
    (["--data", "{text}", "--lr_schedule", "linear"], "--lr_schedule must be constant or cosine, not 'linear'"),
    (["--data", "{text}", "--min_lr", "1e-5"], "--min_lr goes with --lr_schedule cosine"),
    (["--data", "{text}", "--lr_schedule", "cosine", "--decay_steps", "20"], "--decay_steps must be a whole number >= 21"),
    (["--data", "{text}", "--lr_schedule", "cosine", "--min_lr", "-1"], "--min_lr must be a number >= 0"),
    (["--data", "{text}", "--keep_best", "--save_every", "5"], "--save_every does not go with --keep_best"),
    (["--data", "{text}", "--learning_rate", "1e-5"], "unknown flag --learning_rate: did you mean --lr?"),
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


def sample_lines(result):
    return [line for line in result.stdout.splitlines() if ", a sample: " in line]


def test_every_run_ends_with_a_sample_and_its_notes_have_lines_of_their_own(tiny_models, text, tmp_path):
    """A run shorter than --sample_every (or with 0) still shows the final sample; a note (here, that matplotlib
    is missing) is never printed over the progress bar's line."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    result = train_cli("--data", text, "--model_dir", os.path.join(tiny_models, "124M"), "--out",
                       str(tmp_path / "run"), "--steps", "3", *FAST, env={"PYTHONPATH": str(hide)})
    assert result.returncode == 0, result.stderr
    assert [line.split(",")[0] for line in sample_lines(result)] == ["step 3"]
    assert "note: matplotlib is not installed, so there is no loss.png (log.csv has the losses)" in \
        result.stderr.split("\n")
    assert not os.path.exists(tmp_path / "run" / "loss.png")


def test_a_folder_with_only_the_log_of_a_stopped_run_is_taken_over(tiny_models, text, tmp_path):
    """A run stopped before its first save leaves log.csv (and loss.png) alone: the same command again starts
    afresh there, and --resume says why it cannot, so the messages never send a user round in a circle."""
    out = str(tmp_path / "run")
    args = ("--data", text, "--model_dir", os.path.join(tiny_models, "124M"), "--out", out, "--steps", "3",
            "--seq_len", "32", "--warmup", "0", "--sample_every", "0")
    failed = train_cli(*args, "--lr", "1e39")
    last = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 1 and "lower --lr" in last and "nothing was saved yet" in last, failed.stderr
    assert sorted(os.listdir(out)) == ["log.csv", "loss.png"]
    assert_one_line_error(train_cli(*args, "--resume"), "holds no saved run of train.py (it stopped before its "
                                                        "first save): leave out --resume to start one")
    again = train_cli(*args, "--lr", "1e-3")
    assert again.returncode == 0, again.stderr
    assert f"note: {out} holds only the log of a run stopped before its first save: starting afresh" in again.stderr
    assert [row["step"] for row in log_rows(out)] == ["0", "1", "2", "3"]


def literal_cosine(step):
    """--lr 1e-3 --warmup 2 --lr_schedule cosine --min_lr 1e-4 --decay_steps 6, written out: 1e-3 x step / 2 in
    the warmup, then 1e-4 + 0.5 (1 + cos(pi (step - 2) / 4)) 9e-4 up to step 6, then 1e-4."""
    return {1: 5e-4, 2: 1e-3, 3: 1e-4 + 0.5 * (1 + 0.7071067811865476) * 9e-4, 4: 5.5e-4,
            5: 1e-4 + 0.5 * (1 - 0.7071067811865476) * 9e-4}.get(step, 1e-4)


def test_cosine_schedule_follows_its_formula_and_resumes_exactly(tiny_models, text, tmp_path):
    args = ("--model_dir", os.path.join(tiny_models, "124M"), "--seq_len", "32", "--lr", "1e-3", "--warmup", "2",
            "--lr_schedule", "cosine", "--min_lr", "1e-4", "--decay_steps", "6", "--sample_every", "0",
            "--eval_every", "0")
    straight_and_resumed(args, text, tmp_path, 8)
    for out in ("straight", "resumed"):
        rates = [float(row["lr"]) for row in log_rows(tmp_path / out) if row["lr"]]
        np.testing.assert_allclose(rates, [literal_cosine(step) for step in range(1, 9)], rtol=1e-5)  # 6 digits
    assert data_bytes(tmp_path / "straight") == data_bytes(tmp_path / "resumed")


def test_cosine_decays_over_the_steps_the_run_began_with(tiny_models, text, tmp_path):
    """Without --decay_steps the horizon is --steps as the run begins, recorded: a run taken further with
    --resume stays at min_lr (lr / 10 by default) after it, as it would have."""
    out = str(tmp_path / "run")
    first = train_cli("--data", text, "--model_dir", os.path.join(tiny_models, "124M"), "--out", out, "--steps", "4",
                      "--lr", "1e-3", "--warmup", "0", "--lr_schedule", "cosine", "--seq_len", "32",
                      "--sample_every", "0", "--eval_every", "0")
    second = train_cli("--data", text, "--out", out, "--steps", "6", "--resume")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    rates = [float(row["lr"]) for row in log_rows(out) if row["lr"]]
    # no warmup: the peak is at step 0, and step k is k / 4 of the way down
    np.testing.assert_allclose(rates, [1e-4 + 0.5 * (1 + 0.7071067811865476) * 9e-4, 5.5e-4,
                                       1e-4 + 0.5 * (1 - 0.7071067811865476) * 9e-4, 1e-4, 1e-4, 1e-4], rtol=1e-5)


def test_keep_best_saves_only_when_the_validation_loss_improves(tiny_models, text, tmp_path):
    """With a rate high enough to make the validation loss go down and up, the saves printed are exactly the
    steps whose loss in log.csv is below every earlier one (step 0's included), and --out holds the lowest."""
    out = str(tmp_path / "run")
    result = train_cli("--data", text, "--model_dir", os.path.join(tiny_models, "124M"), "--out", out, "--steps", "16",
                       "--eval_every", "1", "--keep_best", "--seq_len", "32", "--lr", "3e-2", "--warmup", "0",
                       "--sample_every", "0")
    assert result.returncode == 0, result.stderr
    losses = {int(row["step"]): float(row["val_loss"]) for row in log_rows(out)}
    new_lows = [step for step in losses if step > 0 and losses[step] < min(losses[s] for s in losses if s < step)]
    saved = [int(line.split(":")[0].removeprefix("step ")) for line in result.stdout.splitlines() if "saved to" in line]
    print("validation losses", losses, "saved at", saved)
    assert saved == new_lows and len(saved) < 16, "the losses never went up: raise --lr so that the test tests"
    with np.load(os.path.join(out, "train_state.npz")) as state:
        assert int(state["step"]) == min(losses, key=losses.get)
    assert f"the best validation loss was {min(losses.values()):.4f}" in result.stderr


def test_model_only_leaves_the_model_alone(tiny_models, text, tmp_path):
    out = str(tmp_path / "run")
    result = train_cli("--data", text, "--model_dir", os.path.join(tiny_models, "124M"), "--out", out, "--steps", "2",
                       "--model_only", *FAST)
    assert result.returncode == 0, result.stderr
    assert "train_state.npz" not in os.listdir(out) and set(OPENAI_LAYOUT) <= set(os.listdir(out))
    assert "cannot be resumed" in result.stderr
    load_encoder_hparams_and_params(model_dir=out)
    assert_one_line_error(train_cli("--data", text, "--out", out, "--steps", "4", "--resume"),
                          "holds no saved run of train.py (train_state.npz is missing)")
