"""Fixtures: small random-weight GPT-2 checkpoints in OpenAI's exact layout, and in Hugging Face's as transformers
saves them, written once per run."""
import math
import os
import shutil
import sys

import pytest
from hypothesis import settings

# In CI the property tests try the same examples every run, so a red build can be reproduced;
# on a developer's machine they keep exploring new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from helpers import DICKENS, ROOT, SHAPES, model_seed  # noqa: E402

sys.path.insert(0, ROOT)  # gpt2.py, encoder.py, utils.py live at the top level

from checkpoints import write_model  # noqa: E402


@pytest.fixture(scope="session")
def make_models(tmp_path_factory):
    """make_models(shape) -> (models_dir, model_size): models_dir/model_size holds a random-weight
    model of that shape ("tiny" goes in "124M", the CLI's default). Written once per test run."""
    made = {}

    def make(shape):
        if shape not in made:
            models_dir, size = tmp_path_factory.mktemp(f"models-{shape}"), "124M" if shape == "tiny" else shape
            write_model(str(models_dir / size), SHAPES[shape], seed=model_seed(shape))
            made[shape] = str(models_dir), size
        return made[shape]

    return make


@pytest.fixture(scope="session")
def tiny_models(make_models):
    """models_dir with a tiny random model as its "124M"."""
    return make_models("tiny")[0]


@pytest.fixture(scope="session")
def tiny(tiny_models):
    """The tiny model as the loader gives it: (encoder, hparams, params)."""
    from utils import load_encoder_hparams_and_params

    return load_encoder_hparams_and_params("124M", tiny_models)


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    """hf_models(shape) -> {(kind, dtype): folder}: one random GPT-2 of that shape saved by transformers' own
    save_pretrained as GPT2LMHeadModel (kind "lm": names with "transformer.") and as GPT2Model ("base": without),
    in float32 and float16. The "lm" folders hold GPT-2's tokenizer as transformers 5 saves it (tokenizer.json
    alone), the "base" ones GPT-2's vocab.json and merges.txt (as older versions and the Hub's folders). Written
    once per test run (a real shape's folders kept until another real shape is asked for)."""
    made = {}

    def make(shape):
        if shape not in made:
            if shape != "tiny":  # a real shape's four folders take up to 1.3 GB: keep one real shape's at a time
                for old in [old for old in made if old != "tiny"]:
                    shutil.rmtree(os.path.dirname(made.pop(old)["lm", "float32"]))
            made[shape] = save_pretrained_folders(tmp_path_factory.mktemp(f"hf-{shape}"), shape)
        return made[shape]

    return make


def save_pretrained_folders(root, shape):
    """save_pretrained's folders of hf_models, under root."""
    import torch
    from helpers import transformers
    from vocab import vocab_dir

    hf, hparams = transformers(), SHAPES[shape]
    config = hf.GPT2Config(vocab_size=hparams["n_vocab"], n_positions=hparams["n_ctx"], n_embd=hparams["n_embd"],
                           n_head=hparams["n_head"], n_layer=hparams["n_layer"])
    torch.manual_seed(model_seed(shape))
    model = hf.GPT2LMHeadModel(config).eval()
    trained_looking(model)
    vocab = root / "vocab"
    vocab.mkdir()
    for theirs, ours in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        shutil.copyfile(os.path.join(vocab_dir(), theirs), vocab / ours)
    tokenizer = hf.GPT2Tokenizer.from_pretrained(str(vocab))
    folders = {}
    for dtype in ("float32", "float16"):
        model = model.to(getattr(torch, dtype))
        for kind, saved in (("lm", model), ("base", model.transformer)):
            folders[kind, dtype] = str(root / f"{kind}-{dtype}")
            saved.save_pretrained(folders[kind, dtype])
            if kind == "lm":
                tokenizer.save_pretrained(folders[kind, dtype])
            else:
                shutil.copytree(vocab, folders[kind, dtype], dirs_exist_ok=True)
    return folders


def trained_looking(model):
    """Redraw a transformers GPT-2's weights at the scales of checkpoints.py's random weights (fan-in scaled; c_proj
    and the token embeddings large), so that its predictions depend on the context, as a trained model's do."""
    import torch

    n_embd = model.config.n_embd
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("wte.weight") or name.endswith("wpe.weight"):
                p.normal_(0, (2.5 if "wte" in name else 0.5) / math.sqrt(n_embd))
            elif ".ln_" in name and name.endswith("weight"):
                p.normal_(1, 0.1)
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
            else:  # Conv1D [in, out]
                p.normal_(0, (4 if "c_proj" in name else 1) / math.sqrt(p.shape[0]))


@pytest.fixture
def tmp_path(tmp_path):
    """pytest's tmp_path, removed when its test ends: the real-shape tests write about 7 GB in all, more than
    a CI machine's disk may have free, and pytest keeps every test's folder until the next run."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="session")
def dickens(tmp_path_factory):
    """A text file a tiny model learns in a few steps: Dickens's first paragraph, 12 times."""
    path = tmp_path_factory.mktemp("text") / "dickens.txt"
    path.write_text(DICKENS * 12, encoding="utf-8")
    return str(path)
