"""A classifier head on the last token (GPT-1's recipe): gpt2.classify's probabilities and train.py's
classify_loss_and_grads against the TensorFlow reference (tests/tf_reference.py), which pads and masks where
train.py gathers, on the tiny random-weight model."""
import numpy as np
import pytest

import gpt2
import tf_reference as ref
import train
from helpers import as_dtype, assert_same_gradients, dotted, named_leaves, picked_leaves

N_CLASSES = 3
# Lengths of every kind in one batch: one token (nothing for the language model to predict), short, the longest.
TEXTS = [np.random.default_rng(n).integers(0, 50257, n).tolist() for n in (5, 9, 1, 3)]
LABELS = [2, 0, 1, 2]


def head(n_embd, seed=0, dtype=np.float64):
    return (np.random.default_rng(seed).standard_normal((n_embd, N_CLASSES)) * n_embd ** -0.5).astype(dtype)


@pytest.fixture(scope="module")
def model(tiny):
    """(float64 params, n_head, w, TensorFlow's (loss, grads, dw) for lm_weight 0 and 0.5)."""
    _, hparams, params = tiny
    params, w = as_dtype(params, np.float64), head(hparams["n_embd"])
    truth = {lm_weight: ref.classify_loss_and_grads(TEXTS, LABELS, params, w, hparams["n_head"], lm_weight)
             for lm_weight in (0.0, 0.5)}
    return params, hparams["n_head"], w, truth


@pytest.mark.parametrize("lm_weight", [0.0, 0.5])
def test_loss_and_every_gradient_match_tensorflow(model, lm_weight):
    params, n_head, w, truth = model
    their_loss, their_grads, their_dw = truth[lm_weight]
    loss, grads, dw = train.classify_loss_and_grads(TEXTS, LABELS, params, w, n_head, lm_weight)
    print(f"lm_weight {lm_weight}: loss {loss:.12f}, TensorFlow {their_loss:.12f}")
    assert loss == pytest.approx(their_loss, rel=1e-12)
    assert_same_gradients(f"classify_loss_and_grads (lm_weight {lm_weight})", {"params": grads, "w": dw},
                          {"params": their_grads, "w": their_dw})


@pytest.mark.parametrize("lm_weight", [0.0, 0.5])
def test_trained_tensors_match_tensorflow(model, lm_weight):
    """The last block and ln_f trained: their gradients are TensorFlow's, and nothing else is returned."""
    params, n_head, w, truth = model
    _, their_grads, their_dw = truth[lm_weight]
    names = train.trained_names(params, train_blocks=1)
    _, grads, dw = train.classify_loss_and_grads(TEXTS, LABELS, params, w, n_head, lm_weight, trained=names)
    assert sorted(grads) == sorted(names)
    assert_same_gradients(f"classify_loss_and_grads (last block, lm_weight {lm_weight})",
                          {**{dotted(name): g for name, g in grads.items()}, "w": dw},
                          {**picked_leaves(their_grads, names), "w": their_dw})


def test_lora_adapters_match_tensorflow(model):
    params, n_head, w, _ = model
    rng = np.random.default_rng(5)
    adapted = train.add_lora(params, rank=2, alpha=4, targets=("c_attn", "mlp.c_proj"), rng=rng)
    for block in adapted["blocks"]:  # B = 0 would give A no gradient at all
        for layer in (block["attn"]["c_attn"], block["mlp"]["c_proj"]):
            layer["B"] = rng.standard_normal(layer["B"].shape) * 0.1
    names = train.trained_names(adapted)
    _, their_grads, their_dw = ref.classify_loss_and_grads(TEXTS, LABELS, adapted, w, n_head, 0.5)
    _, grads, dw = train.classify_loss_and_grads(TEXTS, LABELS, adapted, w, n_head, 0.5, trained=names)
    assert sorted(grads) == sorted(names) and all(name.endswith(("/A", "/B")) for name in names)
    assert_same_gradients("classify_loss_and_grads (LoRA)", {**{dotted(name): g for name, g in grads.items()},
                                                              "w": dw}, {**picked_leaves(their_grads, names),
                                                                         "w": their_dw})


def test_a_padded_batch_is_the_texts_one_at_a_time(model):
    """The batch's loss is the mean of the texts' classifier losses plus lm_weight times the mean over all their
    predictions, so each text's language-model part weighs (its length - 1) / (all predictions)."""
    params, n_head, w, _ = model
    lm_weight, n_predictions = 0.5, sum(len(text) - 1 for text in TEXTS)
    loss, grads, dw = train.classify_loss_and_grads(TEXTS, LABELS, params, w, n_head, lm_weight)
    expected_loss, expected = 0.0, {name: np.zeros_like(g) for name, g in named_leaves([grads, dw]).items()}
    for text, label in zip(TEXTS, LABELS):
        head_only = train.classify_loss_and_grads([text], [label], params, w, n_head)
        both = train.classify_loss_and_grads([text], [label], params, w, n_head, lm_weight)
        share = (len(text) - 1) / n_predictions  # of the language-model mean
        expected_loss += head_only[0] / len(TEXTS) + (both[0] - head_only[0]) * share
        for name, g0 in named_leaves(list(head_only[1:])).items():
            g = named_leaves(list(both[1:]))[name]
            expected[name] += g0 / len(TEXTS) + (g - g0) * share  # (g - g0): lm_weight times the text's LM gradient
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    assert_same_gradients("classify_loss_and_grads (batch against one at a time)", named_leaves([grads, dw]),
                          expected)


def test_without_the_language_model_no_vocabulary_projection_is_made(model, monkeypatch):
    params, n_head, w, _ = model
    widths = []

    def recording_linear(x, w, b=None):
        widths.append(w.shape[-1])
        return gpt2.linear(x, w, b)

    monkeypatch.setattr(train, "linear", recording_linear)
    train.classify_loss_and_grads(TEXTS, LABELS, params, w, n_head, lm_weight=0.0)
    assert widths and len(params["wte"]) not in widths
    train.classify_loss_and_grads(TEXTS, LABELS, params, w, n_head, lm_weight=0.5)
    assert len(params["wte"]) in widths  # the recording sees it when it is made


def test_inputs_are_never_written_and_the_dtype_is_kept(tiny):
    _, hparams, params = tiny  # float32, the loader's read-only views
    w = head(hparams["n_embd"], dtype=np.float32)
    w.flags.writeable = False
    texts, labels = [list(text) for text in TEXTS], np.array(LABELS)
    for dtype, p, h in ((np.float32, params, w), (np.float64, as_dtype(params, np.float64), w.astype(np.float64))):
        for leaf in (*named_leaves(p).values(), h):
            leaf.flags.writeable = False
        loss, grads, dw = train.classify_loss_and_grads(texts, labels, p, h, hparams["n_head"], lm_weight=0.5)
        assert type(loss) is float and dw.dtype == dtype and dw.shape == w.shape
        assert all(g.dtype == dtype for g in named_leaves(grads).values())
        assert named_leaves(grads).keys() == named_leaves(p).keys()
    assert texts == [list(text) for text in TEXTS] and labels.tolist() == LABELS


@pytest.mark.parametrize("change, message", [
    (dict(texts=[]), "texts must be one or more lists of 1 to 64"),
    (dict(texts=[[1, 2], []]), "texts must be one or more lists of 1 to 64"),
    (dict(texts=[list(range(65))]), "texts must be one or more lists of 1 to 64"),
    (dict(texts=[[1.5, 2.0]]), "texts must be one or more lists"),
    (dict(texts=[[1, 50257]]), "token ids from 0 to 50256"),
    (dict(labels=[0, 1, 2]), "labels must be one class index from 0 to 2 per text (4)"),
    (dict(labels=[0, 1, 3, 0]), "labels must be one class index from 0 to 2"),
    (dict(w=np.zeros((63, 3))), "w must be a float64 array [n_embd, n_classes] = [64, ...]"),
    (dict(w=np.zeros((64, 3), np.float32)), "(params' dtype), not float32"),
    (dict(lm_weight=-1), "lm_weight must be a number >= 0"),
    (dict(trained=["blocks/0/attn/c_attn/A"]), "params holds no tensor named blocks/0/attn/c_attn/A"),
])
def test_bad_arguments_are_plain_value_errors(model, change, message):
    params, n_head, w, _ = model
    arguments = {**dict(texts=TEXTS, labels=LABELS, params=params, w=w, n_head=n_head), **change}
    if len(arguments["texts"]) == 1 and "labels" not in change:
        arguments["labels"] = [0]
    with pytest.raises(ValueError) as error:
        train.classify_loss_and_grads(**arguments)
    assert message in str(error.value)


def test_classify_matches_tensorflows_probabilities(tiny):
    """Texts of every length from 1 to n_ctx in small batches, against each text alone through TensorFlow."""
    _, hparams, params = tiny
    rng = np.random.default_rng(1)
    texts = [rng.integers(0, 50257, n).tolist() for n in rng.permutation(np.arange(1, 65))[:12]] + [[7], [7] * 64]
    w = head(hparams["n_embd"], seed=2, dtype=np.float32)
    ours = gpt2.classify(texts, params, w, hparams["n_head"], max_rows=3)
    theirs = ref.class_probabilities(texts, params, w, hparams["n_head"])
    assert ours.shape == (len(texts), N_CLASSES) and ours.dtype == np.float64
    np.testing.assert_allclose(ours.sum(axis=1), 1, rtol=1e-12)
    worst = np.abs(ours - theirs).max()
    print(f"classify: probabilities differ from TensorFlow's (float64) by up to {worst:.1e}")
    assert worst < 1e-5
    np.testing.assert_allclose(gpt2.classify(texts, params, w, hparams["n_head"], max_rows=64), ours, atol=1e-6)


def test_classify_with_no_texts_gives_no_rows(tiny):
    _, hparams, params = tiny
    assert gpt2.classify([], params, head(64), hparams["n_head"]).shape == (0, N_CLASSES)


@pytest.mark.parametrize("texts, w_shape, message", [
    ([list(range(65))], (64, 3), "text 0 has 65 tokens; a text to classify must have 1 to 64 (the context): cut"),
    ([[1], []], (64, 3), "text 1 has 0 tokens"),
    ([[1]], (3, 64), "the head must be [n_embd, n_classes] = [64, ...], not of shape (3, 64)"),
    ([[1]], (64,), "the head must be [n_embd, n_classes]"),
])
def test_classify_refuses_bad_arguments_plainly(tiny, texts, w_shape, message):
    _, hparams, params = tiny
    with pytest.raises(ValueError) as error:
        gpt2.classify(texts, params, np.zeros(w_shape, np.float32), hparams["n_head"])
    assert message in str(error.value)
