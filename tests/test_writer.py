"""tf_checkpoint's writer against TensorFlow: what it writes, TensorFlow reads bit for bit; what
TensorFlow writes, it writes again byte for byte; and anything it writes, the project's reader
reads back as it was given."""
import os
import random
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tf_checkpoint
import utils
from checkpoints import assert_tensorflow_reads, bits, random_bits, tensorflow
from helpers import SHAPES

OPENAI_HPARAMS = {size: dict(n_vocab=50257, n_ctx=1024, n_embd=SHAPES[size]["n_embd"], n_head=SHAPES[size]["n_head"],
                             n_layer=1) for size in ("124M", "355M", "774M", "1558M")}


def write(tmp_path, tensors, **options):
    prefix = str(tmp_path / "model.ckpt")
    tf_checkpoint.write_checkpoint(prefix + ".index", prefix + ".data-00000-of-00001", tensors, **options)
    return prefix


@pytest.mark.parametrize("size", OPENAI_HPARAMS)
def test_every_real_layer_shape_is_read_by_tensorflow_bit_for_bit(size, tmp_path):
    """Each size's real wte and wpe and one block of its real shapes (the other layers only
    repeat them). The tensors are slices of one buffer of random bits, so making them is cheap."""
    shapes = utils.checkpoint_shapes(OPENAI_HPARAMS[size])
    pool = random_bits(sum(int(np.prod(shape)) for shape in shapes.values()), np.random.default_rng(1))
    tensors, start = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        tensors[name], start = pool[start:start + n].reshape(shape), start + n
    assert_tensorflow_reads(write(tmp_path, tensors), tensors)


def test_a_tensorflow_checkpoint_is_written_again_byte_for_byte(make_models, tmp_path):
    """The tiny model, saved by TensorFlow 1's Saver, read by the project and written again in
    the data file's order: both files come out identical, and both readers agree."""
    source = os.path.join(make_models("tiny")[0], "124M", "model.ckpt")
    entries = tf_checkpoint.read_index(source + ".index")
    arrays = tf_checkpoint.read_tensors(source + ".data-00000-of-00001", entries)
    in_file_order = dict(sorted(arrays.items(), key=lambda item: entries[item[0]]["offset"]))
    prefix = write(tmp_path, in_file_order)
    for suffix in (".index", ".data-00000-of-00001"):
        with open(source + suffix, "rb") as theirs, open(prefix + suffix, "rb") as ours:
            assert ours.read() == theirs.read(), suffix
    assert_tensorflow_reads(prefix, arrays)
    ours = tf_checkpoint.read_tensors(prefix + ".data-00000-of-00001", tf_checkpoint.read_index(prefix + ".index"))
    assert all(np.array_equal(bits(ours[name]), bits(array)) for name, array in arrays.items())


def tensorflow_save(prefix, tensors):
    """TensorFlow's own writer (the SaveV2 op, which writes in the order given) on these tensors."""
    tf = tensorflow()
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=list(tensors), shape_and_slices=[""] * len(tensors),
                      tensors=[tf.constant(array) for array in tensors.values()])


def assert_same_files(tmp_path, tensors, **options):
    """The project's writer and TensorFlow's write the same two files for these tensors."""
    ours = write(tmp_path, tensors, **options)
    theirs = str(tmp_path / "theirs")
    tensorflow_save(theirs, tensors)
    for suffix in (".index", ".data-00000-of-00001"):
        with open(ours + suffix, "rb") as a, open(theirs + suffix, "rb") as b:
            assert a.read() == b.read(), suffix


def test_an_index_of_many_blocks_is_tensorflows(tmp_path):
    """12,000 names fill two data blocks of TensorFlow's 256 KiB: where the first block closes,
    the index block's keys between and after the blocks, and every restart point agree. The
    names' numbers go in steps of 7, so that the key between two blocks can be shortened."""
    names = [f"layer/{7 * i:05d}/a_name_long_enough_to_fill_blocks" for i in range(12000)]
    random.Random(0).shuffle(names)
    tensors = {name: np.float32(i) for i, name in enumerate(names)}
    assert_same_files(tmp_path, tensors)
    assert len(set(tf_checkpoint.read_index(str(tmp_path / "theirs.index")))) == 12000


# Names from a small alphabet share prefixes often; non-ASCII letters take 2 to 4 bytes in UTF-8.
NAMES = st.text(alphabet=st.sampled_from("ab/_0é\u00ff\u0100\uffff\U0001f600"), min_size=1, max_size=10)
SHAPES_ = st.lists(st.integers(0, 4), max_size=3)  # [] is a scalar; a 0 makes a tensor with no elements


@st.composite
def tensor_dicts(draw, min_size=0):
    names = draw(st.lists(NAMES, min_size=min_size, max_size=40, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return {name: random_bits(draw(SHAPES_), rng) for name in names}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensors=tensor_dicts(min_size=1))  # SaveV2 takes at least one
def test_tensorflow_writes_the_same_files(tmp_path, tensors):
    assert_same_files(tmp_path, tensors)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensors=tensor_dicts(), block_size=st.integers(1, 400))
def test_round_trip_through_the_projects_reader(tmp_path, tensors, block_size):
    """Small blocks make many data blocks, restart points within them and index keys between them."""
    prefix = write(tmp_path, tensors, block_size=block_size)
    entries = tf_checkpoint.read_index(prefix + ".index")
    arrays = tf_checkpoint.read_tensors(prefix + ".data-00000-of-00001", entries)
    assert list(arrays) == sorted(tensors, key=str.encode)
    for name, array in tensors.items():
        assert arrays[name].shape == array.shape and np.array_equal(bits(arrays[name]), bits(array)), name


def layouts(array):
    """The same values as other arrays would hold them: reversed axes (a transposed copy seen
    through a transpose), every other element of something larger, big-endian."""
    transposed = np.ascontiguousarray(array.T).T
    strided = np.empty((*array.shape[:-1], 2 * array.shape[-1]), np.float32)[..., ::2]
    strided[...] = array
    return {"transposed": transposed, "strided": strided, "big-endian": array.astype(">f4")}


@pytest.mark.parametrize("piece_bytes", [tf_checkpoint.PIECE_BYTES, 64, 4])
def test_any_float32_layout_is_written_in_little_endian_c_order(tmp_path, piece_bytes):
    """Views and big-endian arrays go in pieces of at most piece_bytes (rows, or parts of one)."""
    array = random_bits((3, 5, 7), np.random.default_rng(2))
    tensors = layouts(array)
    with mock.patch.object(tf_checkpoint, "PIECE_BYTES", piece_bytes):
        prefix = write(tmp_path, tensors)
    assert_tensorflow_reads(prefix, dict.fromkeys(tensors, array))


def test_both_files_are_on_disk_when_it_returns(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync  # the files' inode numbers
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_ino) or real_fsync(fd))
    prefix = write(tmp_path, {"x": np.ones(3, np.float32)})
    assert sorted(synced) == sorted(os.stat(prefix + suffix).st_ino for suffix in (".index", ".data-00000-of-00001"))


@pytest.mark.parametrize("tensors, message", [
    ({"x": np.ones(3)}, "x is float64, not float32"),
    ({"x": np.ones(3, np.float16)}, "x is float16, not float32"),
    ({"x": np.ones(3, np.int32)}, "x is int32, not float32"),
    ({"": np.ones(3, np.float32)}, "non-empty strings"),
    ({1: np.ones(3, np.float32)}, "non-empty strings"),
])
def test_refuses_what_is_not_a_named_float32_array(tmp_path, tensors, message):
    with pytest.raises(ValueError, match=message):
        write(tmp_path, tensors)
