"""Loading the TF checkpoint, and the NumPy parameter cache kept beside it."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from checkpoints import write_model
from conftest import ROOT, SHAPES
from utils import flatten, load_encoder_hparams_and_params, load_gpt2_params_from_tf_ckpt


def checkpoint_arrays(model_dir):
    """Every variable as TensorFlow reads it, under the loader's names (model/h3/x -> blocks/3/x)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(model_dir, "model.ckpt"))
    arrays = {}
    for name in reader.get_variable_to_shape_map():
        key = name.removeprefix("model/")
        if key.startswith("h") and key[1].isdigit():
            layer, rest = key[1:].split("/", 1)
            key = f"blocks/{layer}/{rest}"
        array = reader.get_tensor(name)
        arrays[key] = array[0] if array.ndim == 3 else array
    return arrays


@pytest.fixture
def model_dir(tiny_models, tmp_path):
    """A private copy of the tiny model, without a parameter cache yet."""
    shutil.copytree(os.path.join(tiny_models, "124M"), tmp_path / "124M",
                    ignore=shutil.ignore_patterns("params.*"))
    return str(tmp_path / "124M")


def load(model_dir):
    return load_encoder_hparams_and_params("124M", os.path.dirname(model_dir))[2]


def assert_same_as_checkpoint(params, model_dir):
    expected, ours = checkpoint_arrays(model_dir), flatten(params)
    assert sorted(ours) == sorted(expected)
    for name, array in expected.items():
        assert ours[name].dtype == np.float32 and ours[name].shape == array.shape, name
        assert np.array_equal(ours[name], array), name  # bit for bit


def test_tf_loader_gives_the_nested_tree(model_dir):
    hparams = SHAPES["tiny"]
    params = load_gpt2_params_from_tf_ckpt(os.path.join(model_dir, "model.ckpt"), hparams)
    assert list(params) == ["wte", "wpe", "blocks", "ln_f"] and len(params["blocks"]) == hparams["n_layer"]
    block = params["blocks"][0]
    assert block["attn"]["c_attn"]["w"].shape == (64, 192) and block["mlp"]["c_proj"]["w"].shape == (256, 64)
    assert_same_as_checkpoint(params, model_dir)


def test_cache_holds_bit_identical_arrays(model_dir):
    first = load(model_dir)  # converts the checkpoint and writes the cache
    assert os.path.exists(os.path.join(model_dir, "params.npy"))
    second = load(model_dir)  # memory-mapped from the cache
    assert not second["wte"].flags.writeable  # nobody can change the weights by accident
    assert_same_as_checkpoint(first, model_dir)
    assert_same_as_checkpoint(second, model_dir)


def test_cached_start_does_not_import_tensorflow(model_dir):
    load(model_dir)
    code = ("import sys; from utils import load_encoder_hparams_and_params as load; "
            f"load('124M', {os.path.dirname(model_dir)!r}); print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_cache_is_rebuilt_when_the_checkpoint_changes(model_dir):
    load(model_dir)
    write_model(model_dir, SHAPES["tiny"], seed=99)  # new weights under the same names
    assert_same_as_checkpoint(load(model_dir), model_dir)


def test_interrupted_cache_write_is_never_used(model_dir):
    params = load(model_dir)
    wte = np.array(params["wte"])
    del params
    # A write that died half-way: the manifest goes first, then a short params.npy stays behind.
    os.remove(os.path.join(model_dir, "params.json"))
    with open(os.path.join(model_dir, "params.npy"), "r+b") as f:
        f.truncate(1000)
    with open(os.path.join(model_dir, "params.npy.tmp"), "wb") as f:
        f.write(b"\0" * 100)
    params = load(model_dir)
    assert np.array_equal(params["wte"], wte)
    assert_same_as_checkpoint(params, model_dir)


def test_damaged_cache_with_its_manifest_is_rebuilt(model_dir):
    load(model_dir)
    with open(os.path.join(model_dir, "params.npy"), "r+b") as f:
        f.truncate(4096)
    assert_same_as_checkpoint(load(model_dir), model_dir)


def test_cache_is_rebuilt_when_hparams_change(model_dir):
    load(model_dir)
    path = os.path.join(model_dir, "hparams.json")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:  # now it disagrees with the checkpoint: that must be noticed
        f.write(text.replace('"n_layer": 2', '"n_layer": 1'))
    with pytest.raises(ValueError, match="different models"):
        load(model_dir)


def test_cache_that_cannot_be_written_leaves_nothing_and_runs_from_memory(model_dir, monkeypatch, capsys):
    import utils

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(utils.os, "fsync", disk_full)
    params = load(model_dir)
    assert "could not write the parameter cache" in capsys.readouterr().err
    assert not [f for f in os.listdir(model_dir) if f.startswith("params.")]
    assert_same_as_checkpoint(params, model_dir)
