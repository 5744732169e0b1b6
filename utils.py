"""Getting GPT-2's weights: download OpenAI's files, read the TF checkpoint into NumPy arrays,
and keep a memory-mappable copy of those arrays so that later runs start without TensorFlow.

A download never leaves a file that looks whole but is not: bytes go to a ".part" file that is
renamed into place only once its length (and MD5, where the server sends one) is right, and an
interrupted download resumes where it stopped. A file found damaged later (say, a copy cut off
by hand) is named, set aside and fetched again.

Every error a user can meet here is raised as ValueError or OSError with a message that says
what to do; gpt2.py prints it as one line.
"""
import base64
import hashlib
import json
import os
import re
import sys
import time

import numpy as np

from encoder import MAX_FILE_BYTES, get_encoder

BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
MODEL_SIZES = ("124M", "355M", "774M", "1558M")
FILENAMES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
             "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
DATA_FILE = "model.ckpt.data-00000-of-00001"
HPARAMS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
RETRIES = 3  # failed tries in a row before giving up, waiting 0.5, 1, 2 s between them
CHUNK = 1 << 20


def base_url():
    return os.environ.get("GPT2_BASE_URL", BASE_URL).rstrip("/")


def where_else(path):
    """The end of every download error: where else the file can come from."""
    return f"set GPT2_BASE_URL to a mirror with the same layout, or copy the file to {path} by hand"


class RetryableError(Exception):
    """A failure that another try may not have: lost connection, 5xx, a short body."""


class DamagedFile(ValueError):
    """A model file that is there but not whole or not right; the loader sets it aside and
    fetches it again. resumable: it looks like a cut-off copy, whose rest a Range request gets."""

    def __init__(self, path, problem, resumable=False):
        super().__init__(f"{path} {problem}")
        self.path, self.resumable = path, resumable


def download_file(url, path):
    """Download url to path, trying again after lost connections and server errors.

    Bytes go to path + ".part", renamed into place only when complete, so an interrupted
    download never looks whole; the next call resumes the .part where the server allows.
    A try that got some bytes starts the count of failures afresh: a long download over a
    flaky network goes on for as long as it makes progress."""
    import requests

    failures = 0
    while True:
        had = part_size(path)
        try:
            return fetch(url, path)
        except (RetryableError, requests.ConnectionError, requests.Timeout) as e:
            failures = 1 if part_size(path) > had else failures + 1
            if failures > RETRIES:
                raise OSError(f"could not download {url} ({short_reason(e)}). Run again to resume, "
                              f"or {where_else(path)}") from None
            wait = 0.5 * 2 ** (failures - 1)
            print(f"{os.path.basename(path)}: {short_reason(e)}; trying again in {wait:g} s", file=sys.stderr)
            time.sleep(wait)
        except requests.RequestException as e:  # not worth another try: a malformed GPT2_BASE_URL, say
            raise OSError(f"could not download {url} ({short_reason(e)}): {where_else(path)}") from None


def part_size(path):
    part = path + ".part"
    return os.path.getsize(part) if os.path.exists(part) else 0


def short_reason(e):
    """The useful end of an exception's text: requests nests "[Errno 111] Connection refused"
    several layers deep."""
    text = str(e)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno[1].strip().rstrip(".")
    if isinstance(e, RetryableError) or len(text) < 120:
        return text or type(e).__name__
    return type(e).__name__


def fetch(url, path):
    """One try at downloading url to path, continuing path + ".part" if the server takes a Range."""
    import requests
    from tqdm import tqdm

    part, have = path + ".part", part_size(path)
    headers = {"Accept-Encoding": "identity"}  # the bytes on disk must be the file's own bytes
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=headers, stream=True, timeout=(10, 60)) as r:
        if r.status_code >= 500:
            raise RetryableError(f"server error {r.status_code}")
        if r.status_code == 416 or (r.status_code == 206 and
                                    not r.headers.get("Content-Range", "").startswith(f"bytes {have}-")):
            if have:
                os.remove(part)  # the .part is as long as the file already, or longer, or not what was asked
            raise RetryableError("the partial download does not fit the server's file; starting over")
        if r.status_code not in (200, 206):
            raise OSError(f"could not download {url}: HTTP {r.status_code} {r.reason}. Check the address, "
                          f"or {where_else(path)}")
        if r.status_code == 200:
            have = 0  # the server ignored the Range and sent the whole file: start over
        length = r.headers.get("Content-Length", "")
        total = have + int(length) if length.isdigit() else None
        # Azure sends the whole file's MD5 (base64) as Content-MD5 with the whole file, and as
        # x-ms-blob-content-md5 with a range of it.
        md5 = r.headers.get("x-ms-blob-content-md5") or (r.headers.get("Content-MD5") if r.status_code == 200 else None)
        digest = hashlib.md5()
        if md5 and have:
            add_file_to_digest(digest, part)  # the bytes from earlier tries count too
        with open(part, "ab" if have else "wb") as f, \
                tqdm(desc=f"Fetching {os.path.basename(path)}", total=total, initial=have, unit="B",
                     unit_scale=True, unit_divisor=1024, leave=False, dynamic_ncols=True) as bar:
            try:
                for chunk in r.iter_content(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())  # on disk before it is renamed, should the machine go down
            except requests.RequestException:
                of_total = f" of {total:,}" if total is not None else ""
                raise RetryableError(f"connection lost after {f.tell():,}{of_total} bytes") from None
            except OSError as e:  # the disk is full, say: the .part stays, to resume later
                raise OSError(f"could not write {part}: {e.strerror or e}") from None
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise RetryableError(f"got {size:,} of {total:,} bytes")
    if md5 and base64.b64encode(digest.digest()).decode() != md5:
        os.remove(part)  # which bytes are wrong is unknown: only a fresh download can fix it
        raise RetryableError("the downloaded bytes do not match the server's Content-MD5")
    os.replace(part, path)


def add_file_to_digest(digest, path):
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)


def download_gpt2_files(model_size, model_dir):
    """Fetch those of OpenAI's seven files for model_size that model_dir does not have yet,
    resuming any left cut off. The big data file comes last, so that a mirror without one of
    the small files is found out before a long download, not after."""
    check_model_size(model_size)
    os.makedirs(model_dir, exist_ok=True)
    for filename in sorted(FILENAMES, key=lambda name: name == DATA_FILE):
        path = os.path.join(model_dir, filename)
        if not os.path.isfile(path):
            download_file(f"{base_url()}/{model_size}/{filename}", path)


def check_model_size(model_size):
    if model_size not in MODEL_SIZES:  # also keeps anything like "../x" out of file paths
        raise ValueError(f"unknown model size {model_size!r}: choose one of {', '.join(MODEL_SIZES)}")


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
    hparams = read_json(path)
    if not (isinstance(hparams, dict) and all(type(hparams.get(k)) is int and 0 < hparams[k] < 1 << 24 for k in HPARAMS)
            and hparams["n_embd"] % hparams["n_head"] == 0):
        raise DamagedFile(path, f"does not hold GPT-2's {', '.join(HPARAMS)}")
    return hparams


def damaged_vocab_file(model_dir):
    """Which of encoder.json and vocab.bpe to blame when get_encoder refuses them. encoder.json
    cut off anywhere is not valid JSON (its closing brace comes last), so if it reads as GPT-2's
    50,257 tokens, it is whole and vocab.bpe is not."""
    encoder_path = os.path.join(model_dir, "encoder.json")
    try:
        tokens = read_json(encoder_path, max_bytes=MAX_FILE_BYTES)
    except DamagedFile:
        return encoder_path
    whole = isinstance(tokens, dict) and len(tokens) == 50257 and "<|endoftext|>" in tokens
    return os.path.join(model_dir, "vocab.bpe") if whole else encoder_path


def load_gpt2_params_from_tf_ckpt(tf_ckpt_path, hparams):
    """The checkpoint's variables as a nested dict of float32 arrays:
    {wte, wpe, ln_f: {g, b}, blocks: [{ln_1, attn: {c_attn, c_proj}, ln_2, mlp: {c_fc, c_proj}}, ...]}
    with each conv1d weight [1, nx, nf] squeezed to [nx, nf]."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not for users
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # nor its note on oneDNN: it only reads files here
    import tensorflow as tf

    reader = check_checkpoint(tf_ckpt_path, hparams)
    arrays = {}
    for name in sorted(reader.get_variable_to_shape_map()):
        try:  # TensorFlow checks each tensor's bytes against a CRC32C kept in the index
            # A copy NumPy owns: TensorFlow keeps memory it allocated for itself after the arrays
            # are freed, which would double the peak memory of a first run.
            array = np.array(reader.get_tensor(name), dtype=np.float32)
        except tf.errors.OpError:
            raise DamagedFile(os.path.join(os.path.dirname(tf_ckpt_path), DATA_FILE),
                              f"does not match the checksums in {os.path.basename(tf_ckpt_path)}.index") from None
        arrays[param_name(name)] = array[0] if array.ndim == 3 else array  # conv1d [1, nx, nf] -> [nx, nf]
    return unflatten(arrays, hparams["n_layer"])


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


def check_checkpoint(tf_ckpt_path, hparams):
    """The checkpoint's reader, once the index is known to be readable and to describe exactly
    the model hparams.json does, and the data file to be as long as the index says. Each problem
    is a one-line error naming the file, before TensorFlow could fail with a long trace."""
    import tensorflow as tf

    model_dir = os.path.dirname(tf_ckpt_path)
    index, data = tf_ckpt_path + ".index", os.path.join(model_dir, DATA_FILE)

    def mixed(detail):
        return ValueError(f"{index} and {os.path.join(model_dir, 'hparams.json')} are of different models ({detail}): "
                          "put the right one in, or delete the wrong one and run again to download it")

    try:
        reader = tf.train.load_checkpoint(tf_ckpt_path)
    except Exception:  # TensorFlow raises several kinds here, all meaning "unreadable index"
        raise DamagedFile(index, "is truncated or corrupt") from None
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    layers = sum(name.endswith("/ln_1/g") for name in shapes)
    if layers != hparams["n_layer"]:  # checked first: it bounds the size of checkpoint_shapes()
        raise mixed(f"{layers} layers in the index, {hparams['n_layer']} by hparams")
    wanted = checkpoint_shapes(hparams)
    for name in [*wanted, *shapes]:
        if shapes.get(name) != wanted.get(name):
            raise mixed(f"{name}: {shapes.get(name, 'absent')} in the index, {wanted.get(name, 'absent')} by hparams")
    expected = sum(int(np.prod(shape)) * dtypes[name].size for name, shape in shapes.items())
    size = os.path.getsize(data)
    if size != expected:
        raise DamagedFile(data, f"is {size:,} bytes but {os.path.basename(index)} says {expected:,}",
                          resumable=size < expected)
    return reader


# The parameter cache: params.npy holds every array, flat and 64-byte aligned; params.json says
# where each one starts and which checkpoint it came from. np.load memory-maps it, so a start
# needs neither TensorFlow nor a copy of the weights.

def checkpoint_fingerprint(model_dir):
    """Size, modification time and inode of the files the cache was made from: if any changes,
    the cache is stale. (hparams.json too: the checkpoint is checked against it on the way.)"""
    stats = {f: os.stat(os.path.join(model_dir, f)) for f in ("hparams.json", "model.ckpt.index", DATA_FILE)}
    return {f: [s.st_size, s.st_mtime_ns, s.st_ino] for f, s in stats.items()}


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


def save_params_cache(params, model_dir):
    """Write params.npy and params.json next to the checkpoint, each to a temporary name first,
    so an interrupted write is never mistaken for a cache."""
    npy, manifest = os.path.join(model_dir, "params.npy"), os.path.join(model_dir, "params.json")
    if os.path.exists(manifest):
        os.remove(manifest)  # without a manifest, a half-replaced params.npy is never read
    layout, offset = {}, 0
    for name, array in flatten(params).items():
        layout[name] = [offset, list(array.shape)]
        offset += -(-array.size // 16) * 16  # round up to 16 floats = 64 bytes
    try:
        with open(npy + ".tmp", "wb") as f:  # a .npy file of one flat float32 array
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (offset,)})
            header = f.tell()
            for name, array in flatten(params).items():
                f.seek(header + 4 * layout[name][0])
                np.ascontiguousarray(array, dtype=np.float32).tofile(f)
            f.truncate(header + 4 * offset)
            os.fsync(f.fileno())  # on disk before the rename, so a crash cannot leave a renamed hole
        os.replace(npy + ".tmp", npy)
        with open(manifest + ".tmp", "w") as f:
            json.dump({"source": checkpoint_fingerprint(model_dir), "size": os.path.getsize(npy), "arrays": layout}, f)
        os.replace(manifest + ".tmp", manifest)
    finally:  # after a failure (a full disk, Ctrl-C), no gigabytes of half-written cache stay behind
        for tmp in (npy + ".tmp", manifest + ".tmp"):
            if os.path.exists(tmp):
                os.remove(tmp)


def load_params_cache(model_dir, n_layer):
    """The parameters memory-mapped from params.npy, or None if there is no up-to-date cache."""
    npy, manifest = os.path.join(model_dir, "params.npy"), os.path.join(model_dir, "params.json")
    try:
        with open(manifest) as f:
            meta = json.load(f)
        if meta["source"] != checkpoint_fingerprint(model_dir) or meta["size"] != os.path.getsize(npy):
            return None
        flat = np.asarray(np.load(npy, mmap_mode="r"))  # a plain ndarray view: memmap adds Python work to every op
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, stale or damaged: rebuild it from the checkpoint
    arrays = {name: flat[start:start + int(np.prod(shape))].reshape(shape)
              for name, (start, shape) in meta["arrays"].items()}
    return unflatten(arrays, n_layer)


def load_params(model_dir, hparams):
    """Parameters from the cache when it is current; otherwise from the TF checkpoint, which is
    then cached. The checkpoint stays the source of truth."""
    params = load_params_cache(model_dir, hparams["n_layer"])
    if params is None:
        params = load_gpt2_params_from_tf_ckpt(os.path.join(model_dir, "model.ckpt"), hparams)
        try:
            save_params_cache(params, model_dir)
        except OSError as e:  # a read-only folder or a full disk: run from memory this time
            print(f"note: could not write the parameter cache in {model_dir} ({e.strerror or e}); the next "
                  "start will read the checkpoint again", file=sys.stderr)
            return params
        params = load_params_cache(model_dir, hparams["n_layer"]) or params
    return params


def param_shapes(params):
    """{"wte": [50257, 768], ..., "blocks/0/attn/c_attn/w": [768, 2304], ...}: the parameter tree."""
    return {name: list(array.shape) for name, array in flatten(params).items()}


def load_encoder_hparams_and_params(model_size, models_dir):
    """(encoder, hparams, params) for model_size, downloading what models_dir does not have yet.

    A file found damaged is named on stderr, set aside and fetched again: a data file that is
    only too short is taken for a cut-off copy and resumed, anything else downloaded afresh.
    Without network, the download error then names it. A file still damaged when downloaded
    afresh is an error: the server's copy is bad."""
    check_model_size(model_size)
    model_dir = os.path.join(models_dir, model_size)
    refetched = {}  # path -> "resumed" or "fresh"
    while True:
        download_gpt2_files(model_size, model_dir)
        try:
            return read_model_folder(model_size, models_dir)
        except DamagedFile as e:
            if refetched.get(e.path) == "fresh":
                raise ValueError(f"{e}, as downloaded just now from {base_url()}/{model_size}/: "
                                 f"{where_else(e.path)}") from None
            resume = e.resumable and e.path not in refetched
            print(f"{e}; {'fetching the rest' if resume else 'fetching it again'}", file=sys.stderr)
            set_aside(e.path, resume)
            refetched[e.path] = "resumed" if resume else "fresh"


def read_model_folder(model_size, models_dir):
    """(encoder, hparams, params) from a folder that has all seven files; DamagedFile names one
    that is not whole. (model.ckpt.meta, the TF graph, and `checkpoint` are not read at all.)"""
    model_dir = os.path.join(models_dir, model_size)
    hparams = read_hparams(os.path.join(model_dir, "hparams.json"))
    try:
        encoder = get_encoder(model_size, models_dir)
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep
        raise DamagedFile(damaged_vocab_file(model_dir), "is truncated or corrupt") from None
    return encoder, hparams, load_params(model_dir, hparams)


def set_aside(path, resume):
    """Out of the way of the next download: renamed to its .part if resume, otherwise deleted."""
    part = path + ".part"
    if resume:
        os.replace(path, part)  # a cut-off copy is the file's start: a Range request fetches the rest
    else:
        os.remove(path)
        if os.path.exists(part):
            os.remove(part)


def print_params(model_size="124M", models_dir="models"):
    """Print hparams and every parameter's shape: python utils.py --model_size 124M"""
    _, hparams, params = load_encoder_hparams_and_params(model_size, models_dir)
    shapes = param_shapes(params)
    print(json.dumps(hparams))
    for name, shape in shapes.items():
        print(f"{name:28} {shape}")
    print(f"{sum(int(np.prod(shape)) for shape in shapes.values()):,} parameters")


if __name__ == "__main__":
    import fire

    try:
        fire.Fire(fire.decorators.SetParseFns(model_size=str)(print_params))
    except KeyboardInterrupt:
        sys.exit(130)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
