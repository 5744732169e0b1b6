"""Hugging Face's GPT-2 folder and its safetensors file, read and written with NumPy and the standard library.

A GPT-2 that Hugging Face's transformers saved is a folder of these files:

    config.json            the model's shape and options (paragraph 5), a classifier's classes (paragraph 8)
    model.safetensors      the weights (paragraphs 1-4), under names of their own (paragraph 6), and a
                           classifier's head (paragraph 8)
    vocab.json             each token's id: the same table as OpenAI's encoder.json
    merges.txt             the BPE merges in rank order: OpenAI's vocab.bpe
    tokenizer.json         both again, with the tokenizer's settings (paragraph 7): transformers 5
                           writes only this one
    generation_config.json, tokenizer_config.json: settings of transformers' generate() and
                           tokenizer, written for transformers and not read here

A safetensors file is a header, then the tensors' bytes:

    [8 bytes]      N, the header's length in bytes, an unsigned little-endian integer
    [N bytes]      the header: a JSON object in UTF-8, padded at its end with spaces
    [the rest]     the data: each tensor's bytes, little-endian and in C order, one after another

1. The header maps each tensor's name to {"dtype": ..., "shape": [...], "data_offsets": [begin, end]};
   begin and end count bytes from the start of the data, not of the file. One other key may be
   there, "__metadata__", a map of strings to strings: transformers writes {"format": "pt"}, and
   its older versions refuse a file without it.
2. A dtype names the numbers and so their width in bytes: F32 (4), F16 (2) and BF16 (2: the top
   half of a float32) hold GPT-2's weights; BOOL, U8, I8, F8_E5M2, F8_E4M3 (1), I16, U16 (2),
   I32, U32 (4), F64, I64, U64 (8) are possible too. A tensor's end - begin is its element count
   (the product of its shape, 1 for the shape []) times that width.
3. The tensors tile the data exactly: in the order of their offsets the first begins at 0, each
   begins where the one before it ends, and the last ends at the end of the file. So no two
   overlap, no gap hides other bytes, and a file cut short or lengthened disagrees with its header.
   There is no checksum, unlike in TensorFlow's checkpoint: a changed byte of the data goes unseen,
   and only the layout can be checked.
4. Writers put the widest dtypes first and, within a dtype, the names in sorted order, and pad the
   header so that N is a multiple of 8: then every tensor begins at an offset its width divides.
   The safetensors library refuses a header over 100,000,000 bytes.
5. config.json: "model_type" is "gpt2", and "vocab_size", "n_positions" (older files also have
   "n_ctx", the same number), "n_embd", "n_head" and "n_layer" are OpenAI's hparams n_vocab, n_ctx,
   n_embd, n_head and n_layer; a key left out means the default of transformers' GPT2Config. Other
   keys choose variants of the model: GPT-2 itself is activation_function "gelu_new" (tanh's
   approximation; "gelu_pytorch_tanh" is the same function), n_inner null (4 n_embd),
   layer_norm_epsilon 1e-5, scale_attn_weights true (scores divided by sqrt(d_head)),
   scale_attn_by_inverse_layer_idx false, add_cross_attention false and tie_word_embeddings true.
   "reorder_and_upcast_attn" changes only the order of float operations; "dtype" ("torch_dtype"
   before) only what the weights are stored as.
6. The tensors' names are OpenAI's variable names renamed: model/wte -> wte.weight, model/wpe ->
   wpe.weight, model/h3/ln_1/g -> h.3.ln_1.weight, model/h3/ln_1/b -> h.3.ln_1.bias, model/h3/attn/
   c_attn/w -> h.3.attn.c_attn.weight, model/ln_f/g -> ln_f.weight, and so on. The weights of the
   four linear layers of a block are stored as [in, out] (PyTorch's Conv1D), OpenAI's [1, in, out]
   without its leading 1. GPT2LMHeadModel's files put "transformer." before every name, GPT2Model's
   do not. The output projection lm_head.weight is wte itself (tied), so transformers leaves it out;
   older files hold it anyway, and each layer's causal mask h.N.attn.bias [1, 1, n_ctx, n_ctx] and
   h.N.attn.masked_bias, buffers that hold no weights.
7. tokenizer.json (Hugging Face's tokenizers library) holds under "model" the "vocab" (vocab.json's
   table) and the "merges" in rank order, each a pair ["a", "b"] (a string "a b" in older files).
   It is GPT-2's tokenizer when "model" is a BPE without dropout, prefixes or suffixes, byte
   fallback or ignore_merges, there is no "normalizer", and the "pre_tokenizer" is ByteLevel with
   GPT-2's regex and no added prefix space. From its table and merges, OpenAI's files are
   json.dumps(table) and "#version: 0.2", then a line "a b" per merge, byte for byte.

8. A classifier (transformers' GPT2ForSequenceClassification) is GPT-2 with a head in place of the vocabulary
   projection: its model.safetensors holds also "score.weight" [n_classes, n_embd], no bias (the project's head
   w [n_embd, n_classes] transposed), and its config.json "architectures": ["GPT2ForSequenceClassification"],
   "id2label" {"0": the first class's name, "1": ...} and "label2id" (the same map reversed); the number of
   classes (num_labels) is id2label's size. The head reads each text's hidden state at its last token that is
   not "pad_token_id": GPT-2 has no padding token, so <|endoftext|>'s 50256 stands in, as is usual (a text that
   ends with <|endoftext|> itself is then read one token earlier).
9. A LoRA adapter that Hugging Face's PEFT saves (PeftModel.save_pretrained) is a folder of two files that adapt
   a base GPT-2 loaded apart: adapter_config.json and adapter_model.safetensors. The config's "peft_type" is
   "LORA", "r" the rank, "lora_alpha" the scale's numerator (each adapted linear adds lora_alpha / r times
   x A B), "target_modules" the adapted linears, each name matching the end of a module's name ("c_attn";
   "c_proj" both attn.c_proj and mlp.c_proj; "attn.c_proj", "mlp.c_proj", "c_fc"; or the string "all-linear",
   all four), "layers_to_transform" the blocks if not all (their index found after "layers_pattern", "h").
   "fan_in_fan_out" is true: GPT-2's Conv1D keeps its weight as [in, out]. The file holds, for each adapted
   linear, "base_model.model.transformer.h.3.attn.c_attn.lora_A.weight" [r, in] and "...lora_B.weight"
   [out, r], as PyTorch's Linear keeps them: the project's A [in, r] and B [r, out] transposed. Other settings
   change what is computed (use_rslora: lora_alpha / sqrt(r); use_dora: a magnitude per column; bias: trained
   biases; modules_to_save: whole layers trained beside, a classifier's score say; rank_pattern and
   alpha_pattern: ranks by layer), as do initialisations that change the base's weights (PiSSA, OLoRA, LoftQ).

Reading (read_header, read_tensors) checks paragraphs 1-3 before any tensor is used; writing
(write_safetensors) runs them backwards, byte for byte as the safetensors library writes the same
float32 tensors. Every damage the reader can meet is a ValueError; the caller names the file.
"""
import json
import math
import mmap
import os
import re

import numpy as np

from tf_checkpoint import little_endian_pieces

LENGTH_BYTES = 8  # N, the header's length (paragraph 1)
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit (paragraph 4)
WIDTHS = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
          "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}  # bytes per element (paragraph 2)
FORMAT = {"format": "pt"}  # the header's __metadata__, as transformers writes it
PREFIX = "transformer."  # before every name in GPT2LMHeadModel's files (paragraph 6)
BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # the causal masks of older files: no weights
# transformers' GPT2Config's defaults for the keys read (paragraph 5)
DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12,
            "activation_function": "gelu_new", "n_inner": None, "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False, "tie_word_embeddings": True}
HPARAMS = {"vocab_size": "n_vocab", "n_positions": "n_ctx", "n_embd": "n_embd", "n_head": "n_head",
           "n_layer": "n_layer"}  # config.json's name -> OpenAI's
COMPUTED = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"), "layer_norm_epsilon": (1e-5,),
            "scale_attn_weights": (True,), "scale_attn_by_inverse_layer_idx": (False,), "add_cross_attention": (False,),
            "tie_word_embeddings": (True,)}  # the values of the keys that choose a variant which this GPT-2 computes


# ---------------------------------------------------------------------------------------------
# The safetensors file (paragraphs 1-4)

def read_header(path):
    """{name: {"dtype", "shape", "offset", "size"}} of every tensor in a safetensors file, offsets
    counted from the file's start, once the header is whole JSON (paragraph 1), each entry agrees
    with itself (paragraph 2) and the tensors tile the data to the file's end (paragraph 3).
    ValueError if not; OSError if the file cannot be read."""
    with open(path, "rb") as f:
        file_bytes = os.fstat(f.fileno()).st_size
        n = int.from_bytes(f.read(LENGTH_BYTES), "little")
        if file_bytes < LENGTH_BYTES or n > min(MAX_HEADER_BYTES, file_bytes - LENGTH_BYTES):
            raise ValueError("its header is longer than the file (cut off, or not a safetensors file)")
        text = f.read(n)
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=unique_keys)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, a name twice, or nested too deep
        raise ValueError("its header is not a JSON object of tensors") from None
    if not isinstance(header, dict) or not is_string_map(header.pop("__metadata__", {})):
        raise ValueError("its header is not a JSON object of tensors")
    entries = {name: tensor_entry(name, info) for name, info in header.items()}
    check_tiling(entries, file_bytes - LENGTH_BYTES - n)
    start = LENGTH_BYTES + n
    return {name: {**entry, "offset": start + entry["offset"]} for name, entry in entries.items()}


def unique_keys(pairs):
    """A JSON object as a dict, refusing a key given twice (json.loads would keep the last)."""
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("a key given twice")
    return dict(pairs)


def is_string_map(metadata):
    return isinstance(metadata, dict) and all(isinstance(value, str) for value in metadata.values())


def is_whole_list(value):
    return isinstance(value, list) and all(type(n) is int and n >= 0 for n in value)


def tensor_entry(name, info):
    """{"dtype", "shape", "offset", "size"} of one tensor's header entry, offset counted from the
    data's start; ValueError unless its bytes are as many as its dtype and shape ask (paragraph 2)."""
    if not (isinstance(info, dict) and info.get("dtype") in WIDTHS and is_whole_list(info.get("shape"))
            and is_whole_list(info.get("data_offsets")) and len(info["data_offsets"]) == 2):
        raise ValueError(f"the header's entry for {name} is not a known dtype, a shape and two data_offsets")
    (begin, end), dtype, shape = info["data_offsets"], info["dtype"], info["shape"]
    size = math.prod(shape) * WIDTHS[dtype]
    if end - begin != size:
        raise ValueError(f"{name} is {dtype} {shape}, {size:,} bytes, but its data_offsets hold {end - begin:,}")
    return {"dtype": dtype, "shape": shape, "offset": begin, "size": size}


def check_tiling(entries, data_bytes):
    """That the tensors, in the order of their offsets, fill the data's data_bytes bytes exactly,
    one after another (paragraph 3)."""
    end = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1]["offset"], item[1]["size"])):
        if entry["offset"] != end:
            where = "overlaps the tensor before it" if entry["offset"] < end else "leaves a gap before it"
            raise ValueError(f"{name} {where} (data_offsets from {entry['offset']:,}, not {end:,})")
        end += entry["size"]
    if end != data_bytes:
        raise ValueError(f"its tensors end at byte {end:,} of the data, but the file holds {data_bytes:,} "
                         f"({'cut off' if data_bytes < end else 'bytes after the last tensor'})")


def read_tensors(path, entries):
    """{name: float32 array} of read_header's entries (those asked for), memory-mapped: an F32
    tensor is a read-only view of the file where it lies (copied only if the file puts it at an
    offset 4 does not divide), so nothing is read until it is used; F16 and BF16 tensors are
    converted to float32, which holds each of their values exactly. ValueError for another dtype."""
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    arrays = {}
    for name, entry in entries.items():
        array = stored_array(data, entry)
        if array.dtype == np.uint16:  # BF16: its bits are a float32's top 16
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif array.dtype != np.float32 or not array.flags.aligned:
            array = array.astype(np.float32)
        array.flags.writeable = False  # read-only, as the views of the file are: nobody changes the weights by accident
        arrays[name] = array
    return arrays


def stored_array(data, entry):
    """A tensor as it lies in the mapped file data: float32, float16, or BF16's bits as uint16."""
    kinds = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}
    if entry["dtype"] not in kinds:
        raise ValueError(f"a tensor of GPT-2's is {entry['dtype']}, not F32, F16 or BF16")
    dtype = np.dtype(kinds[entry["dtype"]])
    return np.frombuffer(data, dtype, count=entry["size"] // dtype.itemsize,
                         offset=entry["offset"]).reshape(entry["shape"])


def write_safetensors(path, tensors, metadata=FORMAT):
    """Write {name: float32 array} as a safetensors file (paragraphs 1-4 backwards): the names
    sorted, each tensor's bytes following the last, the header compact JSON padded with spaces to
    a multiple of 8, __metadata__ first. The file is on disk (fsync) when this returns."""
    names = sorted(tensors)
    header, offset = {"__metadata__": metadata} if metadata else {}, 0
    for name in names:
        array = np.asarray(tensors[name])
        if array.dtype.kind != "f" or array.itemsize != 4:
            raise ValueError(f"{name} is {array.dtype}, not float32")
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % LENGTH_BYTES)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(LENGTH_BYTES, "little") + text)
        for name in names:
            for piece in little_endian_pieces(np.asarray(tensors[name])):
                f.write(piece)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------
# GPT-2 in Hugging Face's names, config and tokenizer (paragraphs 5-7)

def hf_name(tf_name):
    """OpenAI's variable name -> Hugging Face's (paragraph 6): "model/h3/attn/c_attn/w" ->
    "h.3.attn.c_attn.weight", "model/ln_f/g" -> "ln_f.weight", "model/wte" -> "wte.weight"."""
    *path, leaf = re.sub(r"^h(\d+)/", r"h.\1/", tf_name.removeprefix("model/")).split("/")
    leaves = {"w": "weight", "g": "weight", "b": "bias", "wte": "wte.weight", "wpe": "wpe.weight"}
    return ".".join([*path, leaves[leaf]])


def gpt2_entries(entries):
    """read_header's entries under the names without "transformer.", the buffers and a classifier's score (read
    apart) left out (paragraphs 6 and 8). ValueError for a name that comes both with the prefix and without."""
    named = {}
    for name, entry in entries.items():
        name = name.removeprefix(PREFIX)
        if name in named:
            raise ValueError(f"it holds {name} twice, with {PREFIX!r} before it and without")
        if not BUFFERS.fullmatch(name) and name != SCORE:
            named[name] = entry
    return named


def hparams_from_config(config, path):
    """OpenAI's hparams from config.json's dict (paragraph 5), a key left out taking GPT2Config's
    default. ValueError naming the file and the key for a model that is not GPT-2 as computed here."""
    if not isinstance(config, dict) or config.get("model_type") != "gpt2":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise ValueError(f"{path}: model_type is {found!r}, not 'gpt2': only GPT-2's folders are read")
    n_ctx = {"n_positions": config["n_ctx"]} if "n_ctx" in config else {}  # for files older than n_positions
    config = {**DEFAULTS, **n_ctx, **config}
    for key, values in COMPUTED.items():
        if config[key] not in values or type(config[key]) is not type(values[0]):
            raise ValueError(f"{path}: {key} is {json.dumps(config[key])}, a variant of GPT-2 that is not computed "
                             f"here (only {' or '.join(json.dumps(value) for value in values)})")
    if config["n_inner"] not in (None, 4 * config["n_embd"]) or type(config["n_inner"]) not in (type(None), int):
        raise ValueError(f"{path}: n_inner is {json.dumps(config['n_inner'])}, a variant of GPT-2 that is not "
                         f"computed here (only null or 4 n_embd, {4 * config['n_embd']})")
    return {ours: config[theirs] for theirs, ours in HPARAMS.items()}


def config_from_hparams(hparams):
    """config.json's dict for GPT-2 with these hparams, as GPT2LMHeadModel.save_pretrained writes
    it (less its training-only keys, which take their defaults)."""
    return {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "bos_token_id": 50256,
            "dtype": "float32", "eos_token_id": 50256, "layer_norm_epsilon": 1e-5, "model_type": "gpt2",
            **{theirs: hparams[ours] for theirs, ours in HPARAMS.items()}, "n_inner": None,
            "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True, "tie_word_embeddings": True}


def vocab_from_tokenizer(tokenizer):
    """(token table {token: id}, merges [(a, b)] in rank order) from tokenizer.json's dict; ValueError
    unless it is GPT-2's byte-level BPE (paragraph 7)."""
    model, pre = (tokenizer.get(key) or {} if isinstance(tokenizer, dict) else {} for key in ("model", "pre_tokenizer"))
    if not (isinstance(model, dict) and isinstance(pre, dict) and model.get("type") == "BPE"
            and not any(model.get(key) for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix",
                                                   "byte_fallback", "ignore_merges"))
            and tokenizer.get("normalizer") is None and pre.get("type") == "ByteLevel"
            and not pre.get("add_prefix_space") and pre.get("use_regex", True) is True):
        raise ValueError("is not GPT-2's tokenizer (a byte-level BPE with GPT-2's settings)")
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(merges, list) or not all(isinstance(merge, (str, list)) for merge in merges):
        raise ValueError("is not GPT-2's tokenizer (its merges are not a list)")
    return vocab, [tuple(merge.split(" ") if isinstance(merge, str) else merge) for merge in merges]


def vocab_file_bytes(vocab, merges):
    """(encoder.json's bytes, vocab.bpe's bytes) of a token table and merges: OpenAI's two files, byte for byte
    (vocab.json and merges.txt are the same)."""
    table = json.dumps(vocab).encode("utf-8")
    return table, ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# A classifier's head and PEFT's LoRA adapters (paragraphs 8 and 9)

SCORE = "score.weight"  # a classifier's head [n_classes, n_embd] (paragraph 8)
CLASSIFIER = "GPT2ForSequenceClassification"
PAD_TOKEN_ID = 50256  # <|endoftext|>, standing in for the padding token GPT-2 lacks


def classifier_config(labels):
    """config.json's keys that make GPT-2 a classifier of these classes (paragraph 8), beside config_from_hparams's."""
    return {"architectures": [CLASSIFIER], "id2label": {str(i): label for i, label in enumerate(labels)},
            "label2id": {label: i for i, label in enumerate(labels)}, "pad_token_id": PAD_TOKEN_ID}


def labels_from_config(config):
    """The class names, in class order, of a classifier's config.json dict (paragraph 8); ValueError unless its
    id2label numbers two or more classes "0" to "n - 1", each named once (and num_labels, if there, is n)."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or set(id2label) != {str(i) for i in range(len(id2label))}:
        raise ValueError("its id2label does not number the classes 0, 1, ...")
    labels = [id2label[str(i)] for i in range(len(id2label))]
    if len(labels) < 2 or not all(isinstance(label, str) for label in labels) or len(set(labels)) < len(labels):
        raise ValueError("its id2label does not name two or more classes, each once")
    if config.get("num_labels", len(labels)) != len(labels):
        raise ValueError(f"its num_labels is {config['num_labels']}, but id2label names {len(labels)} classes")
    return labels


PEFT_PREFIX = "base_model.model.transformer."  # PeftModel's names of GPT2LMHeadModel's modules (paragraph 9)
MODULES = {"c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj", "c_fc": "mlp.c_fc",
           "mlp.c_proj": "mlp.c_proj"}  # this project's names of the linears LoRA adapts -> their modules' names
PEFT_TARGETS = {"c_attn": ("c_attn",), "attn.c_attn": ("c_attn",), "c_proj": ("attn.c_proj", "mlp.c_proj"),
                "attn.c_proj": ("attn.c_proj",), "mlp.c_proj": ("mlp.c_proj",), "c_fc": ("c_fc",),
                "mlp.c_fc": ("c_fc",), "all-linear": tuple(MODULES)}  # target_modules' names -> this project's
ADAPTER_NAME = re.compile(r"base_model\.model\.(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc"
                          r"|mlp\.c_proj)\.lora_([AB])\.weight")  # a tensor of adapter_model.safetensors
# adapter_config.json's keys read here, or that change nothing once the adapters are trained (how they started,
# dropout, the run's own details); every other key must be null, false or empty (paragraph 9)
PEFT_READ = {"peft_type", "r", "lora_alpha", "target_modules", "layers_to_transform", "layers_pattern", "bias",
             "init_lora_weights", "fan_in_fan_out"}
PEFT_HARMLESS = {"task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version",
                 "lora_dropout", "eva_config", "corda_config", "lora_ga_config", "megatron_core", "qalora_group_size",
                 "runtime_config", "ensure_weight_tying"}


def peft_config(rank, alpha, targets, layers, base=None):
    """adapter_config.json's dict for LoRA of this rank and alpha on the targets (this project's names) of the
    blocks `layers` (None: every block), as PEFT writes it for GPT-2 (paragraph 9); base: the base model's name."""
    return {"alpha_pattern": {}, "base_model_name_or_path": base, "bias": "none", "fan_in_fan_out": True,
            "inference_mode": True, "init_lora_weights": True, "layers_pattern": None if layers is None else "h",
            "layers_to_transform": layers, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
            "lora_dropout": 0.0, "modules_to_save": None, "peft_type": "LORA", "r": rank, "rank_pattern": {},
            "revision": None, "target_modules": list(targets), "task_type": "CAUSAL_LM", "use_dora": False,
            "use_rslora": False}


def lora_settings(config):
    """(rank, alpha, targets in this project's names, the blocks adapted or None for all) of an
    adapter_config.json dict; ValueError naming the first key whose value this model does not compute."""
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ValueError(f"peft_type is {json.dumps(config.get('peft_type') if isinstance(config, dict) else None)}: "
                         "only LoRA adapters (\"LORA\") are read")
    for key, value in config.items():
        if key not in PEFT_READ | PEFT_HARMLESS and value not in (None, False, {}, [], ""):
            raise ValueError(f"{key} is {json.dumps(value)}, a setting of PEFT's that is not computed here (only "
                             "null, false or empty)")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if type(rank) is not int or rank < 1 or type(alpha) not in (int, float) or not alpha > 0:
        raise ValueError(f"r is {json.dumps(rank)} and lora_alpha {json.dumps(alpha)}: they must be a whole number "
                         ">= 1 and a number above 0")
    for key, allowed in (("bias", ("none",)), ("init_lora_weights", (True, False, "gaussian")),
                         ("layers_pattern", (None, "h", ["h"], []))):
        if config.get(key, allowed[0]) not in allowed or type(config.get(key, allowed[0])) is int:
            raise ValueError(f"{key} is {json.dumps(config[key])}, a setting of PEFT's that is not computed here "
                             f"(only {' or '.join(json.dumps(value) for value in allowed)})")
    return rank, alpha, lora_targets(config.get("target_modules")), lora_layers(config.get("layers_to_transform"))


def lora_targets(target_modules):
    """adapter_config.json's target_modules as this project's names of the linears, in MODULES' order."""
    if isinstance(target_modules, str) and target_modules.lower() == "all-linear":
        target_modules = ["all-linear"]
    if isinstance(target_modules, str) or not isinstance(target_modules, list) or not target_modules:
        raise ValueError(f"target_modules is {json.dumps(target_modules)}: only a list of the names c_attn, c_proj, "
                         "attn.c_proj, mlp.c_proj and c_fc (or \"all-linear\") is read, not a regular expression")
    unknown = [name for name in target_modules if name not in PEFT_TARGETS]
    if unknown:
        raise ValueError(f"target_modules names {json.dumps(unknown[0])}, which is not one of the linears LoRA "
                         "adapts here (c_attn, c_proj, attn.c_proj, mlp.c_proj, c_fc)")
    named = {ours for name in target_modules for ours in PEFT_TARGETS[name]}
    return [target for target in MODULES if target in named]


def lora_layers(layers):
    """adapter_config.json's layers_to_transform as a set of block numbers, or None for every block."""
    if layers is None or layers == []:
        return None
    layers = [layers] if type(layers) is int else layers
    if not isinstance(layers, list) or not all(type(i) is int and i >= 0 for i in layers):
        raise ValueError(f"layers_to_transform is {json.dumps(layers)}: it must be block numbers")
    return set(layers)


def adapter_tensors(entries, rank, targets, layers):
    """{name: (block, module, "A" or "B")} of adapter_model.safetensors' entries (read_header's), once each is
    lora_A [r, in] or lora_B [out, r] of a linear that lora_settings' targets and layers adapt, each linear's
    two both there (paragraph 9); ValueError naming the first that is not."""
    found, modules = {}, {MODULES[target] for target in targets}
    for name, entry in entries.items():
        match = ADAPTER_NAME.fullmatch(name)
        if not match:
            raise ValueError(f"it holds {name}, which is not a LoRA matrix of GPT-2's c_attn, c_proj or c_fc")
        block, module, matrix = int(match[1]), match[2], match[3]
        if module not in modules or layers is not None and block not in layers:
            raise ValueError(f"it holds {name}, whose linear adapter_config.json does not adapt (PEFT would leave it "
                             "out)")
        if (block, module, matrix) in found.values():
            raise ValueError(f"it holds {name} twice, with 'transformer.' and without")
        if len(entry["shape"]) != 2 or entry["shape"][0 if matrix == "A" else 1] != rank:
            raise ValueError(f"{name} is {entry['shape']}, not a matrix of rank r = {rank}")
        found[name] = (block, module, matrix)
    pairs = [(block, module) for block, module, _ in found.values()]
    alone = next((pair for pair in pairs if pairs.count(pair) == 1), None)
    if alone or not found:
        raise ValueError(f"its h.{alone[0]}.{alone[1]} has only one of lora_A and lora_B" if alone else
                         "it holds no LoRA matrices")
    return found
