"""The loader (utils.py) and its NumPy reader of OpenAI's checkpoint, against TensorFlow's own reader, and against
damage: every array bit for bit, zero-copy and read-only; checksums checked once per version of
the data file; any damaged index met with one documented error."""
import mmap
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tf_checkpoint
import utils
from checkpoints import _random_weights as random_weights, variable_shapes
from helpers import ROOT, SHAPES, model_seed, tensorflow_arrays
from utils import DamagedFile, flatten, load_encoder_hparams_and_params, load_gpt2_params_from_tf_ckpt

NO_TENSORFLOW = "import sys\nsys.modules['tensorflow'] = None  # then `import tensorflow` raises ImportError\n"


def assert_same_as_tensorflow(params, model_dir):
    expected, ours = tensorflow_arrays(model_dir), flatten(params)
    assert sorted(ours) == sorted(expected)
    for name, array in expected.items():
        assert ours[name].dtype == np.float32 and ours[name].shape == array.shape, name
        assert np.array_equal(ours[name], array), name  # bit for bit (no NaNs in random weights)


def mapped_file(array):
    """The mmap an array is a view of, or None if it owns its memory or views something else."""
    while isinstance(array, np.ndarray):
        array = array.base
    if isinstance(array, memoryview):  # np.frombuffer's base
        array = array.obj
    return array if isinstance(array, mmap.mmap) else None


@pytest.fixture
def model_dir(tiny_models, tmp_path):
    """A private copy of the tiny model's seven files."""
    shutil.copytree(os.path.join(tiny_models, "124M"), tmp_path / "124M",
                    ignore=shutil.ignore_patterns(utils.VERIFIED_FILE))
    return str(tmp_path / "124M")


@pytest.mark.parametrize("shape", ["tiny", "124M", "355M", "774M", "1558M"])
def test_reader_is_bit_identical_to_tensorflows(make_models, shape):
    models_dir, size = make_models(shape)
    model_dir = os.path.join(models_dir, size)
    params = load_gpt2_params_from_tf_ckpt(os.path.join(model_dir, "model.ckpt"), SHAPES[shape])
    assert list(params) == ["wte", "wpe", "blocks", "ln_f"] and len(params["blocks"]) == SHAPES[shape]["n_layer"]
    assert_same_as_tensorflow(params, model_dir)


def test_a_shape_has_the_same_weights_whatever_was_made_before(make_models):
    """The fixture seeds each shape's weights from its name, not from how many models came
    before it, so a test sees the same model in a full run and under -k."""
    models_dir, size = make_models("tiny")
    params = load_gpt2_params_from_tf_ckpt(os.path.join(models_dir, size, "model.ckpt"), SHAPES["tiny"])
    drawn = random_weights(variable_shapes(SHAPES["tiny"]), SHAPES["tiny"]["n_embd"], model_seed("tiny"))
    assert np.array_equal(params["wte"], drawn["model/wte"])
    assert np.array_equal(params["blocks"][1]["mlp"]["c_fc"]["w"], drawn["model/h1/mlp/c_fc/w"][0])


def test_every_array_is_a_read_only_view_of_the_data_file(model_dir):
    params = load_gpt2_params_from_tf_ckpt(os.path.join(model_dir, "model.ckpt"), SHAPES["tiny"])
    block = params["blocks"][0]
    assert block["attn"]["c_attn"]["w"].shape == (64, 192) and block["mlp"]["c_proj"]["w"].shape == (256, 64)
    for name, array in flatten(params).items():
        assert not array.flags.writeable, name  # nobody changes the weights by accident
        assert mapped_file(array) is not None, name  # nothing copied
        assert type(array) is np.ndarray, name  # not np.memmap, whose Python overhead slows every op


def test_loading_leaves_only_the_seven_files_and_the_marker(model_dir):
    load_encoder_hparams_and_params("124M", os.path.dirname(model_dir))
    assert sorted(os.listdir(model_dir)) == sorted([*utils.FILENAMES, utils.VERIFIED_FILE])
    assert os.path.getsize(os.path.join(model_dir, utils.VERIFIED_FILE)) < 1024


def test_checksums_are_checked_once_per_version_of_the_data_file(model_dir, monkeypatch):
    checked = []
    real = utils.load_gpt2_params_from_tf_ckpt

    def spy(path, hparams, verify=True):
        checked.append(verify)
        return real(path, hparams, verify)

    monkeypatch.setattr(utils, "load_gpt2_params_from_tf_ckpt", spy)
    for _ in range(2):
        load_encoder_hparams_and_params("124M", os.path.dirname(model_dir))
    data = os.path.join(model_dir, utils.DATA_FILE)
    os.utime(data, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new version, as far as anyone can tell
    load_encoder_hparams_and_params("124M", os.path.dirname(model_dir))
    assert checked == [True, False, True]


def test_a_start_needs_no_tensorflow(model_dir, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(NO_TENSORFLOW)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    blocked = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert "import of tensorflow halted" in blocked.stderr  # the blocker works
    code = ("import sys; from utils import load_encoder_hparams_and_params as load; "
            f"p = load('124M', {os.path.dirname(model_dir)!r})[2]; print(p['wte'].shape)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "(50257, 64)", result.stderr


def test_data_file_damaged_after_it_was_checked_is_caught_by_the_next_start(model_dir):
    load_encoder_hparams_and_params("124M", os.path.dirname(model_dir))
    data = os.path.join(model_dir, utils.DATA_FILE)
    with open(data, "r+b") as f:  # the same size; the new mtime makes it a new version
        f.seek(os.path.getsize(data) // 3)
        f.write(b"\x00\x01\x02\x03")
    os.utime(data, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(DamagedFile, match="does not match the checksums in model.ckpt.index"):
        utils.read_model_folder(model_dir)


def test_every_flipped_bit_of_the_index_is_caught(model_dir):
    """Block checksums cover the blocks, and the footer and the blocks' places are checked, so
    no single flipped bit anywhere in the index goes unnoticed."""
    with open(os.path.join(model_dir, utils.INDEX_FILE), "rb") as f:
        index = f.read()
    assert len(tf_checkpoint.parse_index(index)) == 4 + 12 * SHAPES["tiny"]["n_layer"]
    missed = []
    for i in range(len(index)):
        for bit in range(8):
            try:
                tf_checkpoint.parse_index(flip_bits(index, [(i, bit)]))
                missed.append((i, bit))
            except (ValueError, IndexError):
                pass
    assert missed == []


@pytest.fixture(scope="module")
def index_bytes(tiny_models):
    with open(os.path.join(tiny_models, "124M", utils.INDEX_FILE), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("index-fuzz")


def flip_bits(index, pairs):
    damaged = bytearray(index)
    for pos, bit in pairs:
        damaged[pos] ^= 1 << bit
    return bytes(damaged)


def damage(index):
    """Ways an index can be damaged: cut off, bits flipped, bytes overwritten or inserted, or not
    an index at all (random bytes, with or without the table's magic number at the end)."""
    n = len(index)
    cut = st.integers(0, n - 1).map(lambda k: index[:k])
    flips = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 7)), min_size=1, max_size=8).map(
        lambda pairs: flip_bits(index, pairs))
    overwrite = st.tuples(st.integers(0, n - 1), st.binary(min_size=1, max_size=64)).map(
        lambda p: index[:p[0]] + p[1] + index[p[0] + len(p[1]):])
    insert = st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=64)).map(
        lambda p: index[:p[0]] + p[1] + index[p[0]:])
    magic = tf_checkpoint.TABLE_MAGIC.to_bytes(8, "little")
    noise = st.binary(max_size=4096) | st.binary(max_size=4096).map(lambda b: b + magic)
    return cut | flips | overwrite | insert | noise


@settings(max_examples=400, deadline=1000)  # a hang or a huge allocation would blow the deadline
@given(data=st.data())
def test_damaged_index_gets_only_a_value_error(index_bytes, scratch, data):
    damaged = data.draw(damage(index_bytes))
    if damaged == index_bytes:
        return
    path = scratch / utils.INDEX_FILE
    path.write_bytes(damaged)
    with pytest.raises(ValueError):  # and nothing else: no IndexError, RecursionError, MemoryError
        tf_checkpoint.read_index(str(path))
