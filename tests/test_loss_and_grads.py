"""train.py's loss and gradients against TensorFlow (tests/tf_reference.py) on random-weight checkpoints of the
tiny and the 124M shapes, AdamW against the paper's update written out here, and llm.c's overfitting test."""
import math

import numpy as np
import pytest

import gpt2
import tf_reference as ref
import train
from helpers import as_dtype, assert_same_gradients, named_leaves, relative_error
from utils import load_encoder_hparams_and_params

# (model shape, shape of the token ids): a batch, one sequence, and 124M's real layer shapes on two sequences
# longer than a query block (gpt2.QUERY_BLOCK = 128), so that attention runs in two blocks.
CASES = {"tiny batch": ("tiny", (4, 33)), "tiny one sequence": ("tiny", (64,)), "124M": ("124M", (2, 150))}


@pytest.fixture(scope="module")
def case(make_models):
    """case(name) -> dict of the params (float32 as loaded), n_head, inputs, targets, and TensorFlow's float64
    loss and gradients (the truth), each computed once."""
    made = {}

    def get(name):
        if name not in made:
            shape, ids_shape = CASES[name]
            _, hparams, params = load_encoder_hparams_and_params(make_models(shape)[1], make_models(shape)[0])
            rng = np.random.default_rng(len(name))
            inputs, targets = rng.integers(0, hparams["n_vocab"], (2, *ids_shape))
            loss, grads = ref.loss_and_grads(inputs, targets, params, hparams["n_head"], np.float64)
            made[name] = dict(params=params, n_head=hparams["n_head"], inputs=inputs, targets=targets, loss=loss,
                              grads=grads)
        return made[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_forward_logits_are_gpt2s_bit_for_bit(case, name):
    c = case(name)
    logits, _ = train.gpt2_forward(c["inputs"], **c["params"], n_head=c["n_head"])
    assert np.array_equal(logits, gpt2.gpt2(c["inputs"], **c["params"], n_head=c["n_head"]))


@pytest.mark.parametrize("name", list(CASES))
def test_float64_gradients_match_tensorflow(case, name):
    c = case(name)
    params = as_dtype(c["params"], np.float64)
    loss, grads = train.loss_and_grads(c["inputs"], c["targets"], params, c["n_head"])
    print(f"{name}: loss {loss:.12f}, TensorFlow {c['loss']:.12f}")
    assert loss == pytest.approx(c["loss"], rel=1e-12)
    assert_same_gradients(f"loss_and_grads ({name})", grads, c["grads"])


@pytest.mark.parametrize("name", ["tiny batch", "124M"])
def test_float32_gradients_no_worse_than_tensorflows(case, name):
    """Error measure: the norm-wise relative error of each tensor against the float64 truth (see
    relative_error), for ours and for TensorFlow's float32 on the same float32 weights and ids."""
    c = case(name)
    _, grads = train.loss_and_grads(c["inputs"], c["targets"], c["params"], c["n_head"])
    _, tf_grads = ref.loss_and_grads(c["inputs"], c["targets"], c["params"], c["n_head"], np.float32)
    ours, theirs, truth = (named_leaves(t) for t in (grads, tf_grads, c["grads"]))
    worse = []
    for tensor in truth:
        error, tf_error = relative_error(ours[tensor], truth[tensor]), relative_error(theirs[tensor], truth[tensor])
        print(f"{name}: d{tensor} float32 relative error {error:.1e}, TensorFlow's {tf_error:.1e}")
        assert ours[tensor].dtype == np.float32
        if not error <= 2 * tf_error:
            worse.append(f"d{tensor} {error:.1e} against TensorFlow's {tf_error:.1e}")
    assert not worse, f"float32 gradients more than twice as far from float64 as TensorFlow's: {', '.join(worse)}"


def test_loss_and_grads_keeps_params_and_dtype(case):
    c = case("tiny batch")
    params64 = as_dtype(c["params"], np.float64)
    before = {name: p.copy() for name, p in named_leaves(params64).items()}
    for p in named_leaves(params64).values():
        p.flags.writeable = False  # a write would raise, as into the loader's read-only views
    for params in (c["params"], params64):
        loss, grads = train.loss_and_grads(c["inputs"].tolist(), c["targets"].tolist(), params, c["n_head"])
        assert type(loss) is float
        assert named_leaves(grads).keys() == named_leaves(params).keys()
        for name, p in named_leaves(params).items():
            g = named_leaves(grads)[name]
            assert (g.shape, g.dtype) == (p.shape, p.dtype), name
    assert all(np.array_equal(p, before[name]) for name, p in named_leaves(params64).items())


@pytest.mark.parametrize("inputs, targets, message", [
    ([[1.0, 2.0]], [[1, 2]], "must be token ids (integers)"),
    ([1, 2, 3], [1, 2], "must have the same shape"),
    ([[[1, 2]]], [[[1, 2]]], "must be [n_seq] or [n_batch, n_seq]"),
    ([], [], "must be [n_seq] or [n_batch, n_seq]"),
    (np.zeros((0, 5), int), np.zeros((0, 5), int), "n_batch >= 1"),
    (list(range(65)), list(range(65)), "1 <= n_seq <= 64 (the context)"),
    ([1, 50257], [1, 2], "token ids from 0 to 50256"),
    ([1, 2], [-1, 2], "token ids from 0 to 50256"),
])
def test_bad_batches_are_refused_plainly(case, inputs, targets, message):
    c = case("tiny batch")
    with pytest.raises(ValueError) as error:
        train.loss_and_grads(inputs, targets, c["params"], c["n_head"])
    assert message in str(error.value)


def adamw_reference(params, grads_per_step, lr, weight_decay, max_norm, beta1=0.9, beta2=0.999, eps=1e-8):
    """The paper's AdamW (Loshchilov and Hutter, Algorithm 2, with PyTorch's lr-scaled decay and global-norm
    clipping), written out in float64, one step after another. Decay by name: weights and embeddings only."""
    p = {name: np.array(value, np.float64) for name, value in named_leaves(params).items()}
    m, v = ({name: np.zeros_like(value) for name, value in p.items()} for _ in range(2))
    for t, grads in enumerate(grads_per_step, start=1):
        g = {name: np.array(value, np.float64) for name, value in named_leaves(grads).items()}
        norm = math.sqrt(sum(np.sum(value ** 2) for value in g.values()))
        scale = min(1.0, max_norm / (norm + 1e-6))
        for name in p:
            gradient = g[name] * scale
            m[name] = beta1 * m[name] + (1 - beta1) * gradient
            v[name] = beta2 * v[name] + (1 - beta2) * gradient ** 2
            m_hat, v_hat = m[name] / (1 - beta1 ** t), v[name] / (1 - beta2 ** t)
            decays = name.split(".")[-1] in ("w", "wte", "wpe")
            p[name] = p[name] - lr * (m_hat / (np.sqrt(v_hat) + eps) + (weight_decay * p[name] if decays else 0))
    return p


def random_grads(params, rng, n_steps):
    """Gradients of varied sizes from tensor to tensor, with global norms from 0.3 to 3, so that clipping at 1
    acts on some steps and not on others."""
    steps = []
    for _ in range(n_steps):
        grads = train.tree_map(lambda p: rng.standard_normal(p.shape) * 10 ** rng.uniform(-2, 0), params)
        steps.append(train.tree_map(lambda g, norm=rng.uniform(0.3, 3) / train.global_norm(grads): g * norm, grads))
    return steps


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-13), (np.float32, 1e-6)])
def test_adamw_matches_the_papers_update(case, dtype, tolerance):
    params = as_dtype(case("tiny batch")["params"], dtype)
    rng = np.random.default_rng(3)
    grads = random_grads(params, rng, 10)
    expected = adamw_reference(params, grads, lr=1e-2, weight_decay=0.1, max_norm=1.0)
    state, clipped = train.adamw_state(params), 0
    for step_grads in grads:
        clipped += train.adamw(params, as_dtype(step_grads, dtype), state, lr=1e-2, weight_decay=0.1,
                               max_norm=1.0) > 1.0
    assert 0 < clipped < 10 and state["step"] == 10
    for name, p in named_leaves(params).items():
        assert p.dtype == dtype
        error = np.abs(p - expected[name]).max() / np.abs(expected[name]).max()
        assert error <= tolerance, f"adamw: {name} off by {error:.1e} (relative to its largest value) after 10 steps"


def test_adamw_refuses_params_it_cannot_update_in_place(case):
    params = case("tiny batch")["params"]  # the loader's read-only views
    grads = train.tree_map(np.zeros_like, params)
    with pytest.raises(ValueError, match="writable_copy"):
        train.adamw(params, grads, train.adamw_state(params), lr=1e-3)
    params = train.writable_copy(params)
    params["blocks"][0]["mlp"]["c_fc"]["w"] = params["blocks"][0]["mlp"]["c_fc"]["w"].T.copy().T  # not C-ordered
    with pytest.raises(ValueError, match="writable_copy"):
        train.adamw(params, grads, train.adamw_state(params), lr=1e-3)


def test_adamw_resumed_from_saved_state_is_bit_identical(case, tmp_path):
    """The state is plain arrays and an int: saved and loaded after 5 steps, 5 more give the same bits as 10."""
    rng = np.random.default_rng(4)
    start = train.writable_copy(case("tiny batch")["params"])
    grads = random_grads(start, rng, 10)
    grads = [as_dtype(g, np.float32) for g in grads]
    straight, state = train.writable_copy(start), train.adamw_state(start)
    for g in grads:
        train.adamw(straight, g, state, lr=1e-3, weight_decay=0.1, max_norm=1.0)
    resumed, state = train.writable_copy(start), train.adamw_state(start)
    for g in grads[:5]:
        train.adamw(resumed, g, state, lr=1e-3, weight_decay=0.1, max_norm=1.0)
    np.savez(tmp_path / "state.npz", *train.leaves(state["m"]), *train.leaves(state["v"]),
             *train.leaves(resumed), step=state["step"])
    saved, n = np.load(tmp_path / "state.npz"), len(train.leaves(start))
    arrays = iter([saved[f"arr_{i}"] for i in range(3 * n)])
    state = {"step": int(saved["step"]), "m": fill(start, arrays), "v": fill(start, arrays)}
    resumed = fill(start, arrays)
    for g in grads[5:]:
        train.adamw(resumed, g, state, lr=1e-3, weight_decay=0.1, max_norm=1.0)
    assert all(np.array_equal(a, b) for a, b in zip(train.leaves(resumed), train.leaves(straight), strict=True))


def fill(tree, arrays):
    """A tree shaped like `tree` whose leaves (in train.leaves order) come from the iterator `arrays`."""
    order = {id(leaf): i for i, leaf in enumerate(train.leaves(tree))}
    taken = [next(arrays) for _ in order]
    return train.tree_map(lambda leaf: taken[order[id(leaf)]], tree)


def fresh_params(hparams, rng):
    """GPT-2's initialization (as nanoGPT's): weights N(0, 0.02), the residual projections scaled down by
    sqrt(2 n_layer), biases 0, gains 1. Logits start near 0, so the loss starts near ln(n_vocab)."""
    e, n_layer = hparams["n_embd"], hparams["n_layer"]

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def layer(n_in, n_out, std=0.02):
        return {"w": normal(n_in, n_out, std=std), "b": np.zeros(n_out, np.float32)}

    def norm():
        return {"g": np.ones(e, np.float32), "b": np.zeros(e, np.float32)}

    residual = 0.02 / math.sqrt(2 * n_layer)
    blocks = [{"ln_1": norm(), "attn": {"c_attn": layer(e, 3 * e), "c_proj": layer(e, e, residual)},
               "ln_2": norm(), "mlp": {"c_fc": layer(e, 4 * e), "c_proj": layer(4 * e, e, residual)}}
              for _ in range(n_layer)]
    return {"wte": normal(hparams["n_vocab"], e), "wpe": normal(hparams["n_ctx"], e, std=0.01), "blocks": blocks,
            "ln_f": norm()}


TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light")


def test_overfitting_one_batch(tiny_models):
    """llm.c's test: 20 AdamW steps on one batch drive the loss from about ln(n_vocab) far below it."""
    encoder, hparams, _ = load_encoder_hparams_and_params("124M", tiny_models)
    params = fresh_params(hparams, np.random.default_rng(0))
    ids = np.array(encoder.encode(TEXT)[:4 * 9 + 1])
    inputs, targets = ids[:-1].reshape(4, 9), ids[1:].reshape(4, 9)  # a batch of 4 x 9 positions
    state, losses = train.adamw_state(params), []
    for _ in range(20):
        loss, grads = train.loss_and_grads(inputs, targets, params, hparams["n_head"])
        train.adamw(params, grads, state, lr=5e-3, weight_decay=0.0, max_norm=1.0)
        losses.append(loss)
    print("overfitting one batch, loss per step:", " ".join(f"{loss:.3f}" for loss in losses))
    assert abs(losses[0] - math.log(hparams["n_vocab"])) < 0.1
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 2.5  # ln(50257) = 10.8


def test_import_train_loads_numpy_and_the_standard_library_only():
    import os
    import subprocess
    import sys

    def third_party(code):
        out = subprocess.run([sys.executable, "-c", code + "; import sys; print(*sys.modules)"], capture_output=True,
                             text=True, check=True, cwd=os.path.dirname(os.path.abspath(train.__file__))).stdout.split()
        return {name.split(".")[0] for name in out} - set(sys.stdlib_module_names)

    assert third_party("import train") - third_party("pass") == {"train", "gpt2", "numpy"}
