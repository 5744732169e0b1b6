"""The GPT-2 loader and saver: a model folder <-> (encoder, hparams, params), joining the model
store (store.py: downloads, atomic saves, the folder lock) and the checkpoint formats: OpenAI's
(tf_checkpoint.py) and Hugging Face's (hf_format.py), which a model_dir may be in.

Here the checkpoint's tensors become GPT-2's parameter tree, and everything is checked against
the model it claims to be: hparams.json, the index's names and shapes, the data file's length,
and each tensor's CRC32C once per version of the data file (verified.json remembers it). A file
of OpenAI's found damaged is set aside and fetched again; in a folder given as model_dir (one a
fine-tune saved, say), which is used as it is, it is an error. save_model_folder writes the
parameter tree back as OpenAI's files, save_hf_folder as Hugging Face's, and convert_model_folder
turns one folder into the other. Every error a user can meet is a ValueError or OSError with a
message that says what to do; the CLI prints it as one line.
"""
import json
import os
import re
import shutil
import sys
import zipfile

import numpy as np

import hf_format
import tf_checkpoint
from encoder import MAX_FILE_BYTES, Encoder, fits, read_encoder
from store import DATA_FILE, INDEX_FILE, REQUIRED_FILES, DamagedFile, base_url, check_file_name, check_model_size, \
    download_gpt2_files, save_files, set_aside, settled_folder, where_else
# Imported from utils before the store and the format had files of their own; they still are.
from store import BASE_URL, FILENAMES, MODEL_SIZES, download_file  # noqa: F401


class MixedFolder(ValueError):
    """A folder whose checkpoint and hparams.json are of different models, as `what` says."""

    def __init__(self, what):
        super().__init__(f"{what}: put the right one in, or delete the wrong one and run again to download it")
        self.what = what


HPARAMS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
OPENAI_SHAPES = {"124M": (12, 768, 12), "355M": (24, 1024, 16), "774M": (36, 1280, 20), "1558M": (48, 1600, 25)}
VERIFIED_FILE = "verified.json"  # which versions of the checkpoint have passed their checksums
HF_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")  # what a Hugging Face folder needs


def load_encoder_hparams_and_params(model_size="124M", models_dir="models", model_dir=None):
    """(encoder, hparams, params) for model_size, downloading what models_dir does not have yet;
    or, given model_dir, from that folder as it is (see load_model_dir).

    A file found damaged is named on stderr, set aside and fetched again: a data file that is
    only too short is taken for a cut-off copy and resumed, anything else downloaded afresh.
    Without network, the download error then names it. A file still damaged when downloaded
    afresh is an error: the server's copy is bad."""
    if model_dir is not None:
        if (model_size, models_dir) != ("124M", "models"):
            raise ValueError("give model_dir alone: it names the model folder itself, so model_size and models_dir "
                             "do not apply")
        return load_model_dir(model_dir)
    check_model_size(model_size)
    model_dir = os.path.join(models_dir, model_size)
    made = make_folders(models_dir, model_dir)
    try:
        return download_and_read(model_size, model_dir)
    except BaseException:  # nothing came (offline, say): a folder made for it goes again
        for folder in made:
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        raise


def make_folders(models_dir, model_dir):
    """models_dir and models_dir/model_size made if missing, never under a parent that does not exist (a
    mistyped models_dir would otherwise make a tree from the root). Returns those made, the deepest first."""
    made = []
    for folder in (models_dir or ".", model_dir):
        if not os.path.isdir(folder):
            parent = os.path.dirname(os.path.abspath(folder))
            if not os.path.isdir(parent):
                raise ValueError(f"models_dir {models_dir} cannot be made: {parent} does not exist (a typo?); "
                                 "give a models_dir in a folder that exists")
            os.mkdir(folder)
            made.insert(0, folder)
    return made


def download_and_read(model_size, model_dir):
    """load_encoder_hparams_and_params's download, check and repair of model_dir."""
    refetched = {}  # path -> "resumed" or "fresh"
    with settled_folder(model_dir):  # a folder a save was cut short in is made whole first
        while True:
            download_gpt2_files(model_size, model_dir)
            try:
                return read_model_folder(model_dir, model_size)
            except DamagedFile as e:
                if refetched.get(e.path) == "fresh":
                    raise ValueError(f"{e}, as downloaded just now from {base_url()}/{model_size}/: "
                                     f"{where_else(e.path)}") from None
                resume = e.resumable and e.path not in refetched
                print(f"{e}; {'fetching the rest' if resume else 'fetching it again'}", file=sys.stderr)
                set_aside(e.path, resume)
                refetched[e.path] = "resumed" if resume else "fresh"


def load_model_dir(model_dir):
    """(encoder, hparams, params) from a model folder used as it is (one a fine-tune saved, say):
    nothing is downloaded into it, so a file missing or damaged is an error that names it. A save
    into it that was cut short is finished first (store.finish_interrupted_save)."""
    if not os.path.isdir(model_dir):
        raise ValueError(f"there is no model folder {model_dir}")
    with settled_folder(model_dir):
        hf = is_hf_folder(model_dir)
        check_files(model_dir, (HF_FILES[:2] if has_tokenizer_json(model_dir) else HF_FILES) if hf
                    else REQUIRED_FILES)
        try:
            return read_hf_folder(model_dir) if hf else read_model_folder(model_dir)
        except DamagedFile as e:
            raise ValueError(f"{e}; nothing is downloaded into a model_dir, so copy a whole one in "
                             "(or save the model again)") from None
        except MixedFolder as e:  # a download cannot mend it: say what is wrong, not to download again
            raise ValueError(f"{model_dir} is inconsistent: {e.what}; copy a whole model folder in (or save the "
                             "model again)") from None


def check_files(model_dir, names):
    """A one-line error for the first of the files `names` that model_dir lacks, saying what to do."""
    missing = [name for name in names if not os.path.isfile(os.path.join(model_dir, name))]
    if not missing:
        return
    path = os.path.join(model_dir, missing[0])
    if missing[0] == "model.safetensors" and os.path.isfile(os.path.join(model_dir, "pytorch_model.bin")):
        raise ValueError(f"{model_dir} holds its weights as pytorch_model.bin (PyTorch's pickle), which is not read "
                         f"here: with transformers installed, write them as model.safetensors beside it with: python "
                         f"-c \"from transformers import GPT2LMHeadModel as M; M.from_pretrained({model_dir!r})"
                         f".save_pretrained({model_dir!r})\"")
    needs = f"a model folder needs {', '.join(names)}"
    if names[0] == "config.json":
        needs = "a Hugging Face GPT-2 folder needs config.json, model.safetensors, and vocab.json and merges.txt " \
                "(or tokenizer.json)"
    raise ValueError(f"{path} is missing, and nothing is downloaded into a model_dir: {needs}")


def has_tokenizer_json(model_dir):
    """Whether a Hugging Face folder keeps its vocabulary in tokenizer.json alone, as transformers 5 saves it."""
    return os.path.isfile(os.path.join(model_dir, "tokenizer.json")) and not any(
        os.path.isfile(os.path.join(model_dir, name)) for name in ("vocab.json", "merges.txt"))


def read_model_folder(model_dir, model_size=None):
    """(encoder, hparams, params) from a folder that has the five files that are read
    (store.REQUIRED_FILES); DamagedFile names one that is not whole. model_size: the size the
    folder is kept as, which an OpenAI-shaped hparams.json must agree with."""
    hparams = read_hparams(os.path.join(model_dir, "hparams.json"))
    if model_size is not None:
        check_size_name(hparams, model_size, model_dir)
    return read_vocab(model_dir), hparams, load_params(model_dir, hparams)


def read_vocab(model_dir):
    """The encoder from a model folder's two vocabulary files (vocab_paths), or from the
    tokenizer.json of a Hugging Face folder without them; DamagedFile names a file that is not whole."""
    encoder_path, bpe_path = vocab_paths(model_dir)
    if is_hf_folder(model_dir) and has_tokenizer_json(model_dir):
        return Encoder(*read_tokenizer_json(model_dir))
    try:
        return read_encoder(encoder_path, bpe_path)
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep
        raise DamagedFile(damaged_vocab_file(encoder_path, bpe_path), "is truncated or corrupt") from None


def read_tokenizer_json(model_dir):
    """(token table, merges) of a Hugging Face folder's tokenizer.json (hf_format's paragraph 7);
    DamagedFile if it is not whole, ValueError if it is not GPT-2's tokenizer."""
    path = os.path.join(model_dir, "tokenizer.json")
    tokenizer = read_json(path, max_bytes=MAX_FILE_BYTES)
    try:
        vocab, merges = hf_format.vocab_from_tokenizer(tokenizer)
    except ValueError as e:
        raise ValueError(f"{path} {e}: only GPT-2's own tokenizer is read") from None
    if not fits(vocab, merges):
        raise DamagedFile(path, "is truncated or corrupt (its vocab and merges do not match)")
    return vocab, merges


def is_hf_folder(model_dir):
    """Whether model_dir is in Hugging Face's layout: its config.json, and no hparams.json of OpenAI's."""
    return os.path.isfile(os.path.join(model_dir, "config.json")) and \
        not os.path.isfile(os.path.join(model_dir, "hparams.json"))


def vocab_paths(model_dir):
    """The paths of a model folder's token table and merges: OpenAI's encoder.json and vocab.bpe, or
    in a Hugging Face folder vocab.json and merges.txt, the same files under other names."""
    names = ("vocab.json", "merges.txt") if is_hf_folder(model_dir) else ("encoder.json", "vocab.bpe")
    return tuple(os.path.join(model_dir, name) for name in names)


def read_json(path, max_bytes=1 << 20):
    """A small JSON file (hparams.json); DamagedFile naming it if it is not whole."""
    try:
        if os.path.getsize(path) > max_bytes:
            raise ValueError
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, too large, or nested too deep
        raise DamagedFile(path, "is truncated or corrupt") from None


def read_hparams(path):
    return check_hparams(read_json(path), path, HPARAMS)


def check_hparams(hparams, path, keys):
    """hparams, once each of HPARAMS is a whole number (and n_head divides n_embd); DamagedFile
    naming path, which holds them under the names `keys`, if not."""
    if not (isinstance(hparams, dict) and all(type(hparams.get(k)) is int and 0 < hparams[k] < 1 << 24 for k in HPARAMS)
            and hparams["n_embd"] % hparams["n_head"] == 0):
        raise DamagedFile(path, f"does not hold GPT-2's {', '.join(keys)}")
    return hparams


def check_size_name(hparams, model_size, model_dir):
    """A folder of one of OpenAI's four sizes must sit under that size's name: a 124M folder in
    models/355M would otherwise run as 355M. (A shape of one's own is taken as it is.)"""
    shape = (hparams["n_layer"], hparams["n_embd"], hparams["n_head"])
    actual = next((size for size, openai_shape in OPENAI_SHAPES.items() if openai_shape == shape), model_size)
    if actual != model_size:
        raise ValueError(f"{os.path.join(model_dir, 'hparams.json')} is GPT-2 {actual}'s (n_layer {shape[0]}, n_embd "
                         f"{shape[1]}, n_head {shape[2]}), not {model_size}'s: move the folder to "
                         f"{os.path.join(os.path.dirname(model_dir), actual)}, or empty {model_dir} and run again to "
                         f"download {model_size}")


def damaged_vocab_file(encoder_path, bpe_path):
    """Which of encoder.json and vocab.bpe (vocab.json and merges.txt) to blame when read_encoder
    refuses them. encoder.json cut off anywhere is not valid JSON (its closing brace comes last), so
    if it reads as GPT-2's 50,257 tokens, it is whole and vocab.bpe is not."""
    try:
        tokens = read_json(encoder_path, max_bytes=MAX_FILE_BYTES)
    except DamagedFile:
        return encoder_path
    whole = isinstance(tokens, dict) and len(tokens) == 50257 and "<|endoftext|>" in tokens
    return bpe_path if whole else encoder_path


def load_params(model_dir, hparams):
    """The parameters, memory-mapped from the checkpoint. Its checksums are checked the first time
    a version of it is loaded, which verified.json then records, so later starts skip that."""
    marker, seen = os.path.join(model_dir, VERIFIED_FILE), fingerprint(model_dir)
    try:
        with open(marker) as f:
            verified = json.load(f) == seen
    except (OSError, ValueError):
        verified = False
    params = load_gpt2_params_from_tf_ckpt(os.path.join(model_dir, "model.ckpt"), hparams, verify=not verified)
    if not verified:
        try:  # a temporary name first: a marker cut off half-way must not count
            with open(marker + ".tmp", "w") as f:
                json.dump(seen, f)
            os.replace(marker + ".tmp", marker)
        except OSError as e:  # a read-only folder: check again next time
            print(f"note: could not write {marker} ({e.strerror or e}); the checksums will be checked again "
                  "next time", file=sys.stderr)
    return params


def fingerprint(model_dir):
    """Size, modification time and inode of the checkpoint's two files: a new version of either
    (downloaded again, copied over, edited) has another fingerprint."""
    stats = {name: os.stat(os.path.join(model_dir, name)) for name in (INDEX_FILE, DATA_FILE)}
    return {name: [s.st_size, s.st_mtime_ns, s.st_ino] for name, s in stats.items()}


def load_gpt2_params_from_tf_ckpt(tf_ckpt_path, hparams, verify=True):
    """The checkpoint's variables as a nested dict of float32 arrays:
    {wte, wpe, ln_f: {g, b}, blocks: [{ln_1, attn: {c_attn, c_proj}, ln_2, mlp: {c_fc, c_proj}}, ...]}
    with each conv1d weight [1, nx, nf] squeezed to [nx, nf].

    Every array is a read-only view of the data file, memory-mapped where it lies (see
    tf_checkpoint.read_tensors). verify: first check each tensor's bytes against its CRC32C in
    the index (DamagedFile naming the data file if one differs); load_params does it once per
    version of the file."""
    index_path, data_path = tf_ckpt_path + ".index", tf_ckpt_path + DATA_FILE.removeprefix("model.ckpt")
    try:
        entries = tf_checkpoint.read_index(index_path)
    except ValueError:
        raise DamagedFile(index_path, "is truncated or corrupt") from None
    check_checkpoint(entries, hparams, index_path, data_path)
    try:
        arrays = tf_checkpoint.read_tensors(data_path, entries, verify)
    except ValueError:
        raise DamagedFile(data_path, f"does not match the checksums in {os.path.basename(index_path)}") from None
    return unflatten({param_name(name): array[0] if array.ndim == 3 else array  # conv1d [1, nx, nf] -> [nx, nf]
                      for name, array in arrays.items()}, hparams["n_layer"])


def check_checkpoint(entries, hparams, index_path, data_path):
    """That the index describes exactly the model hparams.json does, and that the data file is
    exactly as long as the index says: a one-line error naming the file otherwise."""
    hparams_path = os.path.join(os.path.dirname(index_path), "hparams.json")

    def mixed(detail):
        return MixedFolder(f"{index_path} and {hparams_path} are of different models ({detail})")

    layers = sum(name.endswith("/ln_1/g") for name in entries)
    if layers != hparams["n_layer"]:  # checked first: it bounds the size of checkpoint_shapes()
        raise mixed(f"{layers} layers in the index, {hparams['n_layer']} by hparams")
    wanted = checkpoint_shapes(hparams)
    for name in [*wanted, *entries]:
        have = entries[name]["shape"] if name in entries else "absent"
        if have != wanted.get(name, "absent"):
            raise mixed(f"{name}: {have} in the index, {wanted.get(name, 'absent')} by hparams")
    expected, size = tf_checkpoint.data_size(entries), os.path.getsize(data_path)
    if size != expected:
        raise DamagedFile(data_path, f"is {size:,} bytes but {os.path.basename(index_path)} says {expected:,}",
                          resumable=size < expected)


def checkpoint_shapes(hparams):
    """{variable name: shape} of OpenAI's checkpoint for a GPT-2 with these hparams."""
    v, c, e = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"]
    block = {"ln_1/g": [e], "ln_1/b": [e], "attn/c_attn/w": [1, e, 3 * e], "attn/c_attn/b": [3 * e],
             "attn/c_proj/w": [1, e, e], "attn/c_proj/b": [e], "ln_2/g": [e], "ln_2/b": [e],
             "mlp/c_fc/w": [1, e, 4 * e], "mlp/c_fc/b": [4 * e], "mlp/c_proj/w": [1, 4 * e, e], "mlp/c_proj/b": [e]}
    shapes = {"model/wte": [v, e], "model/wpe": [c, e], "model/ln_f/g": [e], "model/ln_f/b": [e]}
    for i in range(hparams["n_layer"]):
        shapes.update({f"model/h{i}/{name}": shape for name, shape in block.items()})
    return shapes


# ---------------------------------------------------------------------------------------------
# Hugging Face's folder (hf_format.py's page)

def read_hf_folder(model_dir):
    """(encoder, hparams, params) from a Hugging Face GPT-2 folder: the hparams from config.json,
    the encoder from vocab.json and merges.txt, the params from model.safetensors. DamagedFile
    names a file that is not whole; a ValueError names config.json's key for a model that is not
    GPT-2 as computed here."""
    config_path = os.path.join(model_dir, "config.json")
    hparams = hf_format.hparams_from_config(read_json(config_path), config_path)
    check_hparams(hparams, config_path, hf_format.HPARAMS)
    return read_vocab(model_dir), hparams, load_hf_params(os.path.join(model_dir, "model.safetensors"), hparams)


def load_hf_params(path, hparams):
    """The parameter tree from Hugging Face's model.safetensors (hf_format's paragraph 6): float32
    tensors are read-only views of the file, memory-mapped; float16 and bfloat16 ones are converted
    to float32, exactly. DamagedFile if the file is not whole; ValueError if it holds another model
    than hparams, or an lm_head.weight other than wte."""
    try:
        entries = hf_format.gpt2_entries(hf_format.read_header(path))
    except ValueError as e:
        raise DamagedFile(path, f"is not a whole safetensors file: {e}") from None
    check_hf_tensors(entries, hparams, path)
    try:
        arrays = hf_format.read_tensors(path, entries)
    except ValueError as e:  # changed since its header was read
        raise DamagedFile(path, f"is not a whole safetensors file: {e}") from None
    if "lm_head.weight" in arrays and not np.array_equal(arrays.pop("lm_head.weight"), arrays["wte.weight"]):
        raise ValueError(f"{path}'s lm_head.weight differs from its wte.weight: GPT-2's output projection is "
                         "wte itself (tied), so this is another model")
    return unflatten({tree_name: arrays[name] for name, (tree_name, _) in hf_names(hparams).items()},
                     hparams["n_layer"])


def hf_names(hparams):
    """{Hugging Face's name: (the params tree's name, shape)} of GPT-2's tensors for these hparams
    (hf_format's paragraph 6), conv1d weights [nx, nf]: what load_hf_params reads."""
    return {hf_format.hf_name(name): (param_name(name), shape[1:] if len(shape) == 3 else shape)
            for name, shape in checkpoint_shapes(hparams).items()}


def check_hf_tensors(entries, hparams, path):
    """That model.safetensors' entries (gpt2_entries) are exactly GPT-2's tensors for hparams, in
    Hugging Face's names and shapes, stored as F32, F16 or BF16 (and perhaps lm_head.weight)."""
    config = os.path.join(os.path.dirname(path), "config.json")
    layers = sum(bool(re.fullmatch(r"h\.\d+\.ln_1\.weight", name)) for name in entries)
    if layers != hparams["n_layer"]:  # checked first: it bounds the size of checkpoint_shapes()
        raise ValueError(f"{path} holds {layers} layers, but {config} says n_layer {hparams['n_layer']}")
    wanted = {name: shape for name, (_, shape) in hf_names(hparams).items()}
    wanted["lm_head.weight"] = wanted["wte.weight"]
    for name in wanted:
        if name not in entries and name != "lm_head.weight":
            raise ValueError(f"{path} has no {name}, which {config}'s GPT-2 has")
    for name, entry in entries.items():
        if name not in wanted:
            raise ValueError(f"{path} holds {name}, which is not one of GPT-2's tensors (GPT2LMHeadModel's, "
                             "GPT2Model's or GPT2ForSequenceClassification's)")
        if entry["shape"] != wanted[name]:
            raise ValueError(f"{path}'s {name} is {entry['shape']}, but {config}'s GPT-2 has {wanted[name]}")
        if entry["dtype"] not in ("F32", "F16", "BF16"):
            raise ValueError(f"{path}'s {name} is {entry['dtype']}: GPT-2's weights are read as F32, F16 or BF16")


# ---------------------------------------------------------------------------------------------
# Saving

CHECKPOINT_TEXT = 'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'
MODEL_FILES = ("checkpoint", *REQUIRED_FILES)  # what save_model_folder writes


def save_model_folder(model_dir, params, hparams, vocab_dir, extra_files=None, head=None):
    """Save a GPT-2 into model_dir (made if needed) as OpenAI's files, all at once: a process
    killed at any moment leaves the previous save or this one (store.save_files).

    params: the parameter tree (conv1d weights [nx, nf]), float32 arrays of hparams' shapes. The
    checkpoint holds them under OpenAI's names and shapes (conv1d weights [1, nx, nf]), and
    nothing else, so TensorFlow and any loader of OpenAI's files read it. Files: model.ckpt.index,
    model.ckpt.data-00000-of-00001, `checkpoint` (naming the prefix relatively, so the folder can
    move), hparams.json, and encoder.json and vocab.bpe copied from vocab_dir (from its vocab.json
    and merges.txt if it is a Hugging Face folder). extra_files:
    {file name: function(path) that writes the file at path}, saved in the same save (a training
    state, say). head: a classifier's (w [n_embd, n_classes], class names), saved as head.npz.
    verified.json goes: the next load checks the new checksums."""
    tensors = checkpoint_tensors(params, hparams)
    extra_files = checked_extra_files(extra_files, (*MODEL_FILES, VERIFIED_FILE, "model.ckpt.meta", HEAD_FILE))
    if head is not None:
        extra_files[HEAD_FILE] = lambda path: write_head(path, *head)
    save_files(model_dir, lambda folder: write_model_files(folder, tensors, hparams, vocab_dir, extra_files),
               stale=(VERIFIED_FILE,))


def checked_extra_files(extra_files, own):
    """A save's extra_files as a new dict, once each is a plain file name and not one of the save's own files."""
    extra_files = dict(extra_files or {})
    for name in extra_files:
        check_file_name(name)
        if name in own:
            raise ValueError(f"{name} is one of the model's own files, not an extra file")
    return extra_files


def write_model_files(folder, tensors, hparams, vocab_dir, extra_files):
    """save_model_folder's files, written into folder."""
    tf_checkpoint.write_checkpoint(os.path.join(folder, INDEX_FILE), os.path.join(folder, DATA_FILE), tensors)
    with open(os.path.join(folder, "checkpoint"), "w", encoding="utf-8") as f:
        f.write(CHECKPOINT_TEXT)
    with open(os.path.join(folder, "hparams.json"), "w", encoding="utf-8") as f:
        json.dump({name: hparams[name] for name in HPARAMS}, f, indent=2)  # OpenAI's five, in OpenAI's order
    copy_vocab(vocab_dir, folder, ("encoder.json", "vocab.bpe"))
    for name, write in extra_files.items():
        write(os.path.join(folder, name))


def copy_vocab(vocab_dir, folder, names):
    """Copy vocab_dir's token table and merges (vocab_paths) into folder under the two names given;
    from a Hugging Face folder with only tokenizer.json, write them from it (the same bytes)."""
    if is_hf_folder(vocab_dir) and has_tokenizer_json(vocab_dir):
        for data, name in zip(hf_format.vocab_file_bytes(*read_tokenizer_json(vocab_dir)), names):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        return
    for source, name in zip(vocab_paths(vocab_dir), names):
        shutil.copyfile(source, os.path.join(folder, name))


HF_MODEL_FILES = (*HF_FILES, "generation_config.json", "tokenizer_config.json")  # what save_hf_folder writes


def save_hf_folder(model_dir, params, hparams, vocab_dir, extra_files=None, head=None):
    """Save a GPT-2 into model_dir (made if needed) as Hugging Face's files, all at once, as
    save_model_folder does OpenAI's: what GPT2LMHeadModel.from_pretrained and
    AutoTokenizer.from_pretrained load. params, extra_files: as for save_model_folder. Files
    (hf_format's page): model.safetensors (float32, names with "transformer.", no lm_head.weight, as
    transformers writes them), config.json, generation_config.json, tokenizer_config.json, and
    vocab.json and merges.txt copied from vocab_dir's vocabulary files. head: a classifier's
    (w [n_embd, n_classes], class names), saved as GPT2ForSequenceClassification's score.weight
    [n_classes, n_embd] and config.json's classes (paragraph 8), which its from_pretrained loads."""
    tensors = {hf_format.PREFIX + hf_format.hf_name(name): array[0] if array.ndim == 3 else array  # [nx, nf] again
               for name, array in checkpoint_tensors(params, hparams).items()}
    config = hf_format.config_from_hparams(hparams)
    if head is not None:
        tensors[hf_format.SCORE] = np.ascontiguousarray(np.asarray(head[0], np.float32).T)
        config.update(hf_format.classifier_config(head[1]))
    extra_files = checked_extra_files(extra_files, HF_MODEL_FILES)
    save_files(model_dir, lambda folder: write_hf_files(folder, tensors, config, hparams, vocab_dir, extra_files))


def write_hf_files(folder, tensors, config, hparams, vocab_dir, extra_files):
    """save_hf_folder's files, written into folder."""
    hf_format.write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    eot = {"bos_token_id": 50256, "eos_token_id": 50256}  # <|endoftext|> both starts and ends a text
    tokenizer = {"add_prefix_space": False, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                 "errors": "replace", "model_max_length": hparams["n_ctx"], "tokenizer_class": "GPT2Tokenizer",
                 "unk_token": "<|endoftext|>"}
    for name, settings in (("config.json", config), ("generation_config.json", eot),
                           ("tokenizer_config.json", tokenizer)):
        write_json(os.path.join(folder, name), settings)
    copy_vocab(vocab_dir, folder, ("vocab.json", "merges.txt"))
    for name, write in extra_files.items():
        write(os.path.join(folder, name))


def write_json(path, settings):
    """A settings file as transformers and PEFT write theirs: keys sorted, indented, a newline at the end."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
        f.write("\n")


def convert_model_folder(out, to, model_size="124M", models_dir="models", model_dir=None):
    """Save a model folder, taken as load_encoder_hparams_and_params takes it (model_size and
    models_dir, downloading if need be, or model_dir in either layout), into the new or empty
    folder out in OpenAI's layout (to="openai") or Hugging Face's (to="hf"), all at once. The
    tensors go over bit for bit (float16 and bfloat16 ones as float32), and a classifier's head
    with them (head.npz <-> GPT2ForSequenceClassification's score.weight and classes)."""
    check_new_folder(out, to)
    _, hparams, params = load_encoder_hparams_and_params(model_size, models_dir, model_dir)
    source = model_dir if model_dir is not None else os.path.join(models_dir, model_size)
    head = read_head(source, hparams["n_embd"]) if has_head(source) else None
    (save_hf_folder if to == "hf" else save_model_folder)(out, params, hparams, source, head=head)


def check_new_folder(out, to):
    """That a conversion's --to names a layout and its --out a new or empty folder."""
    if to not in ("openai", "hf"):
        raise ValueError(f"--to is openai or hf, not {to!r}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"{out} is not a new or empty folder: choose another")


def checkpoint_tensors(params, hparams):
    """{OpenAI's variable name: array} of a parameter tree, sorted by name as TensorFlow's Saver
    writes them, each conv1d weight [nx, nf] seen as [1, nx, nf] (no copy). ValueError unless
    the tree holds exactly hparams' parameters, each a float32 array of its shape."""
    flat = flatten(params)
    tensors = {}
    for name, shape in sorted(checkpoint_shapes(hparams).items()):
        array, conv = flat.pop(param_name(name), None), len(shape) == 3
        want = shape[1:] if conv else shape
        if not (isinstance(array, np.ndarray) and array.dtype == np.float32 and list(array.shape) == want):
            kind = getattr(array, "dtype", type(array).__name__)
            have = "absent" if array is None else f"{kind} {list(np.shape(array))}"
            raise ValueError(f"params' {param_name(name)} must be a float32 array of shape {want}, not {have}")
        tensors[name] = array[None] if conv else array
    if flat:
        raise ValueError(f"{next(iter(flat))} is not one of GPT-2's parameters")
    return tensors


# ---------------------------------------------------------------------------------------------
# What a run trains beside OpenAI's variables: LoRA adapters and a classifier's head, each a small
# .npz file beside the checkpoint (numbers and strings only, so np.load reads it without pickle), or in
# Hugging Face's layout a PEFT adapter folder and GPT2ForSequenceClassification's score (hf_format's 8 and 9).

ADAPTERS_FILE, HEAD_FILE = "adapters.npz", "head.npz"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")  # a PEFT adapter folder (hf_format's paragraph 9)
# The Hub's copies of OpenAI's models, named as a PEFT folder's base model
HUB_NAMES = {"124M": "openai-community/gpt2", "355M": "openai-community/gpt2-medium",
             "774M": "openai-community/gpt2-large", "1558M": "openai-community/gpt2-xl"}


def write_adapters(path, params, rank, alpha, targets):
    """adapters.npz: A [in, r] and B [r, out] (float32) of every adapted linear of params, under its flat name
    ("blocks/3/attn/c_attn/A"), and rank, alpha and targets ("c_attn,mlp.c_proj")."""
    tensors = {name: array for name, array in flatten(params).items() if name.endswith(("/A", "/B"))}
    write_adapter_tensors(path, tensors, rank, alpha, targets)


def write_adapter_tensors(path, tensors, rank, alpha, targets, base=None):
    """adapters.npz of the adapters {flat name: A or B} (read_adapters' first result); base: the base model's name
    that a PEFT folder gave, kept for the way back."""
    with open(path, "wb") as f:
        np.savez(f, rank=rank, alpha=alpha, targets=",".join(targets), **({} if base is None else {"base": base}),
                 **{name: np.asarray(array, np.float32) for name, array in tensors.items()})


def read_adapters(path):
    """({flat name: A [in, r] or B [r, out]}, rank, alpha, targets) from adapters.npz, a folder holding one, or a
    PEFT adapter folder (read_peft_folder); a one-line error naming the file if it is missing or damaged."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, PEFT_FILES[0])):
        return read_peft_folder(path)
    path = os.path.join(path, ADAPTERS_FILE) if os.path.isdir(path) else path
    try:
        with np.load(path, allow_pickle=False) as saved:
            tensors = {name: saved[name] for name in saved.files if name.endswith(("/A", "/B"))}
            rank, alpha, targets = int(saved["rank"]), float(saved["alpha"]), str(saved["targets"]).split(",")
        if not tensors:
            raise ValueError("no A or B")
    except FileNotFoundError:
        raise ValueError(f"there are no adapters at {path}: give a run's folder or its {ADAPTERS_FILE}, or a PEFT "
                         "adapter folder") from None
    except (OSError, ValueError, KeyError, EOFError):
        raise ValueError(f"{path} is truncated or corrupt: it holds no adapters np.load can read") from None
    return tensors, rank, alpha, targets


def read_peft_folder(folder):
    """read_adapters' result from a folder that PEFT's save_pretrained wrote: its LoRA matrices transposed to
    this project's layout (hf_format's paragraph 9). A one-line error naming the file for a setting or a tensor
    this model does not compute, a file missing or damaged."""
    config_path, path = (os.path.join(folder, name) for name in PEFT_FILES)
    if not os.path.isfile(path):
        pickle = os.path.isfile(os.path.join(folder, "adapter_model.bin"))
        raise ValueError(f"{path} is missing" + (" (adapter_model.bin, PyTorch's pickle, is not read here: load "
                                                 "it with PEFT and save it again)" if pickle else "") +
                         f": a PEFT adapter folder needs {' and '.join(PEFT_FILES)}")
    config = read_json(config_path)
    try:
        rank, alpha, targets, layers = hf_format.lora_settings(config)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None
    try:
        entries = hf_format.read_header(path)
        names = hf_format.adapter_tensors(entries, rank, targets, layers)
        arrays = hf_format.read_tensors(path, entries)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    tensors = {f"blocks/{block}/{module.replace('.', '/')}/{matrix}": np.ascontiguousarray(arrays[name].T)
               for name, (block, module, matrix) in names.items()}
    return tensors, rank, float(alpha), targets


def save_peft_folder(out, tensors, rank, alpha, targets, base=None):
    """Save adapters ({flat name: A [in, r] or B [r, out]}, as read_adapters gives them) into out as PEFT's
    adapter folder, all at once: what PeftModel.from_pretrained loads onto GPT2LMHeadModel (hf_format's paragraph
    9). Blocks without adapters (a run's --train_blocks) are left out by layers_to_transform. base: the base
    model's name, for its adapter_config.json."""
    unknown = [target for target in targets if target not in hf_format.MODULES]
    if unknown:
        raise ValueError(f"the adapters' targets name {unknown[0]!r}, not one of {', '.join(hf_format.MODULES)}")
    peft = {}
    for name, array in tensors.items():
        match = re.fullmatch(r"blocks/(\d+)/(attn/c_attn|attn/c_proj|mlp/c_fc|mlp/c_proj)/([AB])", name)
        if not match:
            raise ValueError(f"the adapters hold {name}, which is not a LoRA matrix of c_attn, c_proj or c_fc")
        block, module, matrix = match.groups()
        peft[f"{hf_format.PEFT_PREFIX}h.{block}.{module.replace('/', '.')}.lora_{matrix}.weight"] = \
            np.ascontiguousarray(np.asarray(array, np.float32).T)  # [r, in] and [out, r], as PyTorch's Linear
    blocks = sorted({int(name.split("/")[1]) for name in tensors})
    config = hf_format.peft_config(rank, alpha, targets, None if blocks == list(range(len(blocks))) else blocks, base)

    def write(folder):
        hf_format.write_safetensors(os.path.join(folder, PEFT_FILES[1]), peft)
        write_json(os.path.join(folder, PEFT_FILES[0]), config)

    save_files(out, write)


def convert_adapters(adapters, out, to):
    """Save the LoRA adapters at `adapters` (adapters.npz, a run's folder holding one, or a PEFT adapter folder)
    into the new or empty folder out, all at once: as PEFT's adapter folder (to="hf") or as adapters.npz
    (to="openai"). The numbers go over bit for bit."""
    check_new_folder(out, to)
    tensors, rank, alpha, targets = read_adapters(adapters)
    base = adapters_base(adapters)
    if to == "hf":
        save_peft_folder(out, tensors, rank, alpha, targets, base)
    else:
        save_files(out, lambda folder: write_adapter_tensors(os.path.join(folder, ADAPTERS_FILE), tensors, rank,
                                                             alpha, targets, base))


def adapters_base(path):
    """The base model the adapters at path (read_adapters has read them) were trained on, as a PEFT folder names
    it: a PEFT folder's own, or the one adapters.npz kept from one; for a run's, the model it started from (the
    Hub's copy of OpenAI's for a download, else the folder's path); or None if unknown."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, PEFT_FILES[0])):
        return read_json(os.path.join(path, PEFT_FILES[0])).get("base_model_name_or_path")
    npz = os.path.join(path, ADAPTERS_FILE) if os.path.isdir(path) else path
    with np.load(npz, allow_pickle=False) as saved:
        if "base" in saved.files:
            return str(saved["base"])
    from finetune import read_record  # the run's record: train_state.npz is finetune's

    record = read_record(os.path.dirname(npz) or ".")
    if record is None:
        return None
    start = record["start"]["model"]
    size = os.path.basename(os.path.normpath(start))
    return HUB_NAMES[size] if size in HUB_NAMES and not is_hf_folder(start) else os.path.abspath(start)


def with_adapters(params, tensors, rank, alpha, path):
    """A new params tree (dicts new, arrays shared) whose adapted linears hold A, B and scale = alpha / rank, as
    train.add_lora makes them; a one-line error if the adapters do not fit the model (path names them)."""
    flat = flatten(params)
    for name, array in tensors.items():
        layer = name.rsplit("/", 1)[0]
        n_in, n_out = flat.get(layer + "/w", np.empty((0, 0))).shape
        want = (n_in, rank) if name.endswith("/A") else (rank, n_out)
        if layer + "/w" not in flat or array.shape != want:
            raise ValueError(f"{path}: {name} {list(array.shape)} does not fit the model (it wants {list(want)} "
                             "there): these adapters were trained on another model")
        flat[name] = array.astype(flat[layer + "/w"].dtype)
        flat[layer + "/scale"] = alpha / rank
    return unflatten(flat, len(params["blocks"]))


def write_head(path, w, labels):
    """head.npz: a classifier's w [n_embd, n_classes] (float32) and its class names in class order."""
    with open(path, "wb") as f:
        np.savez(f, w=np.asarray(w, np.float32), labels=np.array(labels, dtype=str))


def read_head(model_dir, n_embd=None):
    """(w [n_embd, n_classes] float32, [class names]) of the classifier in model_dir: its head.npz, or in a
    Hugging Face folder its score.weight and config.json's classes (read_hf_head). A one-line error if there is
    none, or it is damaged, or it does not fit a model of width n_embd (None: not checked yet; see fit_head)."""
    w, labels, path = read_hf_head(model_dir) if is_hf_folder(model_dir) else read_npz_head(model_dir)
    if w.ndim != 2 or w.dtype.kind != "f" or w.shape[1] != len(labels) or not all(isinstance(label, str)
                                                                                for label in labels):
        raise ValueError(f"{path} holds a head of shape {list(w.shape)} for {len(labels)} classes: it must hold w "
                         f"[n_embd, n_classes] (floats) and one label per class; train it again")
    if not np.isfinite(w).all() or len(set(labels)) != len(labels) or len(labels) < 2:
        raise ValueError(f"{path} is damaged: its w must be finite and its labels two or more, each once")
    w = w.astype(np.float32)
    return (w if n_embd is None else fit_head(w, n_embd, path)), labels


def fit_head(w, n_embd, path):
    """w, if it reads a hidden state of n_embd numbers (the model's width); else a one-line error naming path."""
    if len(w) != n_embd:
        raise ValueError(f"{path} holds a head of shape {list(w.shape)} for {w.shape[1]} classes, which does not fit "
                         f"this model (n_embd {n_embd}): was it trained on another model size?")
    return w


def read_npz_head(model_dir):
    """(w, class names, path) of model_dir's head.npz, read without pickle."""
    path = os.path.join(model_dir, HEAD_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{model_dir} has no {HEAD_FILE}: it was not trained with `python train.py --task classify`, "
                         "which saves the classifier's head beside the model")
    try:
        with np.load(path, allow_pickle=False) as saved:
            w, labels = saved["w"], saved["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is damaged ({e}): train it again with `python train.py --task classify`") from None
    return w, labels.tolist() if labels.dtype.kind == "U" and labels.ndim == 1 else [None], path


def read_hf_head(model_dir):
    """(w = score.weight transposed, class names, path) of a Hugging Face classifier folder (hf_format's 8)."""
    check_files(model_dir, HF_FILES[:2])
    config_path, path = (os.path.join(model_dir, name) for name in HF_FILES[:2])
    try:
        entries = {name.removeprefix(hf_format.PREFIX): entry for name, entry in hf_format.read_header(path).items()}
    except ValueError as e:
        raise ValueError(f"{path} is not a whole safetensors file: {e}") from None
    if hf_format.SCORE not in entries:
        raise ValueError(f"{model_dir} is not a classifier: its model.safetensors holds no {hf_format.SCORE} "
                         f"({hf_format.CLASSIFIER}'s head), as train.py --task classify --save_format hf saves")
    config = read_json(config_path)
    try:
        labels = hf_format.labels_from_config(config)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None
    try:
        score = hf_format.read_tensors(path, {hf_format.SCORE: entries[hf_format.SCORE]})[hf_format.SCORE]
    except ValueError as e:  # a dtype other than F32, F16 or BF16
        raise ValueError(f"{path}'s {hf_format.SCORE}: {e}") from None
    return np.array(score.T, order="C"), labels, path  # a copy: nothing keeps the file mapped


def has_head(model_dir):
    """Whether model_dir holds a classifier's head: head.npz, or in a Hugging Face folder a score.weight."""
    if not is_hf_folder(model_dir):
        return os.path.isfile(os.path.join(model_dir, HEAD_FILE))
    names = hf_format.read_header(os.path.join(model_dir, "model.safetensors"))
    return any(name.removeprefix(hf_format.PREFIX) == hf_format.SCORE for name in names)


# ---------------------------------------------------------------------------------------------
# The parameter tree

def param_name(tf_name):
    """The checkpoint's name for an array -> its path in the params tree:
    "model/h3/attn/c_attn/w" -> "blocks/3/attn/c_attn/w", "model/wte" -> "wte"."""
    return re.sub(r"^h(\d+)/", r"blocks/\1/", tf_name.removeprefix("model/"))


def empty_params(n_layer):
    """The parameter tree's skeleton, in the order data flows through the model."""
    return {"wte": None, "wpe": None, "blocks": [{"ln_1": {}, "attn": {}, "ln_2": {}, "mlp": {}} for _ in range(n_layer)],
            "ln_f": {}}


def set_nested(tree, name, value):
    """set_nested(d, "attn/c_attn/w", v) does d["attn"]["c_attn"]["w"] = v."""
    *parents, leaf = name.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def flatten(tree, prefix=""):
    """{"a": {"b": x}, "blocks": [y]} -> {"a/b": x, "blocks/0": y}"""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    flat = {}
    for key, value in items:
        name = f"{prefix}{key}"
        flat.update(flatten(value, name + "/") if isinstance(value, (dict, list)) else {name: value})
    return flat


def unflatten(flat, n_layer):
    params = empty_params(n_layer)
    for name, value in flat.items():
        layer = re.match(r"blocks/(\d+)/(.*)", name)
        if layer:
            set_nested(params["blocks"][int(layer[1])], layer[2], value)
        else:
            set_nested(params, name, value)
    return params


def param_shapes(params):
    """{"wte": [50257, 768], ..., "blocks/0/attn/c_attn/w": [768, 2304], ...}: the parameter tree."""
    return {name: list(array.shape) for name, array in flatten(params).items()}


if __name__ == "__main__":  # python utils.py --model_size 124M prints the parameter tree
    from cli import utils_command

    utils_command()
