"""A classifier's head in Hugging Face's layout: `python utils.py --to hf` of a folder holding head.npz writes what
transformers' GPT2ForSequenceClassification.from_pretrained loads, with gpt2.classify's probabilities; one that
transformers saved reads (utils.read_head) as its own score, with its probabilities; head.npz -> Hugging Face ->
head.npz is bit for bit; a folder without a head, or with classes that do not fit it, is a one-line error."""
import json
import os
import shutil

import numpy as np
import pytest

import gpt2
import hf_format
from helpers import assert_one_line_error, run, transformers
from utils import HEAD_FILE, convert_model_folder, load_encoder_hparams_and_params, read_head, save_model_folder

LABELS = ["negative", "neutral", "positive", "mixed"]
TEXTS = [[464, 2068, 7586, 21831], [18045, 625, 262, 16931, 3290, 13, 0, 1], [50255], [40, 1842, 340, 11, 257]]


def transformers_probabilities(folder):
    """GPT2ForSequenceClassification's class probabilities of TEXTS, as one right-padded batch (pad_token_id
    marks the padding, so it reads each text's last token), and the model."""
    import torch

    model = transformers().GPT2ForSequenceClassification.from_pretrained(folder).eval()
    longest = max(map(len, TEXTS))
    batch = torch.tensor([text + [model.config.pad_token_id] * (longest - len(text)) for text in TEXTS])
    with torch.no_grad():
        return torch.softmax(model(batch).logits.double(), dim=-1).numpy(), model


@pytest.fixture(scope="module")
def classifier(make_models, tmp_path_factory):
    """(an OpenAI folder holding the tiny model and a random head.npz, the head, its Hugging Face conversion)."""
    models_dir, size = make_models("tiny")
    _, hparams, params = load_encoder_hparams_and_params(model_dir=os.path.join(models_dir, size))
    w = np.random.default_rng(5).normal(0, 0.5, (hparams["n_embd"], len(LABELS))).astype(np.float32)
    root = tmp_path_factory.mktemp("classifier")
    save_model_folder(str(root / "openai"), params, hparams, os.path.join(models_dir, size), head=(w, LABELS))
    result = run("utils.py", "--model_dir", str(root / "openai"), "--out", str(root / "hf"), "--to", "hf")
    assert result.returncode == 0, result.stderr
    return str(root / "openai"), w, str(root / "hf")


def test_transformers_classifies_our_folder_as_gpt2_classify_does(classifier):
    _, w, folder = classifier
    theirs, model = transformers_probabilities(folder)
    assert model.config.num_labels == len(LABELS) and model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {label: i for i, label in enumerate(LABELS)}
    assert np.array_equal(model.score.weight.detach().numpy(), w.T) and model.score.bias is None
    _, hparams, params = load_encoder_hparams_and_params(model_dir=folder)
    ours = gpt2.classify(TEXTS, params, w, hparams["n_head"])
    print(f"max |transformers' - gpt2.classify's| {np.abs(theirs - ours).max():.2e}")
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-6)
    assert np.abs(ours - 1 / len(LABELS)).max() > 0.05  # the head tells the texts apart


def test_hf_to_head_npz_is_bit_for_bit(classifier, tmp_path):
    _, w, folder = classifier
    read, labels = read_head(folder, 64)
    assert labels == LABELS and read.dtype == np.float32 and np.array_equal(read, w)
    convert_model_folder(str(tmp_path / "back"), "openai", model_dir=folder)
    with np.load(tmp_path / "back" / HEAD_FILE) as saved:
        assert np.array_equal(saved["w"], w) and saved["labels"].tolist() == LABELS


def test_a_classifier_transformers_saved_reads_as_its_own(hf_models, tmp_path):
    """GPT2ForSequenceClassification.save_pretrained's folder (a score drawn by torch): read_head gives its
    score.weight transposed, and gpt2.classify its probabilities; --to openai keeps it as head.npz."""
    import torch

    torch.manual_seed(3)
    model = transformers().GPT2ForSequenceClassification.from_pretrained(
        hf_models("tiny")["lm", "float32"], id2label=dict(enumerate(LABELS[:2])), pad_token_id=50256)
    torch.nn.init.normal_(model.score.weight, 0, 0.5)
    model.save_pretrained(str(tmp_path / "theirs"))
    shutil.copyfile(os.path.join(hf_models("tiny")["lm", "float32"], "tokenizer.json"), tmp_path / "theirs" /
                    "tokenizer.json")
    w, labels = read_head(str(tmp_path / "theirs"), 64)
    assert labels == LABELS[:2] and np.array_equal(w, model.score.weight.detach().numpy().T)
    theirs, _ = transformers_probabilities(str(tmp_path / "theirs"))
    _, hparams, params = load_encoder_hparams_and_params(model_dir=str(tmp_path / "theirs"))
    np.testing.assert_allclose(gpt2.classify(TEXTS, params, w, hparams["n_head"]), theirs, rtol=0, atol=1e-6)
    convert_model_folder(str(tmp_path / "openai"), "openai", model_dir=str(tmp_path / "theirs"))
    assert read_head(str(tmp_path / "openai"), 64)[1] == LABELS[:2]


def changed(folder, tmp_path, **config):
    """A copy of the Hugging Face classifier folder with config.json's keys changed (None: removed)."""
    copy = tmp_path / "changed"
    shutil.copytree(folder, copy)
    settings = json.loads((copy / "config.json").read_text())
    settings = {key: value for key, value in {**settings, **config}.items() if value is not None}
    (copy / "config.json").write_text(json.dumps(settings))
    return str(copy)


@pytest.mark.parametrize("config, fragments", [
    (dict(id2label={"0": "a", "2": "b"}), ["config.json: its id2label does not number the classes 0, 1, ..."]),
    (dict(id2label={"0": "a", "1": "a", "2": "b", "3": "c"}), ["does not name two or more classes, each once"]),
    (dict(id2label={"0": "a", "1": "b"}), ["model.safetensors holds a head of shape [64, 4] for 2 classes"]),
    (dict(num_labels=3), ["its num_labels is 3, but id2label names 4 classes"]),
])
def test_classes_that_do_not_fit_the_head_are_a_one_line_error(classifier, tmp_path, config, fragments):
    folder = changed(classifier[2], tmp_path, **config)
    with pytest.raises(ValueError) as raised:
        read_head(folder, 64)
    assert "\n" not in str(raised.value) and all(fragment in str(raised.value) for fragment in fragments), \
        str(raised.value)


def test_a_folder_without_a_head_or_of_another_width_says_so(classifier, tmp_path):
    _, _, folder = classifier
    with pytest.raises(ValueError, match=r"holds a head of shape \[64, 4\] for 4 classes, which does not fit this "
                                         r"model \(n_embd 768\)"):
        read_head(folder, 768)
    lm = transformers().GPT2LMHeadModel.from_pretrained(folder)  # the body alone: a folder without score.weight
    lm.save_pretrained(str(tmp_path / "lm"))
    with pytest.raises(ValueError, match=f"is not a classifier: its model.safetensors holds no {hf_format.SCORE}"):
        read_head(str(tmp_path / "lm"), 64)
    os.remove(tmp_path / "lm" / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors is missing"):  # read before the model, so checked too
        read_head(str(tmp_path / "lm"), 64)
    result = run("utils.py", "--model_dir", changed(folder, tmp_path, id2label={"0": "x"}), "--out",
                 str(tmp_path / "out"), "--to", "openai")
    assert_one_line_error(result, "config.json: its id2label does not name two or more classes")
    assert not (tmp_path / "out").exists()


def test_gpt2_classify_reads_a_hugging_face_classifier_as_its_openai_twin(classifier):
    openai, _, folder = classifier
    results = [run("gpt2.py", "--model_dir", model, "--classify", "A fine film.") for model in (openai, folder)]
    assert all(result.returncode == 0 for result in results), [result.stderr for result in results]
    assert results[0].stdout == results[1].stdout and len(results[0].stdout.splitlines()) == len(LABELS)
