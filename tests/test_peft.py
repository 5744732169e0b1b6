"""LoRA adapters in Hugging Face's PEFT layout (`python utils.py --adapters PATH --out DST --to hf|openai`,
utils.read_adapters on a PEFT folder): the folder written from adapters.npz is what PeftModel.from_pretrained loads
onto transformers' GPT-2, giving the logits of the merged model (train.merge_lora) through the project and through
the TensorFlow reference; a folder PEFT's own save_pretrained wrote reads as the same matrices and goes to
adapters.npz and back byte for byte; every setting or tensor this model does not compute is a one-line error."""
import json
import os
import shutil

import numpy as np
import pytest

import gpt2
import hf_format
import train
from helpers import assert_one_line_error, peft, run, tensorflow_logits, transformers
from utils import ADAPTERS_FILE, PEFT_FILES, convert_adapters, convert_model_folder, flatten, \
    load_encoder_hparams_and_params, read_adapters, with_adapters, write_adapters

IDS = [50256, 464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]
RANK, ALPHA = 4, 8


def utils_cli(*args):
    return run("utils.py", *args)


@pytest.fixture(scope="module")
def base(make_models, tmp_path_factory):
    """(the tiny model's OpenAI folder, the same model as a Hugging Face folder, its hparams and params)."""
    models_dir, size = make_models("tiny")
    source = os.path.join(models_dir, size)
    folder = str(tmp_path_factory.mktemp("peft-base") / "hf")
    convert_model_folder(folder, "hf", model_dir=source)
    _, hparams, params = load_encoder_hparams_and_params(model_dir=source)
    return source, folder, hparams, params


def random_adapters(params, targets, blocks, seed):
    """params with adapters (train.add_lora) whose B is drawn at random: add_lora's B = 0 would change nothing."""
    adapted = train.add_lora(params, RANK, ALPHA, targets, blocks, rng=seed)
    draw = np.random.default_rng(seed)
    for name, array in flatten(adapted).items():
        if name.endswith("/B"):
            array[...] = draw.normal(0, 0.5, array.shape)  # add_lora's B is a new array of zeros in each layer
    return adapted


def peft_logits(base_folder, adapters_folder):
    """PeftModel's logits on IDS for PEFT's adapter folder on transformers' GPT-2 of base_folder, and the names of
    the modules it adapted."""
    import torch

    model = peft().PeftModel.from_pretrained(transformers().GPT2LMHeadModel.from_pretrained(base_folder),
                                             adapters_folder).eval()
    with torch.no_grad():
        logits = model(torch.tensor([IDS])).logits[0].numpy()
    adapted = {name.removeprefix("base_model.model.transformer.") for name, module in model.named_modules()
               if hasattr(module, "lora_A") and "default" in module.lora_A}
    return logits, adapted


@pytest.mark.parametrize("targets, blocks", [(["c_attn"], None), (["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"], [1])])
def test_peft_loads_our_adapters_with_the_merged_models_logits(base, tmp_path, targets, blocks):
    """Adapters on every block's c_attn (PEFT's default for GPT-2), and on all four linears of the last block only
    (a run's --train_blocks 1: layers_to_transform)."""
    _, folder, hparams, params = base
    adapted = random_adapters(params, targets, blocks, seed=len(targets))
    write_adapters(str(tmp_path / ADAPTERS_FILE), adapted, RANK, ALPHA, targets)
    result = utils_cli("--adapters", str(tmp_path / ADAPTERS_FILE), "--out", str(tmp_path / "peft"), "--to", "hf")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "peft")) == sorted(PEFT_FILES)
    theirs, adapted_modules = peft_logits(folder, str(tmp_path / "peft"))
    assert adapted_modules == {f"h.{i}.{hf_format.MODULES[target]}" for i in blocks or range(hparams["n_layer"])
                               for target in targets}
    merged = train.merge_lora(adapted)
    ours, tensorflow = gpt2.gpt2(IDS, **merged, n_head=hparams["n_head"]), tensorflow_logits(merged, IDS, hparams["n_head"])
    print(f"max |PEFT's - ours| {np.abs(theirs - ours).max():.2e}, |PEFT's - TensorFlow's| "
          f"{np.abs(theirs - tensorflow).max():.2e}")
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
    np.testing.assert_allclose(theirs, tensorflow, rtol=0, atol=1e-4)
    assert np.abs(ours - gpt2.gpt2(IDS, **params, n_head=hparams["n_head"])).max() > 0.1  # the adapters matter


@pytest.fixture(scope="module")
def peft_saved(base, tmp_path_factory):
    """A folder PEFT's own save_pretrained wrote: LoRA of rank 4 on c_attn and c_proj (both), A and B drawn at
    random (init_lora_weights false)."""
    import torch

    _, folder, _, _ = base
    torch.manual_seed(0)
    config = peft().LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["c_attn", "c_proj"], init_lora_weights=False,
                               fan_in_fan_out=True, task_type="CAUSAL_LM")
    model = peft().get_peft_model(transformers().GPT2LMHeadModel.from_pretrained(folder), config)
    out = str(tmp_path_factory.mktemp("peft-saved") / "adapters")
    model.save_pretrained(out)
    return out


def test_peft_folders_read_as_their_own_matrices_and_logits(base, peft_saved):
    """read_adapters' A and B are PEFT's lora_A and lora_B transposed, bit for bit; merged into the project's model
    they give PeftModel's logits."""
    _, folder, hparams, params = base
    tensors, rank, alpha, targets = read_adapters(peft_saved)
    assert (rank, alpha, targets) == (RANK, ALPHA, ["c_attn", "attn.c_proj", "mlp.c_proj"])
    model = peft().PeftModel.from_pretrained(transformers().GPT2LMHeadModel.from_pretrained(folder), peft_saved)
    layer = model.base_model.model.transformer.h[1].mlp.c_proj
    assert np.array_equal(tensors["blocks/1/mlp/c_proj/A"], layer.lora_A["default"].weight.detach().numpy().T)
    assert np.array_equal(tensors["blocks/1/mlp/c_proj/B"], layer.lora_B["default"].weight.detach().numpy().T)
    assert len(tensors) == 2 * 3 * hparams["n_layer"]
    merged = train.merge_lora(with_adapters(params, tensors, rank, alpha, peft_saved))
    theirs, _ = peft_logits(folder, peft_saved)
    np.testing.assert_allclose(gpt2.gpt2(IDS, **merged, n_head=hparams["n_head"]), theirs, rtol=0, atol=1e-4)


def test_peft_to_adapters_npz_and_back_is_byte_for_byte(peft_saved, tmp_path):
    convert_adapters(peft_saved, str(tmp_path / "npz"), "openai")
    assert os.listdir(tmp_path / "npz") == [ADAPTERS_FILE]
    result = utils_cli("--adapters", str(tmp_path / "npz" / ADAPTERS_FILE), "--out", str(tmp_path / "back"), "--to", "hf")
    assert result.returncode == 0, result.stderr
    name = PEFT_FILES[1]
    assert (tmp_path / "back" / name).read_bytes() == open(os.path.join(peft_saved, name), "rb").read()
    ours = peft().PeftConfig.from_pretrained(str(tmp_path / "back"))
    theirs = peft().PeftConfig.from_pretrained(peft_saved)
    for key in ("peft_type", "r", "lora_alpha", "fan_in_fan_out", "bias", "use_rslora", "use_dora", "task_type",
                "base_model_name_or_path", "layers_to_transform"):
        assert getattr(ours, key) == getattr(theirs, key), key
    assert set(ours.target_modules) == {"c_attn", "attn.c_proj", "mlp.c_proj"}  # c_proj, named as here


def test_utils_prints_the_adapters(peft_saved):
    result = utils_cli("--adapters", peft_saved)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == '{"rank": 4, "alpha": 8.0, "targets": ["c_attn", "attn.c_proj", "mlp.c_proj"]}'
    assert lines[1].split() == ["blocks/0/attn/c_attn/A", "[64,", "4]"] and lines[-1] == "5,632 parameters"


def broken(peft_saved, tmp_path, config=None, tensors=None, remove=None):
    """A copy of PEFT's folder with adapter_config.json's keys changed (config), tensors {name: array or None}
    added or removed, or a file removed."""
    folder = tmp_path / "broken"
    shutil.copytree(peft_saved, folder)
    if config:
        settings = json.loads((folder / PEFT_FILES[0]).read_text())
        (folder / PEFT_FILES[0]).write_text(json.dumps({**settings, **config}))
    if tensors:
        path = str(folder / PEFT_FILES[1])
        arrays = {name: np.array(array) for name, array in
                  hf_format.read_tensors(path, hf_format.read_header(path)).items()}
        arrays.update(tensors)
        hf_format.write_safetensors(path, {name: array for name, array in arrays.items() if array is not None})
    if remove:
        os.remove(folder / remove)
    return str(folder)


A0 = "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"


@pytest.mark.parametrize("change, fragments", [
    (dict(config={"peft_type": "IA3"}), ["peft_type is \"IA3\": only LoRA adapters"]),
    (dict(config={"use_rslora": True}), ["use_rslora is true, a setting of PEFT's that is not computed here"]),
    (dict(config={"use_dora": True}), ["use_dora is true"]),
    (dict(config={"modules_to_save": ["score"]}), ["modules_to_save is [\"score\"]"]),
    (dict(config={"rank_pattern": {"c_attn": 2}}), ["rank_pattern is {\"c_attn\": 2}"]),
    (dict(config={"bias": "all"}), ["bias is \"all\", a setting of PEFT's", "(only \"none\")"]),
    (dict(config={"init_lora_weights": "pissa"}), ["init_lora_weights is \"pissa\""]),
    (dict(config={"target_modules": ["c_attn", "wte"]}), ["target_modules names \"wte\", which is not one of"]),
    (dict(config={"target_modules": ".*attn.*"}), ["not a regular expression"]),
    (dict(config={"r": 0}), ["r is 0 and lora_alpha 8"]),
    (dict(config={"r": 2}), [A0 + " is [4, 64], not a matrix of rank r = 2"]),
    (dict(config={"target_modules": ["c_attn"]}), ["h.0.attn.c_proj.lora_A.weight, whose linear adapter_config.json "
                                                   "does not adapt"]),
    (dict(config={"layers_to_transform": [1]}), ["h.0.attn.c_attn.lora_A.weight, whose linear"]),
    (dict(tensors={"base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector": np.ones(192, np.float32)}),
     ["lora_magnitude_vector, which is not a LoRA matrix of GPT-2's"]),
    (dict(tensors={"base_model.model.lm_head.lora_A.weight": np.ones((4, 64), np.float32)}),
     ["lm_head.lora_A.weight, which is not a LoRA matrix"]),
    (dict(tensors={A0.replace("lora_A", "lora_B"): None}), ["h.0.attn.c_attn has only one of lora_A and lora_B"]),
    (dict(tensors={A0.replace("transformer.", ""): np.ones((4, 64), np.float32)}), ["twice"]),
    (dict(remove=PEFT_FILES[1]), ["adapter_model.safetensors is missing: a PEFT adapter folder needs"]),
    (dict(config={"lora_alpha": "8"}), ["lora_alpha \"8\""]),
])
def test_what_this_model_does_not_compute_is_a_one_line_error(peft_saved, tmp_path, change, fragments):
    folder = broken(peft_saved, tmp_path, **change)
    with pytest.raises(ValueError) as raised:
        read_adapters(folder)
    message = str(raised.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    assert message.startswith(folder)  # the file is named


def test_a_pickled_adapter_gets_a_hint_and_bad_folders_one_line(peft_saved, tmp_path):
    folder = broken(peft_saved, tmp_path, remove=PEFT_FILES[1])
    open(os.path.join(folder, "adapter_model.bin"), "wb").close()
    assert_one_line_error(utils_cli("--adapters", folder, "--out", str(tmp_path / "x"), "--to", "openai"),
                          "adapter_model.bin, PyTorch's pickle, is not read here")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("mine")
    assert_one_line_error(utils_cli("--adapters", peft_saved, "--out", str(tmp_path / "full"), "--to", "hf"),
                          "is not a new or empty folder")
    assert_one_line_error(utils_cli("--adapters", peft_saved, "--model_dir", folder), "--model_dir does not go with "
                          "--adapters")
    assert_one_line_error(utils_cli("--adapters", str(tmp_path / "none.npz")), "there are no adapters at")
    assert not (tmp_path / "x").exists() and os.listdir(tmp_path / "full") == ["mine.txt"]
