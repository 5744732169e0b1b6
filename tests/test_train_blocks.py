"""Training some tensors only (loss_and_grads(trained=...), trained_names(train_blocks=...)): the gradients are
TensorFlow's restricted to the trained tensors, and the work nobody needs is skipped: no backward below the lowest
trained block, whose blocks run forward as gpt2.transformer_block and keep nothing."""
import numpy as np
import pytest

import tf_reference as ref
import train
from helpers import as_dtype, assert_same_gradients, dotted, named_leaves, picked_leaves


@pytest.fixture(scope="module")
def case(tiny):
    """The tiny model in float64 with a third block (the first one's arrays again), token ids, TensorFlow's truth."""
    _, hparams, params = tiny
    params = as_dtype(params, np.float64)
    params["blocks"] = params["blocks"] + [params["blocks"][0]]
    ids = np.random.default_rng(12).integers(0, hparams["n_vocab"], (2, 2, 13))
    loss, grads = ref.loss_and_grads(*ids, params, hparams["n_head"])
    return dict(params=params, n_head=hparams["n_head"], inputs=ids[0], targets=ids[1], loss=loss, grads=grads)


@pytest.fixture
def counted(monkeypatch):
    """How many times each way through a block ran: {"frozen forward", "forward", "backward": count}."""
    counts = {"frozen forward": 0, "forward": 0, "backward": 0}
    for name, key in (("transformer_block", "frozen forward"), ("transformer_block_forward", "forward"),
                      ("transformer_block_backward", "backward")):
        def counting(*args, _original=getattr(train, name), _key=key, **kwargs):
            counts[_key] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(train, name, counting)
    return counts


@pytest.mark.parametrize("train_blocks, expected_counts", [
    (1, {"frozen forward": 2, "forward": 1, "backward": 1}),
    (2, {"frozen forward": 1, "forward": 2, "backward": 2}),
    (0, {"frozen forward": 3, "forward": 0, "backward": 0}),  # ln_f alone
])
def test_last_blocks_match_tensorflow_and_nothing_below_them_runs_backward(case, counted, train_blocks,
                                                                          expected_counts):
    names = train.trained_names(case["params"], train_blocks=train_blocks)
    assert "wte" not in names and "wpe" not in names and "ln_f/g" in names
    loss, grads = train.loss_and_grads(case["inputs"], case["targets"], case["params"], case["n_head"], names)
    assert counted == expected_counts
    assert loss == pytest.approx(case["loss"], rel=1e-12) and sorted(grads) == sorted(names)
    assert_same_gradients(f"loss_and_grads (train_blocks={train_blocks})",
                          {dotted(name): g for name, g in grads.items()}, picked_leaves(case["grads"], names))


def test_a_trained_embedding_takes_the_backward_through_every_block(case, counted):
    names = ["wpe", "blocks/2/mlp/c_fc/w"]
    _, grads = train.loss_and_grads(case["inputs"], case["targets"], case["params"], case["n_head"], names)
    assert counted == {"frozen forward": 0, "forward": 3, "backward": 3}
    assert_same_gradients("loss_and_grads (wpe and one weight)", {dotted(name): g for name, g in grads.items()},
                          picked_leaves(case["grads"], names))


def test_adapters_in_the_last_block_alone_with_untrained_ones_below(case, counted):
    """Adapters everywhere, train_blocks=1: the last block's A and B train; the blocks below hold adapters that do
    not, and run forward with them, keeping nothing."""
    rng = np.random.default_rng(13)
    adapted = train.add_lora(case["params"], 2, 4, targets=("c_attn", "c_fc"), rng=rng)
    for block in adapted["blocks"]:
        for layer in (block["attn"]["c_attn"], block["mlp"]["c_fc"]):
            layer["B"] = rng.standard_normal(layer["B"].shape) * 0.1
    names = train.trained_names(adapted, train_blocks=1)
    assert sorted(names) == [f"blocks/2/{layer}/{key}" for layer in ("attn/c_attn", "mlp/c_fc") for key in "AB"]
    _, their_grads = ref.loss_and_grads(case["inputs"], case["targets"], adapted, case["n_head"])
    _, grads = train.loss_and_grads(case["inputs"], case["targets"], adapted, case["n_head"], names)
    assert counted["backward"] == 1 and counted["frozen forward"] == 0  # the twin, its kept tensors let go
    assert_same_gradients("loss_and_grads (adapters of the last block)", {dotted(name): g for name, g in grads.items()},
                          picked_leaves(their_grads, names))


def test_float32_frozen_weights_are_never_written(tiny):
    _, hparams, params = tiny  # the loader's read-only views: a write would raise
    ids = np.random.default_rng(14).integers(0, hparams["n_vocab"], (2, 9))
    _, grads = train.loss_and_grads(ids, ids, params, hparams["n_head"], train.trained_names(params, train_blocks=1))
    assert all(g.dtype == np.float32 for g in grads.values())


def test_writable_trained_copies_the_trained_tensors_alone(tiny):
    """An AdamW step on the last block and ln_f: those are writable copies inside the tree the model reads and
    change; every other array is the loader's read-only view, the same object."""
    _, hparams, params = tiny
    names = train.trained_names(params, train_blocks=1)
    tree, trained = train.writable_trained(params, names)
    assert list(trained) == names  # in params' order
    ids = np.random.default_rng(15).integers(0, hparams["n_vocab"], (2, 9))
    _, grads = train.loss_and_grads(ids, ids, tree, hparams["n_head"], names)
    train.adamw(trained, grads, train.adamw_state(trained), lr=1e-3)
    for name, leaf in named_leaves(tree).items():
        original = named_leaves(params)[name]
        if name.replace(".", "/") in names:
            assert leaf is trained[name.replace(".", "/")] and not np.array_equal(leaf, original), name
        else:
            assert leaf is original and not leaf.flags.writeable, name
