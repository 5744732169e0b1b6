"""Reading Hugging Face's GPT-2 folder (hf_format.py, utils.load_model_dir): folders that transformers' own
save_pretrained wrote, of every real shape, with and without "transformer.", in float32 and float16, give the
TensorFlow reference's logits on the weights as torch holds them, and the same greedy text through gpt2.py; every
damaged file and every config this model does not compute gets a one-line error naming the file."""
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_format
from helpers import PROMPT, SHAPES, TOKENIZER_TEXTS, assert_one_line_error, gpt2_cli, greedy_text, tensorflow_logits, \
    torch_params, transformers
from utils import convert_model_folder, flatten, load_encoder_hparams_and_params

IDS = [50256, 36235, 39141, 18765, 1143, 326, 9061, 561, 530, 1110, 1716, 0, 1, 50255]


def load(model_dir):
    return load_encoder_hparams_and_params(model_dir=str(model_dir))


def refused(folder, *fragments, cli=False):
    """The loader refuses folder with a one-line error holding each fragment; with cli, `gpt2.py --model_dir`
    does, printing it as its one line (a few cases each, since a process takes a second)."""
    if cli:
        return assert_one_line_error(gpt2_cli("Hi", "--model_dir", folder), *fragments)
    with pytest.raises(ValueError) as raised:
        load(folder)
    assert "\n" not in str(raised.value) and all(fragment in str(raised.value) for fragment in fragments), \
        (str(raised.value), fragments)


def reference(folder):
    """(TensorFlow's logits on IDS, transformers' own logits or None for float16) of a save_pretrained folder: its
    weights as transformers loads them, into the TensorFlow reference model."""
    import torch

    hf = transformers()
    model = hf.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        own = model.float()(torch.tensor([IDS])).logits[0].numpy() if model.dtype == torch.float32 else None
    return tensorflow_logits(torch_params(model), IDS, model.config.n_head), own


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_save_pretrained_folders_give_tensorflows_logits(hf_models, shape, dtype):
    """GPT2LMHeadModel's folder (names with "transformer.") against the TensorFlow reference and transformers' own
    logits; GPT2Model's folder of the same model (names without) gives the same arrays, bit for bit."""
    import gpt2

    folders = hf_models(shape)
    _, hparams, params = load(folders["lm", dtype])
    assert hparams == SHAPES[shape]
    ours = gpt2.gpt2(IDS, **params, n_head=hparams["n_head"])
    expected, own = reference(folders["lm", dtype])
    print(f"{shape} {dtype}: max |ours - TensorFlow's| {np.abs(ours - expected).max():.2e}")
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)
    if own is not None:
        np.testing.assert_allclose(ours, own, rtol=0, atol=1e-4)
    base, lm = flatten(load(folders["base", dtype])[2]), flatten(params)
    assert base.keys() == lm.keys() and all(np.array_equal(base[name], lm[name]) for name in lm)


def test_float32_tensors_are_read_only_views_of_the_file_and_float16_ones_exact(hf_models):
    folders = hf_models("tiny")
    params32, params16 = (flatten(load(folders["lm", dtype])[2]) for dtype in ("float32", "float16"))
    import torch

    hf = transformers()
    half = torch_params(hf.GPT2LMHeadModel.from_pretrained(folders["lm", "float16"], dtype=torch.float16))
    for name, array in params32.items():
        assert array.dtype == np.float32 and not array.flags.writeable, name
        assert not array.flags.owndata and array.base is not None, name  # a view (of the mapped file)
    for name, array in flatten(half).items():
        assert params16[name].dtype == np.float32 and not params16[name].flags.writeable, name
        assert np.array_equal(params16[name], array), name  # every float16 value exactly


def test_bfloat16_is_converted_exactly(tmp_path):
    """BF16 is a float32's top 16 bits: torch's own bfloat16 -> float32 is the reference."""
    import torch
    from safetensors.torch import save_file

    values = torch.randn(1000, dtype=torch.float32) * 10.0 ** torch.randint(-30, 30, (1000,))
    save_file({"x": values.to(torch.bfloat16)}, str(tmp_path / "b.safetensors"))
    entries = hf_format.read_header(str(tmp_path / "b.safetensors"))
    ours = hf_format.read_tensors(str(tmp_path / "b.safetensors"), entries)["x"]
    assert ours.dtype == np.float32 and np.array_equal(ours, values.to(torch.bfloat16).float().numpy())


@pytest.mark.parametrize("kind, dtype", [("lm", "float32"), ("base", "float16")])
def test_gpt2_cli_prints_the_reference_greedy_text(hf_models, kind, dtype):
    from encoder import get_encoder
    from vocab import vocab_dir

    folder = hf_models("tiny")[kind, dtype]
    hf = transformers()
    params = torch_params(hf.GPT2LMHeadModel.from_pretrained(folder))
    encoder = get_encoder(os.path.basename(vocab_dir()), os.path.dirname(vocab_dir()))
    expected = greedy_text(lambda ids: tensorflow_logits(params, ids, SHAPES["tiny"]["n_head"]), encoder, PROMPT, 8)
    result = gpt2_cli(PROMPT, "--n_tokens_to_generate", "8", "--model_dir", folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


# ---------------------------------------------------------------------------------------------
# Older files: buffers, lm_head

@pytest.fixture(scope="module")
def tiny_hf(hf_models):
    return hf_models("tiny")["lm", "float32"]


def copy_with(folder, tmp_path, tensors=None, config=None):
    """A copy of folder whose model.safetensors holds `tensors` ({name: array}, written by the safetensors
    package) and whose config.json is changed by the dict config (a value None removes the key)."""
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    if tensors is not None:
        from safetensors.numpy import save_file

        save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        settings = {**json.loads((copy / "config.json").read_text()), **config}
        (copy / "config.json").write_text(json.dumps({key: value for key, value in settings.items()
                                                      if value is not None}))
    return str(copy)


def stored(folder):
    from safetensors.numpy import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def older_file(tensors, n_ctx):
    """The tensors as older transformers saved them: no "transformer.", each layer's causal-mask buffers, and
    lm_head.weight."""
    older = {name.removeprefix("transformer."): array for name, array in tensors.items()}
    for layer in {name.split(".")[1] for name in older if name.startswith("h.")}:
        older[f"h.{layer}.attn.bias"] = np.tril(np.ones((n_ctx, n_ctx), np.float32))[None, None]
        older[f"h.{layer}.attn.masked_bias"] = np.array(-1e4, np.float32)
    older["lm_head.weight"] = older["wte.weight"]
    return older


def test_buffers_and_a_tied_lm_head_are_taken(tiny_hf, tmp_path):
    folder = copy_with(tiny_hf, tmp_path, older_file(stored(tiny_hf), SHAPES["tiny"]["n_ctx"]))
    ours, theirs = flatten(load(folder)[2]), flatten(load(tiny_hf)[2])
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[name], theirs[name]) for name in theirs)


def test_an_lm_head_of_its_own_is_refused(tiny_hf, tmp_path):
    tensors = older_file(stored(tiny_hf), SHAPES["tiny"]["n_ctx"])
    tensors["lm_head.weight"] = tensors["lm_head.weight"].copy()
    tensors["lm_head.weight"][7, 3] += 1
    folder = copy_with(tiny_hf, tmp_path, tensors)
    refused(folder, os.path.join(folder, "model.safetensors"),
            "lm_head.weight differs from its wte.weight", "tied")


# ---------------------------------------------------------------------------------------------
# Damaged files

def with_header(path, edit):
    """Rewrite a safetensors file's header as edit(header dict) returns it, the data left as it is."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = edit(json.loads(data[8:8 + n]))
    text = json.dumps(header).encode() if isinstance(header, dict) else header
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data[8 + n:])


def last_tensor(header):
    return max((name for name in header if name != "__metadata__"), key=lambda name: header[name]["data_offsets"])


def shift(header, name, by):
    header[name]["data_offsets"] = [offset + by for offset in header[name]["data_offsets"]]
    return header


def set_entry(header, name, **entry):
    header[name].update(entry)
    return header


WTE = "transformer.wte.weight"
DAMAGE = {  # edit of the header -> what the error says
    "invalid JSON": (lambda h: json.dumps(h).encode()[:-1] + b" ", "not a JSON object"),
    "not UTF-8": (lambda h: json.dumps(h).encode().replace(b'"transformer.wte', b'"\xfftransformer.wte'),
                  "not a JSON object"),
    "a list": (lambda h: b"[]", "not a JSON object"),
    "a name twice": (lambda h: json.dumps(h).encode()[:-1] + b', "transformer.ln_f.bias": '
                     + json.dumps(h["transformer.ln_f.bias"]).encode() + b"}", "not a JSON object"),
    "overlap": (lambda h: shift(h, last_tensor(h), -4), "overlaps the tensor before it"),
    "a hole": (lambda h: shift(h, "transformer.h.0.attn.c_attn.bias", 4), "leaves a gap before it"),
    "past the end": (lambda h: set_entry(h, WTE, shape=[50258, 64], data_offsets=[h[WTE]["data_offsets"][0],
                                                                         h[WTE]["data_offsets"][1] + 256]), "cut off"),
    "dtype against length": (lambda h: set_entry(h, WTE, dtype="F16"), "its data_offsets hold"),
    "shape against length": (lambda h: set_entry(h, WTE, shape=[50257, 63]), "its data_offsets hold"),
    "unknown dtype": (lambda h: set_entry(h, WTE, dtype="F33"), "not a known dtype"),
    "offsets not numbers": (lambda h: set_entry(h, WTE, data_offsets=["0", 4]), "two data_offsets"),
    "negative shape": (lambda h: set_entry(h, WTE, shape=[-50257, -64]), "a shape"),
    "metadata not strings": (lambda h: {**h, "__metadata__": {"format": 1}}, "not a JSON object"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_header_is_a_one_line_error_naming_the_file(tiny_hf, tmp_path, case):
    edit, fragment = DAMAGE[case]
    folder = copy_with(tiny_hf, tmp_path)
    path = os.path.join(folder, "model.safetensors")
    with_header(path, edit)
    with pytest.raises(ValueError, match="is not a whole safetensors file") as raised:
        load(folder)
    assert path in str(raised.value) and fragment in str(raised.value), str(raised.value)
    if case == "overlap":  # and through the command line, as one line
        refused(folder, path, "nothing is downloaded", cli=True)


@pytest.mark.parametrize("cut", ["in N", "in the header", "in the data", "one byte short", "one byte more"])
def test_a_file_cut_short_or_lengthened_never_loads(tiny_hf, tmp_path, cut):
    folder = copy_with(tiny_hf, tmp_path)
    path = os.path.join(folder, "model.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    at = {"in N": 5, "in the header": 8 + n // 2, "in the data": len(data) // 2, "one byte short": len(data) - 1,
          "one byte more": len(data)}[cut]
    with open(path, "wb") as f:
        f.write(data[:at] + (b"\0" if cut == "one byte more" else b""))
    refused(folder, path, "is not a whole safetensors file", cli=cut == "in the data")


@pytest.mark.parametrize("change, fragment", [
    (lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"), "has no h.1.mlp.c_fc.bias"),
    (lambda t: t.pop("transformer.h.1.ln_1.weight"), "holds 1 layers, but"),
    (lambda t: t.update({"transformer.wpe.weight": np.zeros((65, 64), np.float32)}), "wpe.weight is [65, 64]"),
    (lambda t: t.update({"transformer.h.0.attn.c_attn.weight": np.zeros((192, 64), np.float32)}),
     "h.0.attn.c_attn.weight is [192, 64], but"),
    (lambda t: t.update({"multiple_choice_head.summary.weight": np.zeros((1, 64), np.float32)}),
     "holds multiple_choice_head.summary.weight, which is not one of"),
    (lambda t: t.update({"ln_f.bias": t["transformer.ln_f.bias"]}), "holds ln_f.bias twice"),
    (lambda t: t.update({"transformer.ln_f.bias": t["transformer.ln_f.bias"].astype(np.float64)}),
     "ln_f.bias is F64: GPT-2's weights are read as F32, F16 or BF16"),
])
def test_tensors_of_another_model_are_a_one_line_error(tiny_hf, tmp_path, change, fragment):
    tensors = stored(tiny_hf)
    change(tensors)
    folder = copy_with(tiny_hf, tmp_path, tensors)
    refused(folder, os.path.join(folder, "model.safetensors"), fragment, cli="c_fc" in fragment)


@pytest.fixture(scope="module")
def header_bytes(tiny_hf):
    with open(os.path.join(tiny_hf, "model.safetensors"), "rb") as f:
        data = f.read()
    return data[:8 + int.from_bytes(data[:8], "little")], len(data)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("header-fuzz")


@settings(max_examples=300, deadline=1000)
@given(data=st.data())
def test_damaged_headers_get_only_a_value_error(header_bytes, scratch, data):
    """Random damage to the first bytes (N and the header), the data's length kept: read_header raises ValueError
    and nothing else, or reads a header that still tiles the file (a flipped bit in a name, say)."""
    header, size = header_bytes
    spots = st.lists(st.tuples(st.integers(0, len(header) - 1), st.integers(0, 255)), min_size=1, max_size=6)
    damaged = bytearray(header)
    for at, byte in data.draw(spots):
        damaged[at] = byte
    path = scratch / "model.safetensors"
    with open(path, "wb") as f:
        f.write(bytes(damaged))
        f.truncate(size)
    try:
        entries = hf_format.read_header(str(path))
    except ValueError:
        return
    assert sum(entry["size"] for entry in entries.values()) == size - len(header)


# ---------------------------------------------------------------------------------------------
# config.json

@pytest.mark.parametrize("key, value", [
    ("activation_function", "gelu"), ("activation_function", "relu"), ("scale_attn_weights", False),
    ("scale_attn_by_inverse_layer_idx", True), ("add_cross_attention", True), ("n_inner", 128),
    ("layer_norm_epsilon", 1e-6), ("tie_word_embeddings", False), ("model_type", "gpt_neo"), ("model_type", None),
])
def test_a_config_this_model_does_not_compute_is_a_one_line_error_naming_the_key(tiny_hf, tmp_path, key, value):
    folder = copy_with(tiny_hf, tmp_path, config={key: value})
    refused(folder, os.path.join(folder, "config.json"), key, cli=value == "relu")


@pytest.mark.parametrize("config", [
    {"activation_function": "gelu_pytorch_tanh"}, {"n_inner": 256}, {"reorder_and_upcast_attn": True},
    {"dtype": "bfloat16"}, {"torch_dtype": "float16"},
])
def test_configs_that_compute_the_same_gpt2_are_taken(tiny_hf, tmp_path, config):
    """Each gives transformers' own logits for that config (the same model) and the project's usual ones."""
    import gpt2
    import torch

    folder = copy_with(tiny_hf, tmp_path, config=config)
    _, hparams, params = load(folder)
    assert hparams == SHAPES["tiny"]
    ours = gpt2.gpt2(IDS, **params, n_head=hparams["n_head"])
    with torch.no_grad():
        model = transformers().GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
        theirs = model(torch.tensor([IDS])).logits[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_gelu_pytorch_tanh_is_gelu_new():
    import torch

    activations = transformers().activations.ACT2FN
    x = torch.linspace(-12, 12, 100001, dtype=torch.float64)
    difference = (activations["gelu_pytorch_tanh"](x) - activations["gelu_new"](x)).abs().max().item()
    assert difference < 1e-14, difference


def test_n_ctx_stands_for_n_positions_in_older_configs(tiny_hf, tmp_path):
    folder = copy_with(tiny_hf, tmp_path, config={"n_positions": None, "n_ctx": 64})
    assert load(folder)[1] == SHAPES["tiny"]


def test_missing_keys_take_gpt2configs_defaults(tiny_hf, tmp_path):
    folder = copy_with(tiny_hf, tmp_path, config={key: None for key in hf_format.DEFAULTS if key not in
                                                  ("n_positions", "n_embd", "n_head", "n_layer")})
    assert load(folder)[1] == SHAPES["tiny"]  # vocab_size's default is 50257


def test_a_config_that_is_not_json_is_named(tiny_hf, tmp_path):
    folder = copy_with(tiny_hf, tmp_path)
    with open(os.path.join(folder, "config.json"), "a") as f:
        f.write(",")
    refused(folder, os.path.join(folder, "config.json"),
            "is truncated or corrupt")


@pytest.mark.parametrize("value", [0, -1, 2.5, "64", 1 << 30])
def test_a_shape_that_is_not_a_whole_number_is_named(tiny_hf, tmp_path, value):
    folder = copy_with(tiny_hf, tmp_path, config={"n_embd": value})
    refused(folder, os.path.join(folder, "config.json"),
            "does not hold GPT-2's vocab_size, n_positions, n_embd, n_head, n_layer")


# ---------------------------------------------------------------------------------------------
# Files missing

@pytest.mark.parametrize("kind, name, missing", [
    ("base", "model.safetensors", "model.safetensors"), ("base", "vocab.json", "vocab.json"),
    ("base", "merges.txt", "merges.txt"), ("lm", "tokenizer.json", "vocab.json")])
def test_a_missing_file_is_named(hf_models, tmp_path, kind, name, missing):
    folder = copy_with(hf_models("tiny")[kind, "float32"], tmp_path)
    os.remove(os.path.join(folder, name))
    refused(folder, os.path.join(folder, missing), "is missing", "a Hugging Face GPT-2 folder needs config.json, "
            "model.safetensors, and vocab.json and merges.txt (or tokenizer.json)", cli=name == "model.safetensors")


def test_a_pytorch_model_bin_alone_gets_the_command_that_converts_it(tiny_hf, tmp_path):
    """The command the error gives, run as it is, makes the folder one that loads, with the same weights."""
    import subprocess
    import sys

    import torch

    folder = copy_with(tiny_hf, tmp_path)
    model = transformers().GPT2LMHeadModel.from_pretrained(folder)
    torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
    os.remove(os.path.join(folder, "model.safetensors"))
    result = gpt2_cli("Hi", "--model_dir", folder)
    assert_one_line_error(result, folder, "pytorch_model.bin", "python -c")
    command = result.stderr.strip().splitlines()[-1].split("with: python -c ", 1)[1]
    assert command[0] == command[-1] == '"'
    converted = subprocess.run([sys.executable, "-c", command[1:-1]], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert converted.returncode == 0, converted.stderr
    ours, theirs = flatten(load(folder)[2]), flatten(load(tiny_hf)[2])
    assert all(np.array_equal(ours[name], theirs[name]) for name in theirs)


# ---------------------------------------------------------------------------------------------
# tokenizer.json, transformers 5's only tokenizer file

def test_tokenizer_json_gives_transformers_token_ids(tiny_hf):
    assert os.path.isfile(os.path.join(tiny_hf, "tokenizer.json"))
    assert not os.path.exists(os.path.join(tiny_hf, "vocab.json"))
    encoder, tokenizer = load(tiny_hf)[0], transformers().AutoTokenizer.from_pretrained(tiny_hf)
    for text in TOKENIZER_TEXTS:
        assert encoder.encode(text) == tokenizer(text)["input_ids"], text


def test_tokenizer_json_becomes_openais_own_files(tiny_hf, tmp_path):
    from vocab import vocab_dir

    convert_model_folder(str(tmp_path / "openai"), "openai", model_dir=tiny_hf)
    for name in ("encoder.json", "vocab.bpe"):
        with open(os.path.join(vocab_dir(), name), "rb") as f:
            assert (tmp_path / "openai" / name).read_bytes() == f.read(), name


def edit_tokenizer(folder, tmp_path, edit):
    """A copy of folder whose tokenizer.json is edit(its dict)."""
    copy = copy_with(folder, tmp_path)
    path = os.path.join(copy, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        tokenizer = json.load(f)
    edit(tokenizer)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tokenizer, f)
    return copy


def test_older_tokenizer_json_merges_as_strings_are_read(tiny_hf, tmp_path):
    def as_strings(tokenizer):
        tokenizer["model"]["merges"] = [" ".join(merge) for merge in tokenizer["model"]["merges"]]

    encoder = load(edit_tokenizer(tiny_hf, tmp_path, as_strings))[0]
    assert [encoder.encode(text) for text in TOKENIZER_TEXTS] == [load(tiny_hf)[0].encode(text)
                                                                   for text in TOKENIZER_TEXTS]


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t["pre_tokenizer"].update(add_prefix_space=True), "is not GPT-2's tokenizer"),
    (lambda t: t.update(normalizer={"type": "NFC"}), "is not GPT-2's tokenizer"),
    (lambda t: t["model"].update(dropout=0.1), "is not GPT-2's tokenizer"),
    (lambda t: t["model"].update(type="WordPiece"), "is not GPT-2's tokenizer"),
    (lambda t: t["model"]["merges"].pop(), "is truncated or corrupt"),
])
def test_another_tokenizer_is_a_one_line_error(tiny_hf, tmp_path, edit, fragment):
    folder = edit_tokenizer(tiny_hf, tmp_path, edit)
    refused(folder, os.path.join(folder, "tokenizer.json"), fragment)


def test_a_tokenizer_json_cut_short_is_named(tiny_hf, tmp_path):
    folder = copy_with(tiny_hf, tmp_path)
    path = os.path.join(folder, "tokenizer.json")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    refused(folder, path, "is truncated or corrupt")
