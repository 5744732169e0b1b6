"""LoRA adapters (train.add_lora, lora_linear and its backward, merge_lora, training only A and B) against the
TensorFlow reference (tests/tf_reference.py) in float64, and the promises around them: the adapted model starts
as the base model, nothing is copied, and the work only frozen weights would need is not done."""
import math

import numpy as np
import pytest

import gpt2
import tf_reference as ref
import train
from helpers import as_dtype, assert_same_gradients, dotted, named_leaves, picked_leaves

ALL_TARGETS = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")
rng = np.random.default_rng(23)


def with_random_b(adapted, seed):
    """B drawn at random in every adapter (add_lora's B = 0 gives A no gradient at all, a weak test)."""
    draw = np.random.default_rng(seed)
    for block in adapted["blocks"]:
        for layer in (*block["attn"].values(), *block["mlp"].values()):
            if "B" in layer:
                layer["B"] = draw.standard_normal(layer["B"].shape) * 0.1
    return adapted


@pytest.mark.parametrize("frozen", [True, False])
def test_lora_linear_backward(frozen):
    layer = {"w": rng.standard_normal((16, 24)) / 4, "b": rng.standard_normal(24) * 0.1,
             "A": rng.standard_normal((16, 3)), "B": rng.standard_normal((3, 24)), "scale": 8 / 3}
    x, dy = rng.standard_normal((2, 5, 16)), rng.standard_normal((2, 5, 24))
    dx, theirs = ref.vjp(lambda x, p: ref.linear(x, **p), dy, x, layer)
    ours_dx, ours = train.lora_linear_backward(dy, x, **layer, frozen=frozen)
    expected = {"x": dx, "A": theirs["A"], "B": theirs["B"]} if frozen else {"x": dx, **theirs}
    assert_same_gradients("lora_linear_backward", {"x": ours_dx, **ours}, expected)
    y = train.lora_linear(x, **layer)
    np.testing.assert_allclose(y, x @ layer["w"] + layer["b"] + layer["scale"] * x @ layer["A"] @ layer["B"],
                               rtol=1e-12)


@pytest.fixture(scope="module")
def case(tiny):
    """A float64 tiny model with adapters on every linear (random B), token ids, and TensorFlow's gradients."""
    _, hparams, params = tiny
    adapted = with_random_b(train.add_lora(as_dtype(params, np.float64), 4, 8, ALL_TARGETS, rng=1), seed=2)
    ids = np.random.default_rng(3).integers(0, hparams["n_vocab"], (2, 2, 17))
    loss, grads = ref.loss_and_grads(*ids, adapted, hparams["n_head"])
    return dict(params=adapted, n_head=hparams["n_head"], inputs=ids[0], targets=ids[1], loss=loss, grads=grads)


def test_training_a_and_b_matches_tensorflow(case):
    names = train.trained_names(case["params"])
    assert len(names) == 2 * 4 * 2 and all(name.endswith(("/A", "/B")) for name in names)
    loss, grads = train.loss_and_grads(case["inputs"], case["targets"], case["params"], case["n_head"], names)
    assert loss == pytest.approx(case["loss"], rel=1e-12)
    assert sorted(grads) == sorted(names)
    assert_same_gradients("loss_and_grads (LoRA, A and B)", {dotted(name): g for name, g in grads.items()},
                          picked_leaves(case["grads"], names))


def test_training_everything_of_an_adapted_model_matches_tensorflow(case):
    """trained=None: every array, w and b of the adapted linears included, in a tree shaped like params."""
    _, grads = train.loss_and_grads(case["inputs"], case["targets"], case["params"], case["n_head"])
    assert_same_gradients("loss_and_grads (LoRA, every tensor)", grads, case["grads"])


def test_an_adapter_with_b_zero_gives_the_base_models_logits_bit_for_bit(tiny):
    _, hparams, params = tiny
    adapted = train.add_lora(params, rank=8, alpha=16, targets=ALL_TARGETS, rng=0)
    ids = np.random.default_rng(4).integers(0, 50257, (2, 20))
    logits, _ = train.gpt2_forward(ids, **adapted, n_head=hparams["n_head"],
                                   trained=set(train.trained_names(adapted)))
    assert np.array_equal(logits, gpt2.gpt2(ids, **params, n_head=hparams["n_head"]))


def test_add_lora_shares_every_array_and_draws_a_like_peft(tiny):
    _, hparams, params = tiny
    before = {name: id(leaf) for name, leaf in named_leaves(params).items()}
    adapted = train.add_lora(params, rank=4, alpha=8, targets=("c_attn", "mlp.c_proj"), blocks=[1], rng=7)
    assert {name: id(leaf) for name, leaf in named_leaves(params).items()} == before  # params itself unchanged
    new = {name: leaf for name, leaf in named_leaves(adapted).items() if name not in before}
    assert sorted(new) == [f"blocks.1.{layer}.{key}" for layer in ("attn.c_attn", "mlp.c_proj")
                           for key in ("A", "B", "scale")]
    assert all(leaf is named_leaves(params)[name] for name, leaf in named_leaves(adapted).items() if name in before)
    for layer in (adapted["blocks"][1]["attn"]["c_attn"], adapted["blocks"][1]["mlp"]["c_proj"]):
        (n_in, n_out), bound = layer["w"].shape, 1 / math.sqrt(layer["w"].shape[0])
        assert layer["A"].shape == (n_in, 4) and layer["B"].shape == (4, n_out) and layer["scale"] == 2.0
        assert layer["A"].dtype == layer["B"].dtype == np.float32 and not layer["B"].any()
        assert -bound <= layer["A"].min() < -0.8 * bound and 0.8 * bound < layer["A"].max() <= bound  # uniform
    again = train.add_lora(params, rank=4, alpha=8, targets=("c_attn", "mlp.c_proj"), blocks=[1], rng=7)
    assert np.array_equal(again["blocks"][1]["attn"]["c_attn"]["A"], adapted["blocks"][1]["attn"]["c_attn"]["A"])


def test_merge_lora_adds_scale_a_b_in_float64_rounded_once(tiny):
    _, hparams, params = tiny
    adapted = train.add_lora(params, rank=4, alpha=8, targets=("c_attn", "c_fc"), rng=5)
    with_random_b(adapted, seed=6)
    merged = train.merge_lora(adapted)
    assert named_leaves(merged).keys() == named_leaves(params).keys()
    merged_ws = set()
    for block, merged_block in zip(adapted["blocks"], merged["blocks"]):
        for part, name in (("attn", "c_attn"), ("mlp", "c_fc")):
            layer, w = block[part][name], merged_block[part][name]["w"]
            exact = layer["w"].astype(np.float64) + 2.0 * (layer["A"].astype(np.float64) @ layer["B"])
            assert w.dtype == np.float32 and np.array_equal(w, exact.astype(np.float32)), name
            merged_ws.add(id(w))
    for name, leaf in named_leaves(merged).items():
        assert id(leaf) in merged_ws or leaf is named_leaves(params)[name], f"{name} was copied"
    ids = np.random.default_rng(8).integers(0, 50257, 12)
    adapted_logits, _ = train.gpt2_forward(ids, **adapted, n_head=hparams["n_head"])
    np.testing.assert_allclose(gpt2.gpt2(ids, **merged, n_head=hparams["n_head"]), adapted_logits, atol=1e-3)


def test_under_lora_no_frozen_weights_gradient_is_computed_nor_its_input_kept(tiny, monkeypatch):
    """Adapters on c_attn: every linear and layer norm backward runs frozen (dx alone), the inputs of the frozen
    linears without adapters are not kept, and wte's output-projection input is not kept either."""
    _, hparams, params = tiny
    adapted = train.add_lora(params, rank=2, alpha=2, rng=0)
    names = train.trained_names(adapted)
    ids = np.random.default_rng(9).integers(0, 50257, (2, 10))
    _, kept = train.gpt2_forward(ids, **adapted, n_head=hparams["n_head"], trained=set(names))
    assert kept["a"] is None and len(kept["blocks"]) == 2
    for block in kept["blocks"]:
        assert block["mlp"]["x"] is None and block["attn"]["heads"] is None and block["attn"]["x"] is not None
    calls = []

    def recording(name):
        original = getattr(train, name)

        def record(*args, frozen=False, **kwargs):
            calls.append((name, frozen))
            return original(*args, frozen=frozen, **kwargs)
        return record

    for name in ("linear_backward", "layer_norm_backward"):
        monkeypatch.setattr(train, name, recording(name))
    _, grads = train.loss_and_grads(ids, ids, adapted, hparams["n_head"], trained=names)
    assert len(calls) == 2 * (4 + 2) + 1 and all(frozen is True for _, frozen in calls), calls
    assert sorted(grads) == sorted(names)


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0, alpha=1), "rank must be a whole number >= 1"),
    (dict(rank=2.0, alpha=1), "rank must be a whole number >= 1"),
    (dict(rank=2, alpha=0), "alpha must be a number > 0"),
    (dict(rank=2, alpha=1, targets="c_attn"), "targets must be one or more of c_attn, attn.c_proj, c_fc, mlp.c_proj"),
    (dict(rank=2, alpha=1, targets=("c_proj",)), "targets must be one or more of"),
    (dict(rank=2, alpha=1, blocks=[2]), "blocks must be numbers of blocks from 0 to 1"),
])
def test_add_lora_refuses_bad_arguments_plainly(tiny, kwargs, message):
    with pytest.raises(ValueError) as error:
        train.add_lora(tiny[2], **kwargs)
    assert message in str(error.value)


def test_an_adapter_is_not_added_twice(tiny):
    adapted = train.add_lora(tiny[2], 2, 2, blocks=[0])
    with pytest.raises(ValueError, match="block 0 already holds an adapter there"):
        train.add_lora(adapted, 2, 2)
    train.add_lora(adapted, 2, 2, blocks=[1])  # another block is fine


def test_trained_names():
    params = {"wte": np.zeros((5, 4)), "wpe": np.zeros((3, 4)), "ln_f": {"g": np.ones(4), "b": np.zeros(4)},
              "blocks": [{"ln_1": {"g": np.ones(4), "b": np.zeros(4)}, "ln_2": {"g": np.ones(4), "b": np.zeros(4)},
                          "attn": {"c_attn": {"w": np.zeros((4, 12)), "b": np.zeros(12)},
                                   "c_proj": {"w": np.zeros((4, 4)), "b": np.zeros(4)}},
                          "mlp": {"c_fc": {"w": np.zeros((4, 16)), "b": np.zeros(16)},
                                  "c_proj": {"w": np.zeros((16, 4)), "b": np.zeros(4)}}} for _ in range(3)]}
    every = train.trained_names(params)
    assert len(every) == 4 + 3 * 12 and every[0] == "wte" and "blocks/2/mlp/c_proj/b" in every
    assert set(train.trained_names(params, train_blocks=1)) == {"ln_f/g", "ln_f/b"} | {
        name for name in every if name.startswith("blocks/2/")}
    assert set(train.trained_names(params, train_blocks=0)) == {"ln_f/g", "ln_f/b"}
    adapted = train.add_lora(params, 2, 2, targets=("c_attn", "c_fc"))
    assert set(train.trained_names(adapted)) == {f"blocks/{i}/{layer}/{key}" for i in range(3)
                                                 for layer in ("attn/c_attn", "mlp/c_fc") for key in "AB"}
    assert set(train.trained_names(adapted, train_blocks=2)) == {f"blocks/{i}/{layer}/{key}" for i in (1, 2)
                                                                for layer in ("attn/c_attn", "mlp/c_fc") for key in "AB"}
    for bad in (-1, 4, 1.5, True):
        with pytest.raises(ValueError, match="train_blocks must be a whole number from 0 to 3"):
            train.trained_names(params, train_blocks=bad)
    with pytest.raises(ValueError, match="params holds no tensor named blocks/0/attn/c_attn/scale"):
        train.loss_and_grads([1, 2], [2, 3], adapted, 2, trained=["wte", "blocks/0/attn/c_attn/scale"])


def test_adamw_on_the_adapters_alone_overfits_one_batch_and_leaves_the_weights_be(tiny):
    """llm.c's overfitting test with LoRA: 20 AdamW steps on the A's and B's of every linear, updated in place
    inside the tree the model reads (writable_trained); every other array is the loader's, never written."""
    encoder, hparams, params = tiny
    adapted = train.add_lora(params, rank=4, alpha=8, targets=ALL_TARGETS, rng=0)
    names = train.trained_names(adapted)
    adapted, trained = train.writable_trained(adapted, names)
    assert sorted(trained) == sorted(names)
    assert all(leaf is named_leaves(params)[name] for name, leaf in named_leaves(adapted).items()
               if name in named_leaves(params))
    ids = np.random.default_rng(10).integers(0, 50257, (2, 17))
    state, losses = train.adamw_state(trained), []
    for _ in range(20):
        loss, grads = train.loss_and_grads(ids[:, :-1], ids[:, 1:], adapted, hparams["n_head"], trained=names)
        train.adamw(trained, grads, state, lr=1e-2, max_norm=1.0)
        losses.append(loss)
    print("LoRA, overfitting one batch, loss per step:", " ".join(f"{loss:.3f}" for loss in losses))
    assert losses[-1] < 0.5 * losses[0]
    layer = adapted["blocks"][0]["attn"]["c_attn"]
    assert layer["B"].any() and layer["B"] is trained["blocks/0/attn/c_attn/B"]
