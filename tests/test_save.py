"""utils.save_model_folder and store's atomic saves: a saved folder reads the same through the
project's loader and TensorFlow's, and a process killed at any moment of a save, or of the
finishing of one, leaves the previous save or the new one, never a mix."""
import contextlib
import itertools
import json
import os
import random
import signal
import time
import traceback

import numpy as np
import pytest

import store
import utils
from checkpoints import CHECKPOINT_NAME, assert_tensorflow_reads, bits, random_bits, tensorflow
from helpers import SHAPES
from utils import checkpoint_shapes, flatten, load_encoder_hparams_and_params, param_name, save_model_folder, unflatten
from vocab import vocab_dir

# A model so small that a save takes milliseconds; the loader does not hold n_vocab to the vocabulary's.
SMALL = dict(n_vocab=256, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
STATE_FILE = "train_state.npz"


def random_params(hparams, seed):
    """A parameter tree of random float32 bits (conv1d weights [nx, nf]) for these hparams."""
    rng = np.random.default_rng(seed)
    return unflatten({param_name(name): random_bits(shape[1:] if len(shape) == 3 else shape, rng)
                      for name, shape in checkpoint_shapes(hparams).items()}, hparams["n_layer"])


def test_a_saved_folder_reads_the_same_through_both_readers(tmp_path):
    params = random_params(SHAPES["tiny"], seed=3)
    model_dir = str(tmp_path / "tuned")
    save_model_folder(model_dir, params, SHAPES["tiny"], vocab_dir())
    _, hparams, loaded = load_encoder_hparams_and_params(model_dir=model_dir)
    assert hparams == SHAPES["tiny"]
    expected = flatten(params)
    assert sorted(flatten(loaded)) == sorted(expected)
    for name, array in flatten(loaded).items():
        assert np.array_equal(bits(array), bits(expected[name])), name
    # TensorFlow sees OpenAI's names and shapes (conv1d weights [1, nx, nf]) and nothing else.
    assert_tensorflow_reads(os.path.join(model_dir, CHECKPOINT_NAME),
                            {name: expected[param_name(name)].reshape(shape)
                             for name, shape in checkpoint_shapes(SHAPES["tiny"]).items()})
    # TensorFlow parses `checkpoint` and finds the prefix in the folder.
    assert tensorflow().train.latest_checkpoint(model_dir) == os.path.join(model_dir, CHECKPOINT_NAME)
    assert sorted(os.listdir(model_dir)) == sorted([*utils.MODEL_FILES, utils.VERIFIED_FILE])


def test_a_model_saved_again_is_tensorflows_files_byte_for_byte(make_models, tmp_path):
    """The tiny model, as TensorFlow 1's Saver wrote it, loaded and saved again: the same index,
    data, vocabulary and `checkpoint` files (OpenAI's names, order, shapes and nothing more)."""
    source = os.path.join(make_models("tiny")[0], "124M")
    _, hparams, params = load_encoder_hparams_and_params(model_dir=source)
    save_model_folder(str(tmp_path), params, hparams, source)
    for name in ["checkpoint", "encoder.json", "vocab.bpe", utils.INDEX_FILE, utils.DATA_FILE]:
        with open(os.path.join(source, name), "rb") as theirs, open(tmp_path / name, "rb") as ours:
            assert ours.read() == theirs.read(), name
    with open(tmp_path / "hparams.json") as f:
        assert list(json.load(f).items()) == list(hparams.items())


def test_a_new_save_replaces_every_file_of_the_last(tmp_path):
    model_dir = str(tmp_path)
    for step in (1, 2):
        save_step(model_dir, step)
        assert saved_step(model_dir) == step
    assert sorted(os.listdir(model_dir)) == sorted([*utils.MODEL_FILES, STATE_FILE, utils.VERIFIED_FILE])
    save_step(model_dir, 3)
    assert utils.VERIFIED_FILE not in os.listdir(model_dir)  # the checksums of the new files are checked anew
    assert saved_step(model_dir) == 3


def test_a_save_that_fails_leaves_the_last_one(tmp_path):
    model_dir = str(tmp_path)
    save_step(model_dir, 1)

    def full_disk(path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        save_model_folder(model_dir, small_params(2), small_hparams(2), vocab_dir(), {STATE_FILE: full_disk})
    assert not os.path.exists(os.path.join(model_dir, store.SAVING_DIR))
    assert saved_step(model_dir) == 1


@pytest.mark.parametrize("extra, message", [
    ("hparams.json", "one of the model's own files"),
    ("verified.json", "one of the model's own files"),
    ("../state.npz", "not a plain file name"),
    (".commit", "not a plain file name"),
])
def test_extra_files_are_plain_names_of_their_own(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        save_model_folder(str(tmp_path), small_params(0), SMALL, vocab_dir(), {extra: lambda path: None})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("change, message", [
    (lambda p: p["blocks"][0]["mlp"]["c_fc"].pop("w"), "blocks/0/mlp/c_fc/w must be a float32 array of shape "
                                                        r"\[8, 32\], not absent"),
    (lambda p: p.update(wte=p["wte"].astype(np.float64)), r"wte must be a float32 array of shape \[256, 8\], "
                                                          r"not float64 \[256, 8\]"),
    (lambda p: p.update(wpe=p["wpe"][:4]), r"wpe must be a float32 array of shape \[8, 8\], not float32 \[4, 8\]"),
    (lambda p: p["ln_f"].update(x=p["wte"]), "ln_f/x is not one of GPT-2's parameters"),
])
def test_params_must_be_exactly_the_models(tmp_path, change, message):
    params = small_params(0)
    change(params)
    with pytest.raises(ValueError, match=message):
        save_model_folder(str(tmp_path), params, SMALL, vocab_dir())


# ---------------------------------------------------------------------------------------------
# Killed while saving

def small_hparams(step):
    """n_ctx changes with the step, so that hparams.json of one save and weights of another do not load."""
    return dict(SMALL, n_ctx=SMALL["n_ctx"] + step % 2)


def small_params(step):
    return unflatten({param_name(name): np.full(shape[1:] if len(shape) == 3 else shape, step, np.float32)
                      for name, shape in checkpoint_shapes(small_hparams(step)).items()}, SMALL["n_layer"])


def save_step(model_dir, step):
    """Save the small model whose every weight is `step`, with `step` in its training state too."""
    save_model_folder(model_dir, small_params(step), small_hparams(step), vocab_dir(),
                      {STATE_FILE: lambda path: np.savez(path, step=step)})


def saved_step(model_dir):
    """The step whose save model_dir holds, through the loader (which finishes a save cut short
    first); AssertionError unless every weight, hparams.json and the state are of that one save."""
    _, hparams, params = load_encoder_hparams_and_params(model_dir=model_dir)
    with np.load(os.path.join(model_dir, STATE_FILE)) as state:
        step = int(state["step"])
    assert hparams == small_hparams(step)
    for name, array in flatten(params).items():
        assert (array == step).all(), f"{name} is of another save than {STATE_FILE}'s step {step}"
    assert sorted(os.listdir(model_dir)) == sorted([*utils.MODEL_FILES, STATE_FILE, utils.VERIFIED_FILE])
    return step


FILE_SYSTEM_CALLS = ("mkdir", "replace", "remove", "unlink", "rmdir", "fsync")  # every step a save takes


@contextlib.contextmanager
def counted_calls(on_call):
    """Within it, each file system call of FILE_SYSTEM_CALLS goes through on_call(n, name, args)
    first, n counting from 1. fsync is skipped: a killed process loses nothing that it wrote,
    since the operating system keeps it (fsync is for power cuts, which no test makes)."""
    count, real = itertools.count(1), {name: getattr(os, name) for name in FILE_SYSTEM_CALLS}

    def wrap(name):
        def call(*args, **kwargs):
            on_call(next(count), name, args)
            return None if name == "fsync" else real[name](*args, **kwargs)
        return call

    try:
        for name in FILE_SYSTEM_CALLS:
            setattr(os, name, wrap(name))
        yield
    finally:
        for name, function in real.items():
            setattr(os, name, function)


def in_child(action, kill_before=None):
    """Run action() in a forked child, which kills itself (SIGKILL) just before its
    kill_before-th file system call; True if it was killed, False if action finished first."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            def maybe_die(n, name, args):
                if n == kill_before:
                    os.kill(os.getpid(), signal.SIGKILL)

            with counted_calls(maybe_die):
                action()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the child failed: see its traceback above"
    return False


def finish_in_children(model_dir):
    """Finish an interrupted save the hard way: killed before its 1st file system call, then
    before its 2nd, and so on, until a run gets through. Returns how many were killed."""
    def finish():
        with store.folder_lock(model_dir):
            store.finish_interrupted_save(model_dir)

    kills = 0
    while in_child(finish, kill_before=kills + 1):
        kills += 1
    return kills


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks children to kill them")


@pytest.fixture
def no_fsync(monkeypatch):
    """Saves without fsync, many times faster: a killed process loses nothing it wrote (fsync is
    for power cuts, which no test makes)."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def commit_call(model_dir, step):
    """The number of the file system call that renames the commit record into place, in a save of step."""
    calls = []
    with counted_calls(lambda n, name, args: calls.append((n, name, args))):
        save_step(model_dir, step)
    return next(n for n, name, args in calls if name == "replace" and args[1].endswith(store.COMMIT_FILE))


@needs_fork
@pytest.mark.parametrize("first", [True, False])
def test_killed_before_any_step_of_a_save_leaves_the_old_save_or_the_new(tmp_path, first, no_fsync):
    """Before each file system call of a save in turn (into an empty folder, or over step 1), the
    saving process is killed. Over step 1, from the kill just before the commit record's rename
    on, the finishing too is then killed before each of its calls in turn (earlier kills leave
    less of the same to delete); the loader finishes the rest. What is left is the old save (or
    nothing) up to the commit record's rename, and the new one from then on: never a mix."""
    commit = commit_call(str(tmp_path / "dry run"), 2)
    k, outcomes = 0, []
    while True:
        k += 1
        model_dir = str(tmp_path / f"kill-{k}")
        if not first:
            save_step(model_dir, 1)
        if not in_child(lambda: save_step(model_dir, 2), kill_before=k):
            break
        if not first and k >= commit:
            finish_in_children(model_dir)
        if first and k <= commit:
            with pytest.raises(ValueError, match="hparams.json is missing|there is no model folder"):
                load_encoder_hparams_and_params(model_dir=model_dir)
            assert not os.path.exists(model_dir) or os.listdir(model_dir) == []  # nothing half-saved left
            outcomes.append(None)
        else:
            outcomes.append(saved_step(model_dir))
    old = None if first else 1
    assert outcomes == [old] * commit + [2] * (k - 1 - commit)
    assert k > commit + 5


@needs_fork
def test_killed_at_random_moments_while_saving_every_step(tmp_path, no_fsync):
    """A child saves step after step and is killed after a random delay, 40 times; each time the
    folder holds the last save the child finished or the one it was making."""
    model_dir = str(tmp_path)
    save_step(model_dir, 0)
    start = time.perf_counter()
    save_step(model_dir, 1)
    seconds = time.perf_counter() - start
    rng, step, outcomes = random.Random(0), 1, set()
    for _ in range(40):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            save_forever(model_dir, step + 1, write)
        os.close(write)
        time.sleep(rng.uniform(0, 3 * seconds))
        os.kill(pid, signal.SIGKILL)
        assert os.WIFSIGNALED(os.waitpid(pid, 0)[1]), "the child failed: see its traceback above"
        with os.fdopen(read) as f:
            done = [int(line) for line in f.read().split()]
        last_done = done[-1] if done else step
        step = saved_step(model_dir)
        assert step in (last_done, last_done + 1)
        outcomes.add(step - last_done)
    assert outcomes == {0, 1}  # killed both before and after a commit


def save_forever(model_dir, step, pipe):
    """In a forked child: save step, step + 1, ... each as the last one ends, writing each step
    to the pipe once it is saved. Never returns."""
    try:
        for step in itertools.count(step):
            save_step(model_dir, step)
            os.write(pipe, f"{step}\n".encode())
    finally:
        traceback.print_exc()
        os._exit(1)


def test_finishing_a_committed_save_is_idempotent(tmp_path):
    """A commit record, one of its files moved: finishing moves the rest, and again does nothing."""
    model_dir = str(tmp_path)
    save_step(model_dir, 1)
    calls = []

    def stop_after_two_moves(n, name, args):
        calls.append(name)
        if name == "replace" and calls.count("replace") == 3:  # after the commit record's rename and one move
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), counted_calls(stop_after_two_moves):
        save_step(model_dir, 2)
    assert os.path.exists(os.path.join(model_dir, store.SAVING_DIR, store.COMMIT_FILE))
    for _ in range(2):
        with store.settled_folder(model_dir):
            assert not os.path.exists(os.path.join(model_dir, store.SAVING_DIR))
    assert saved_step(model_dir) == 2


def test_a_damaged_commit_record_is_a_one_line_error(tmp_path):
    model_dir = str(tmp_path)
    save_step(model_dir, 1)
    os.mkdir(tmp_path / store.SAVING_DIR)
    (tmp_path / store.SAVING_DIR / store.COMMIT_FILE).write_text('["../../elsewhere"]')
    with pytest.raises(ValueError, match=r"\.commit is damaged.*delete"):
        load_encoder_hparams_and_params(model_dir=model_dir)
