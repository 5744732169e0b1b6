"""Converting model folders (`python utils.py --model_dir SRC --out DST --to hf|openai`): the project's
Hugging Face folder loads with transformers' GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained,
giving the TensorFlow reference's logits and the project's token ids; OpenAI -> Hugging Face -> OpenAI is bit
for bit; the safetensors file is byte for byte the safetensors package's; the write is atomic and only into a new
or empty folder."""
import os
import shutil

import numpy as np
import pytest

import hf_format
import utils
from checkpoints import bits, reference_logits
from helpers import SHAPES, TOKENIZER_TEXTS, assert_one_line_error, run, tensorflow_arrays, transformers
from utils import convert_model_folder, flatten, load_encoder_hparams_and_params

IDS = [50256, 464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 0, 1, 50255]


def utils_cli(*args, **kwargs):
    return run("utils.py", *args, **kwargs)


@pytest.fixture(scope="module")
def converted(make_models, tmp_path_factory):
    """converted(shape) -> (OpenAI folder, the project's Hugging Face folder of it), converted once."""
    made = {}

    def convert(shape):
        if shape not in made:
            models_dir, size = make_models(shape)
            out = str(tmp_path_factory.mktemp(f"converted-{shape}") / "hf")
            convert_model_folder(out, "hf", model_dir=os.path.join(models_dir, size))
            made[shape] = os.path.join(models_dir, size), out
        return made[shape]

    yield convert
    for _, out in made.values():  # about 1 GB at the real shapes
        shutil.rmtree(os.path.dirname(out))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_transformers_loads_our_folder_with_tensorflows_logits(converted, shape):
    import torch

    source, folder = converted(shape)
    model = transformers().GPT2LMHeadModel.from_pretrained(folder).eval()
    assert model.dtype == torch.float32 and model.config.n_layer == SHAPES[shape]["n_layer"]
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied, as GPT-2's is
    with torch.no_grad():
        theirs = model(torch.tensor([IDS])).logits[0].numpy()
    expected = reference_logits(source, IDS)
    print(f"{shape}: max |transformers' - TensorFlow's| {np.abs(theirs - expected).max():.2e}")
    np.testing.assert_allclose(theirs, expected, rtol=0, atol=1e-4)


def test_autotokenizer_gives_the_projects_token_ids(converted):
    from encoder import get_encoder

    source, folder = converted("tiny")
    tokenizer = transformers().AutoTokenizer.from_pretrained(folder)
    encoder = get_encoder(os.path.basename(source), os.path.dirname(source))
    for text in TOKENIZER_TEXTS:
        ids = encoder.encode(text)
        assert tokenizer(text)["input_ids"] == ids, text
        assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == 50256 and tokenizer.model_max_length == 64


def test_generation_config_is_gpt2s(converted):
    generation = transformers().GenerationConfig.from_pretrained(converted("tiny")[1])
    assert generation.bos_token_id == generation.eos_token_id == 50256


@pytest.mark.parametrize("shape", ["tiny", "355M"])
def test_openai_to_hf_to_openai_is_bit_for_bit(converted, tmp_path, shape):
    source, folder = converted(shape)
    convert_model_folder(str(tmp_path / "back"), "openai", model_dir=folder)
    original, back = tensorflow_arrays(source), tensorflow_arrays(str(tmp_path / "back"))  # TensorFlow's reader
    assert sorted(back) == sorted(original)
    for name, array in original.items():
        assert np.array_equal(bits(back[name]), bits(array)), name
    for name in ("encoder.json", "vocab.bpe"):
        assert (tmp_path / "back" / name).read_bytes() == open(os.path.join(source, name), "rb").read()


def test_our_safetensors_file_is_the_safetensors_packages_byte_for_byte(converted, tmp_path):
    from safetensors.numpy import save_file

    _, folder = converted("tiny")
    tensors = {name: np.array(array) for name, array in hf_format.read_tensors(
        os.path.join(folder, "model.safetensors"), hf_format.read_header(os.path.join(folder, "model.safetensors"))
    ).items()}
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        assert f.read() == (tmp_path / "theirs.safetensors").read_bytes()


def test_a_transformers_folder_goes_to_openai_and_back_bit_for_bit(hf_models, tmp_path):
    """save_pretrained's float16 weights become float32 exactly in OpenAI's checkpoint, which TensorFlow reads, and
    come back as float32 safetensors holding the same values."""
    import torch

    folder = hf_models("tiny")["base", "float16"]
    for source, out, to in ((folder, "openai", "openai"), (str(tmp_path / "openai"), "hf", "hf")):
        result = utils_cli("--model_dir", source, "--out", str(tmp_path / out), "--to", to)
        assert result.returncode == 0, result.stderr
    model = transformers().GPT2Model.from_pretrained(folder, dtype=torch.float16)
    theirs = {name.removeprefix("transformer."): tensor.float().numpy() for name, tensor in model.state_dict().items()}
    tensorflow = tensorflow_arrays(str(tmp_path / "openai"))
    assert np.array_equal(tensorflow["blocks/1/mlp/c_fc/w"], theirs["h.1.mlp.c_fc.weight"])
    assert np.array_equal(tensorflow["ln_f/g"], theirs["ln_f.weight"])
    back = transformers().GPT2Model.from_pretrained(str(tmp_path / "hf")).state_dict()
    assert set(back) == set(theirs)
    for name, tensor in back.items():
        assert tensor.dtype == torch.float32 and np.array_equal(tensor.numpy(), theirs[name]), name


def test_a_download_converts_by_size(make_models, tmp_path):
    models_dir, _ = make_models("tiny")
    result = utils_cli("--model_size", "124M", "--models_dir", models_dir, "--out", str(tmp_path / "hf"), "--to", "hf")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "hf")) == sorted(utils.HF_MODEL_FILES)
    ours, theirs = (flatten(load_encoder_hparams_and_params(model_dir=folder)[2])
                    for folder in (str(tmp_path / "hf"), os.path.join(models_dir, "124M")))
    assert all(np.array_equal(ours[name], theirs[name]) for name in theirs)


def test_utils_still_prints_the_parameters(make_models):
    models_dir, _ = make_models("tiny")
    result = utils_cli("--model_size", "124M", "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == '{"n_vocab": 50257, "n_ctx": 64, "n_embd": 64, "n_head": 4, "n_layer": 2}'
    assert "blocks/0/attn/c_attn/w" in result.stdout and lines[-1].endswith(" parameters")


def test_a_failed_write_leaves_no_folder_that_loads(converted, tmp_path, monkeypatch):
    source, _ = converted("tiny")

    def cut_short(path, tensors, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("the disk is full")

    monkeypatch.setattr(hf_format, "write_safetensors", cut_short)
    with pytest.raises(OSError, match="the disk is full"):
        convert_model_folder(str(tmp_path / "out"), "hf", model_dir=source)
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("args, fragments", [
    (["--out", "{tmp}/x"], ["--out and --to go together"]),
    (["--to", "hf"], ["--out and --to go together"]),
    (["--out", "{tmp}/x", "--to", "onnx"], ["--to is openai or hf, not 'onnx'"]),
    (["--out", "{tmp}/full", "--to", "hf"], ["{tmp}/full is not a new or empty folder"]),
    (["--out", "{tmp}/x", "--to"], ["--to needs a value"]),
    (["--model_size", "355M"], ["--model_size does not go with --model_dir"]),
])
def test_bad_flags_are_a_one_line_error(converted, tmp_path, args, fragments):
    source, _ = converted("tiny")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = utils_cli("--model_dir", source, *args)
    assert_one_line_error(result, *(fragment.replace("{tmp}", str(tmp_path)) for fragment in fragments))
    assert not (tmp_path / "x").exists() and os.listdir(tmp_path / "full") == ["notes.txt"]
