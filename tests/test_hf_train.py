"""`python train.py --save_format hf`: a run saves in Hugging Face's layout, which transformers loads (a classifier
as GPT2ForSequenceClassification, LoRA's adapters beside the merged model going to PEFT), and resumes bit for bit;
a run started from a Hugging Face folder names it by model.safetensors' sha256, so --resume refuses it changed."""
import hashlib
import os
import shutil

import numpy as np
import pytest

import gpt2
from finetune import index_sha256
from helpers import assert_one_line_error, peft, run, straight_and_resumed, tensorflow_logits, train_cli, \
    transformers
from utils import HF_MODEL_FILES, convert_adapters, convert_model_folder, load_encoder_hparams_and_params, read_head, \
    save_hf_folder

FAST = ("--seq_len", "32", "--batch_size", "4", "--lr", "3e-3", "--warmup", "2", "--sample_every", "0",
        "--eval_every", "0")
IDS = [50256, 464, 2068, 7586, 21831, 18045, 625, 262]
LABELED = "text,label\n" + "".join(f"it was the {word} of times {i},{label}\n" for i in range(8) for word, label in
                                   (("best", "good"), ("worst", "bad"), ("age", "neither")))


@pytest.fixture(scope="module")
def data(dickens, tmp_path_factory):
    """(a text, a labeled file of three classes)."""
    path = tmp_path_factory.mktemp("hf-train-data") / "labeled.csv"
    path.write_text(LABELED, encoding="utf-8")
    return dickens, str(path)


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def assert_same_run(a, b):
    """Two run folders hold the same model and state, bit for bit."""
    assert file_bytes(os.path.join(a, "model.safetensors")) == file_bytes(os.path.join(b, "model.safetensors"))
    with np.load(os.path.join(a, "train_state.npz")) as x, np.load(os.path.join(b, "train_state.npz")) as y:
        assert sorted(x.files) == sorted(y.files)
        assert all(np.array_equal(x[name], y[name]) for name in x.files if name != "record")


def test_a_run_saved_as_hf_loads_in_transformers_and_resumes_bit_for_bit(tiny_models, data, tmp_path):
    model = ("--model_dir", os.path.join(tiny_models, "124M"), "--save_format", "hf")
    straight_and_resumed((*model, *FAST), data[0], tmp_path, 6)
    assert set(HF_MODEL_FILES) | {"train_state.npz", "log.csv"} <= set(os.listdir(tmp_path / "straight"))
    assert "hparams.json" not in os.listdir(tmp_path / "straight")
    assert_same_run(str(tmp_path / "straight"), str(tmp_path / "resumed"))
    import torch

    hf = transformers().GPT2LMHeadModel.from_pretrained(str(tmp_path / "straight")).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([IDS])).logits[0].numpy()
    _, hparams, params = load_encoder_hparams_and_params(model_dir=str(tmp_path / "straight"))
    np.testing.assert_allclose(theirs, tensorflow_logits(params, IDS, hparams["n_head"]), rtol=0, atol=1e-4)
    _, _, start = load_encoder_hparams_and_params(model_dir=os.path.join(tiny_models, "124M"))
    assert not np.array_equal(params["wte"], start["wte"])  # it learned


@pytest.fixture(scope="module")
def classifier_runs(tiny_models, data, tmp_path_factory):
    """A LoRA classifier run from a Hugging Face folder, saved as hf: (its starting folder, the run of 4 steps, the
    same run in 2 steps then resumed to 4, with --save_format openai given again)."""
    root = tmp_path_factory.mktemp("hf-classifier-runs")
    start = str(root / "start")
    convert_model_folder(start, "hf", model_dir=os.path.join(tiny_models, "124M"))
    run = ("--data", data[1], "--task", "classify", "--model_dir", start, "--save_format", "hf", "--lora_rank", "4",
           "--lora_targets", "c_attn,c_fc", *FAST)
    results = [train_cli(*run, "--out", str(root / "straight"), "--steps", "4"),
               train_cli(*run, "--out", str(root / "resumed"), "--steps", "2"),
               train_cli("--data", data[1], "--out", str(root / "resumed"), "--steps", "4", "--resume",
                         "--save_format", "openai")]  # the default, given again: the run keeps its own
    for result in results:
        assert result.returncode == 0, result.stderr
    return start, str(root / "straight"), str(root / "resumed")


def test_a_lora_classifier_saved_as_hf_resumes_bit_for_bit(classifier_runs):
    _, straight, resumed = classifier_runs
    assert_same_run(straight, resumed)
    assert file_bytes(os.path.join(straight, "adapters.npz")) == file_bytes(os.path.join(resumed, "adapters.npz"))


def test_transformers_and_peft_load_a_lora_classifiers_run(classifier_runs, tmp_path):
    """GPT2ForSequenceClassification gives gpt2.classify's probabilities on the run's folder; its adapters, as a
    PEFT folder on the starting model, give the merged model's logits."""
    import torch

    start, out, _ = classifier_runs
    w, labels = read_head(out, 64)
    assert labels == ["bad", "good", "neither"]
    classifier = transformers().GPT2ForSequenceClassification.from_pretrained(out).eval()
    _, hparams, params = load_encoder_hparams_and_params(model_dir=out)
    with torch.no_grad():
        theirs = torch.softmax(classifier(torch.tensor([IDS])).logits.double(), -1).numpy()
    np.testing.assert_allclose(theirs, gpt2.classify([IDS], params, w, hparams["n_head"]), rtol=0, atol=1e-6)

    convert_adapters(out, str(tmp_path / "peft"), "hf")
    adapted = peft().PeftModel.from_pretrained(transformers().GPT2LMHeadModel.from_pretrained(start),
                                               str(tmp_path / "peft")).eval()
    assert adapted.peft_config["default"].base_model_name_or_path == os.path.abspath(start)
    with torch.no_grad():
        theirs = adapted(torch.tensor([IDS])).logits[0].numpy()
    np.testing.assert_allclose(theirs, gpt2.gpt2(IDS, **params, n_head=hparams["n_head"]), rtol=0, atol=1e-4)


def test_a_hugging_face_folder_is_named_by_its_weights_sha256(classifier_runs, tmp_path):
    start, _, _ = classifier_runs
    assert index_sha256(start) == hashlib.sha256(file_bytes(os.path.join(start, "model.safetensors"))).hexdigest()
    assert index_sha256(str(tmp_path)) == ""


def test_resume_refuses_a_hugging_face_start_that_changed(classifier_runs, data, tmp_path):
    """A LoRA run takes its frozen weights from its starting folder: once its model.safetensors has changed (the
    same layout, one layer's numbers other), --resume refuses it, named again or not."""
    start = str(tmp_path / "start")
    shutil.copytree(classifier_runs[0], start)
    out = str(tmp_path / "run")
    result = train_cli("--data", data[1], "--task", "classify", "--model_dir", start, "--save_format", "hf",
                       "--lora_rank", "2", *FAST, "--out", out, "--steps", "1")
    assert result.returncode == 0, result.stderr
    _, hparams, params = load_encoder_hparams_and_params(model_dir=start)
    ln_1 = params["blocks"][0]["ln_1"]
    params["blocks"][0]["ln_1"] = {**ln_1, "b": ln_1["b"] + np.float32(1e-3)}
    save_hf_folder(start, params, hparams, start)
    assert_one_line_error(train_cli("--data", data[1], "--out", out, "--steps", "2", "--resume"),
                          f"trains part of {start}, whose checkpoint has changed since the run began")
    assert_one_line_error(train_cli("--data", data[1], "--model_dir", start, "--out", out, "--steps", "2", "--resume"),
                          f"--model_dir do not name the model the run in {out} started from")


def test_save_format_is_checked_and_kept_on_resume(classifier_runs, data, tmp_path):
    """A resumed run saves in the layout it began with (the default given again changes nothing)."""
    assert_one_line_error(train_cli("--data", data[0], "--save_format", "onnx", "--out", str(tmp_path / "x")),
                          "--save_format must be openai or hf, not 'onnx'")
    assert not (tmp_path / "x").exists()
    assert "hparams.json" not in os.listdir(classifier_runs[2]) and "head.npz" not in os.listdir(classifier_runs[2])


def test_a_lora_classifiers_run_converts_to_openai_with_its_head(classifier_runs, tmp_path):
    """Its head goes to head.npz; the adapters stay merged into the model, and a note says how to keep them apart."""
    _, out, _ = classifier_runs
    result = run("utils.py", "--model_dir", out, "--out", str(tmp_path / "openai"), "--to", "openai")
    assert result.returncode == 0, result.stderr
    assert f"python utils.py --adapters {out} --out DIR --to openai" in result.stderr
    w, labels = read_head(out)
    saved_w, saved_labels = read_head(str(tmp_path / "openai"), 64)
    assert np.array_equal(saved_w, w) and saved_labels == labels
