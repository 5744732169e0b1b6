"""Getting GPT-2's weights: download OpenAI's files, read the TF checkpoint into NumPy arrays,
and keep a memory-mappable copy of those arrays so that later runs start without TensorFlow.

Every error a user can meet here is raised as ValueError or OSError with a message that says
what to do; gpt2.py prints it as one line.
"""
import base64
import hashlib
import json
import os
import re
import time

import numpy as np

BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
MODEL_SIZES = ("124M", "355M", "774M", "1558M")
FILENAMES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
             "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
DATA_FILE = "model.ckpt.data-00000-of-00001"
RETRIES = 3  # after the first try, with waits of 0.5, 1, 2 s
CHUNK = 1 << 20


def base_url():
    return os.environ.get("GPT2_BASE_URL", BASE_URL).rstrip("/")


class RetryableError(Exception):
    """A failure that another try may not have: lost connection, 5xx, a short body."""


def download_file(url, path):
    """Download url to path, with retries. Bytes go to path + ".part" and are renamed into place
    only when complete (and matching the server's MD5, if it sends one), so an interrupted
    download never looks whole; the next call resumes the .part file where the server allows."""
    import requests

    for attempt in range(RETRIES + 1):
        try:
            return fetch(url, path)
        except (RetryableError, requests.ConnectionError, requests.Timeout) as e:
            if attempt == RETRIES:
                raise OSError(f"could not download {url} ({short_reason(e)}). Run again to resume, or set "
                              f"GPT2_BASE_URL to a mirror, or copy the file to {path} by hand") from None
            time.sleep(0.5 * 2 ** attempt)


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
    """One try at downloading url to path, resuming path + ".part" if the server takes a Range."""
    import requests
    from tqdm import tqdm

    part = path + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Accept-Encoding": "identity"}  # the bytes on disk must be the file's own bytes
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=headers, stream=True, timeout=(10, 60)) as r:
        if r.status_code == 416:  # the .part is already as long as the file (or longer): start over
            os.remove(part)
            raise RetryableError("partial file did not fit the server's file; starting over")
        if r.status_code >= 500:
            raise RetryableError(f"server error {r.status_code}")
        if r.status_code != 200 and r.status_code != 206:
            raise OSError(f"could not download {url}: HTTP {r.status_code} {r.reason}. Check the model size, "
                          "or set GPT2_BASE_URL to a mirror that has the file")
        if r.status_code == 200:
            have = 0  # the server sent the whole file, not the rest of it
        total = have + int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
        md5 = r.headers.get("x-ms-blob-content-md5") or (r.headers.get("Content-MD5") if r.status_code == 200 else None)
        name = os.path.basename(path)
        with open(part, "ab" if have else "wb") as f, \
                tqdm(desc=f"Fetching {name}", total=total, initial=have, unit="B", unit_scale=True,
                     unit_divisor=1024, leave=False, dynamic_ncols=True) as bar:
            try:
                for chunk in r.iter_content(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            except requests.RequestException as e:
                raise RetryableError(f"connection lost: {short_reason(e)}") from None
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise RetryableError(f"got {size} of {total} bytes")
    if md5 and base64.b64encode(file_md5(part)).decode() != md5:
        os.remove(part)  # a resumed part may hold bad bytes; only a fresh download can fix it
        raise RetryableError("the downloaded bytes do not match the server's Content-MD5")
    os.replace(part, path)


def file_md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.digest()


def download_gpt2_files(model_size, model_dir):
    """Fetch those of OpenAI's seven files for model_size that model_dir does not have yet."""
    check_model_size(model_size)
    os.makedirs(model_dir, exist_ok=True)
    for filename in FILENAMES:
        path = os.path.join(model_dir, filename)
        if not os.path.isfile(path):
            download_file(f"{base_url()}/{model_size}/{filename}", path)


def check_model_size(model_size):
    if model_size not in MODEL_SIZES:  # also keeps anything like "../x" out of file paths
        raise ValueError(f"unknown model size {model_size!r}: choose one of {', '.join(MODEL_SIZES)}")


def read_json(path, max_bytes=1 << 20):
    """A small JSON file (hparams.json), with a plain error naming it if it is not whole."""
    try:
        if os.path.getsize(path) > max_bytes:
            raise ValueError
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path} is truncated or corrupt; delete it and run again to download it") from None


def load_gpt2_params_from_tf_ckpt(tf_ckpt_path, hparams):
    """The checkpoint's variables as a nested dict of float32 arrays:
    {wte, wpe, ln_f: {g, b}, blocks: [{ln_1, attn: {c_attn, c_proj}, ln_2, mlp: {c_fc, c_proj}}, ...]}
    with each conv1d weight [1, nx, nf] squeezed to [nx, nf]."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not for users
    import tensorflow as tf

    check_checkpoint(tf_ckpt_path, hparams)
    params = empty_params(hparams["n_layer"])
    for name, _ in tf.train.list_variables(tf_ckpt_path):
        array = tf.train.load_variable(tf_ckpt_path, name).astype(np.float32, copy=False)
        if array.ndim == 3:
            array = array[0]  # conv1d weight [1, nx, nf] -> [nx, nf]
        layer = re.match(r"model/h(\d+)/(.*)", name)
        if layer:
            set_nested(params["blocks"][int(layer[1])], layer[2], array)
        else:
            set_nested(params, name.removeprefix("model/"), array)
    return params


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


def check_checkpoint(tf_ckpt_path, hparams):
    """Raise a plain error if the checkpoint files are cut off or belong to another model size,
    before TensorFlow fails on them with a long trace."""
    import tensorflow as tf

    index, data = tf_ckpt_path + ".index", tf_ckpt_path + DATA_FILE.removeprefix("model.ckpt")
    try:
        reader = tf.train.load_checkpoint(tf_ckpt_path)
    except Exception:  # TensorFlow raises several kinds here, all meaning "unreadable index"
        raise ValueError(f"{index} is truncated or corrupt; delete it and run again to download it") from None
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    expected = sum(int(np.prod(shape)) * dtypes[name].size for name, shape in shapes.items())
    if os.path.getsize(data) != expected:
        raise ValueError(f"{data} is {os.path.getsize(data)} bytes but {os.path.basename(index)} says "
                         f"{expected}: it is truncated or corrupt; delete it and run again to download it")
    wanted = {"model/wte": [hparams["n_vocab"], hparams["n_embd"]], "model/wpe": [hparams["n_ctx"], hparams["n_embd"]],
              f"model/h{hparams['n_layer'] - 1}/ln_1/g": [hparams["n_embd"]]}
    for name, shape in wanted.items():
        if shapes.get(name) != shape:
            raise ValueError(f"{index} does not match hparams.json ({name} is {shapes.get(name)}, "
                             f"hparams say {shape}): the folder mixes files of different models")
    if f"model/h{hparams['n_layer']}/ln_1/g" in shapes:
        raise ValueError(f"{index} has more layers than hparams.json says: the folder mixes different models")


# The parameter cache: params.npy holds every array, flat and 64-byte aligned; params.json says
# where each one starts and which checkpoint it came from. np.load memory-maps it, so a start
# needs neither TensorFlow nor a copy of the weights.

def checkpoint_fingerprint(model_dir):
    """Size and modification time of the checkpoint files: if they change, the cache is stale."""
    files = ("model.ckpt.index", DATA_FILE)
    return {f: [os.stat(os.path.join(model_dir, f)).st_size, os.stat(os.path.join(model_dir, f)).st_mtime_ns]
            for f in files}


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
        save_params_cache(load_gpt2_params_from_tf_ckpt(os.path.join(model_dir, "model.ckpt"), hparams), model_dir)
        params = load_params_cache(model_dir, hparams["n_layer"])
    return params


def param_shapes(params):
    """{"wte": [50257, 768], ..., "blocks/0/attn/c_attn/w": [768, 2304], ...}: the parameter tree."""
    return {name: list(array.shape) for name, array in flatten(params).items()}


def load_encoder_hparams_and_params(model_size, models_dir):
    """(encoder, hparams, params) for model_size, downloading what models_dir does not have yet."""
    from encoder import get_encoder

    check_model_size(model_size)
    model_dir = os.path.join(models_dir, model_size)
    download_gpt2_files(model_size, model_dir)
    encoder = get_encoder(model_size, models_dir)
    hparams = read_json(os.path.join(model_dir, "hparams.json"))
    keys = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
    if not isinstance(hparams, dict) or not all(type(hparams.get(k)) is int and hparams[k] > 0 for k in keys):
        raise ValueError(f"{os.path.join(model_dir, 'hparams.json')} does not hold GPT-2's {', '.join(keys)}; "
                         "delete it and run again to download it")
    return encoder, hparams, load_params(model_dir, hparams)


def print_params(model_size="124M", models_dir="models"):
    """Print hparams and every parameter's shape: python utils.py --model_size 124M"""
    _, hparams, params = load_encoder_hparams_and_params(model_size, models_dir)
    print(json.dumps(hparams))
    for name, shape in param_shapes(params).items():
        print(f"{name:28} {shape}")
    print(f"{sum(int(np.prod(s)) for s in param_shapes(params).values()):,} parameters")


if __name__ == "__main__":
    import fire

    try:
        fire.Fire(fire.decorators.SetParseFns(model_size=str)(print_params))
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}")
