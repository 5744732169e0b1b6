"""Getting GPT-2's weights: download OpenAI's files, and read their TensorFlow checkpoint with
NumPy alone, the weights memory-mapped from the data file where they lie.

A download never leaves a file that looks whole but is not: bytes go to a ".part" file that is
renamed into place only once its length (and MD5, where the server sends one) is right, and an
interrupted download resumes where it stopped. A file found damaged later (say, a copy cut off
by hand) is named, set aside and fetched again. The checkpoint's own CRC32C checksums are
checked once per version of the data file, and verified.json in the model folder remembers it.
Processes that start at once on the same folder take turns (folder_lock).

Every error a user can meet here is raised as ValueError or OSError with a message that says
what to do; gpt2.py prints it as one line.
"""
import base64
import contextlib
import hashlib
import json
import math
import mmap
import os
import re
import sys
import time

import numpy as np
from crc32c import crc32c

from encoder import MAX_FILE_BYTES, get_encoder

BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
MODEL_SIZES = ("124M", "355M", "774M", "1558M")
FILENAMES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
             "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
DATA_FILE = "model.ckpt.data-00000-of-00001"
HPARAMS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
OPENAI_SHAPES = {"124M": (12, 768, 12), "355M": (24, 1024, 16), "774M": (36, 1280, 20), "1558M": (48, 1600, 25)}
VERIFIED_FILE = "verified.json"  # which versions of the checkpoint have passed their checksums
LOCK_FILE = ".lock"  # held while a process fetches or checks the folder's files
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
        if r.status_code == 416 and have and part_is_whole(url, part, have):
            os.replace(part, path)  # a crash came between its last write and its rename
            return
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


def part_is_whole(url, part, have):
    """Whether a .part that the server will not extend (416) is the whole file: as long as the
    server's copy, with the same MD5 where the server gives one."""
    import requests

    r = requests.head(url, headers={"Accept-Encoding": "identity"}, allow_redirects=True, timeout=(10, 60))
    if r.status_code != 200 or r.headers.get("Content-Length") != str(have):
        return False
    md5 = r.headers.get("Content-MD5")
    if md5:
        digest = hashlib.md5()
        add_file_to_digest(digest, part)
        return base64.b64encode(digest.digest()).decode() == md5
    return True


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


# ---------------------------------------------------------------------------------------------
# Reading OpenAI's checkpoint with NumPy alone

INDEX_FILE = "model.ckpt.index"
TABLE_MAGIC = 0xDB4775248B80FB57  # the last 8 bytes of every LevelDB-format table
FOOTER_BYTES = 48
DT_FLOAT = 1  # TensorFlow's number for float32


def read_index(path):
    """{tensor name: entry} from model.ckpt.index, each entry a dict of the tensor's shape and its
    offset, size and masked CRC32C in the data file. DamagedFile if the index is not whole.

    The data file is every tensor's raw bytes (little-endian float32 here) one after another; the
    index says where each one lies. It is a sorted table in LevelDB's format, read from its end:

        [data block] ... [data block]   records: tensor name -> BundleEntryProto, sorted by name
        [metaindex block]               empty in checkpoints
        [index block]                   records: last name in a data block -> BlockHandle of that block
        [footer, 48 bytes]              metaindex BlockHandle, index BlockHandle, zero padding, and
                                        the magic number 0xdb4775248b80fb57 (8 bytes, little-endian)

    1. A BlockHandle is two varints: the block's offset and size in the file. A varint holds 7
       bits per byte, low bits first, with the high bit set on every byte but the last.
    2. After each block come 5 bytes: its compression (0, none, in checkpoints) and the masked
       CRC32C of the block and that byte. So a flipped bit anywhere in the index is caught.
    3. A block is its records, then the uint32 offsets of some of them (restart points, for binary
       search; reading every record needs none) and their count, a uint32. A record is three
       varints (bytes its key shares with the previous key, key bytes that follow, value length),
       then those key bytes, then the value.
    4. Values are protocol buffers: fields, each a varint tag (field number << 3 | wire type) and
       then a varint (wire type 0), 8 bytes (1), a varint length and that many bytes (2), or
       4 bytes (5). The empty key holds a BundleHeaderProto (field 1: number of data files;
       2: endianness, 0 for little). Every other key is a tensor's name, and its value a
       BundleEntryProto (1: dtype; 2: shape, a TensorShapeProto whose fields 2 are its
       dimensions, each with its size in field 1; 3: data file number; 4: offset; 5: size in bytes;
       6: masked CRC32C of the tensor's bytes; 7: slices, for variables saved in pieces).
    """
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:  # 1558M's index is 21 KB
            raise ValueError("too large")
        with open(path, "rb") as f:
            index = f.read()
        return parse_index(index)
    except (ValueError, IndexError):
        raise DamagedFile(path, "is truncated or corrupt") from None


def parse_index(index):
    """The entries of read_index from the index file's bytes. ValueError if they are not whole."""
    if len(index) < FOOTER_BYTES or int.from_bytes(index[-8:], "little") != TABLE_MAGIC:
        raise ValueError("no footer")
    footer = index[-FOOTER_BYTES:]
    meta_offset, meta_size, pos = read_block_handle(footer, 0)
    index_offset, index_size, pos = read_block_handle(footer, pos)
    if any(footer[pos:-8]):
        raise ValueError("the footer's padding is not zero")
    read_block(index, meta_offset, meta_size)  # empty, but checked like every block
    header, entries, next_block = None, {}, 0
    for _, handle in block_records(read_block(index, index_offset, index_size)):
        offset, size, _ = read_block_handle(handle, 0)
        if offset != next_block:
            raise ValueError("the data blocks do not follow one another")
        next_block = offset + size + 5
        for key, value in block_records(read_block(index, offset, size)):
            if key:
                entries[key.decode()] = bundle_entry(value)
            else:
                header = read_fields(value)
    # The blocks fill the file with no gap, so every byte of it is under a checksum or checked here.
    if (meta_offset, index_offset, index_offset + index_size + 5) != \
            (next_block, meta_offset + meta_size + 5, len(index) - FOOTER_BYTES):
        raise ValueError("the blocks do not fill the file")
    if header is None or field(header, 1, 0) != 1 or field(header, 2, 0) != 0:
        raise ValueError("not one little-endian data file")
    return entries


def read_varint(buf, pos):
    """(value, position after it) of the varint at buf[pos]."""
    value = 0
    for shift in range(0, 70, 7):
        byte = buf[pos]  # IndexError past the end
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            if byte == 0 and shift:  # never written so: a flipped bit made it
                raise ValueError("a varint with a needless zero byte")
            return value, pos
    raise ValueError("a varint longer than 10 bytes")


def read_block_handle(buf, pos):
    offset, pos = read_varint(buf, pos)
    size, pos = read_varint(buf, pos)
    return offset, size, pos


def read_block(index, offset, size):
    """The block at offset, once its trailer's CRC32C agrees with its bytes."""
    end = offset + size
    if end + 5 > len(index):
        raise ValueError("a block runs past the end")
    if index[end] != 0 or masked_crc32c(index[offset:end + 1]) != int.from_bytes(index[end + 1:end + 5], "little"):
        raise ValueError("a block does not match its checksum")
    return index[offset:end]


def block_records(block):
    """(key, value) of each record of a block, in order, with each key whole."""
    n_restarts = int.from_bytes(block[-4:], "little") if len(block) >= 4 else -1
    end = len(block) - 4 - 4 * n_restarts
    if n_restarts < 0 or end < 0:
        raise ValueError("a block too short for its restart points")
    key, pos = b"", 0
    while pos < end:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        length, pos = read_varint(block, pos)
        if shared > len(key) or pos + unshared + length > end:
            raise ValueError("a record runs past its block")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared + length
        yield key, block[pos - length:pos]


def read_fields(message):
    """A protocol buffer's fields, {number: [values]}: bytes for wire type 2, ints for the rest."""
    if type(message) is not bytes:
        raise ValueError("a number where a message belongs")
    fields, pos = {}, 0
    while pos < len(message):
        tag, pos = read_varint(message, pos)
        wire_type = tag & 7
        if wire_type == 0:
            value, pos = read_varint(message, pos)
        elif wire_type in (1, 2, 5):  # 8 bytes, a length and its bytes, 4 bytes
            width, pos = read_varint(message, pos) if wire_type == 2 else (8 if wire_type == 1 else 4, pos)
            value, pos = message[pos:pos + width], pos + width
            if pos > len(message):
                raise ValueError("a field runs past its message")
            if wire_type != 2:
                value = int.from_bytes(value, "little")
        else:
            raise ValueError(f"wire type {wire_type}")
        fields.setdefault(tag >> 3, []).append(value)
    return fields


def field(fields, number, default):
    """A field's value (the last, as protocol buffers have it), or default if it is absent."""
    value = fields.get(number, [default])[-1]
    if type(value) is not type(default):
        raise ValueError(f"field {number} is of the wrong wire type")
    return value


def bundle_entry(value):
    """A BundleEntryProto's bytes -> {"shape", "offset", "size", "crc32c"} of one float32 tensor."""
    fields = read_fields(value)
    if field(fields, 1, 0) != DT_FLOAT or field(fields, 3, 0) != 0 or 7 in fields:
        raise ValueError("not a float32 tensor in one piece in the first data file")
    dims = read_fields(field(fields, 2, b"")).get(2, [])
    shape = [field(read_fields(dim), 1, 0) for dim in dims]
    return {"shape": shape, "offset": field(fields, 4, 0), "size": field(fields, 5, 0), "crc32c": field(fields, 6, 0)}


def masked_crc32c(data):
    """CRC32C (Castagnoli) of data, rotated and offset as TensorFlow and LevelDB store it (so that
    the CRC of bytes that themselves hold CRCs is not degenerate)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


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


def check_checkpoint(entries, hparams, model_dir):
    """That the index describes exactly the model hparams.json does, each tensor's bytes within
    the data file, and the data file exactly as long as the index says: a one-line error naming
    the file otherwise."""
    index, data = os.path.join(model_dir, INDEX_FILE), os.path.join(model_dir, DATA_FILE)

    def mixed(detail):
        return ValueError(f"{index} and {os.path.join(model_dir, 'hparams.json')} are of different models ({detail}): "
                          "put the right one in, or delete the wrong one and run again to download it")

    layers = sum(name.endswith("/ln_1/g") for name in entries)
    if layers != hparams["n_layer"]:  # checked first: it bounds the size of checkpoint_shapes()
        raise mixed(f"{layers} layers in the index, {hparams['n_layer']} by hparams")
    wanted = checkpoint_shapes(hparams)
    for name in [*wanted, *entries]:
        have = entries[name]["shape"] if name in entries else "absent"
        if have != wanted.get(name, "absent"):
            raise mixed(f"{name}: {have} in the index, {wanted.get(name, 'absent')} by hparams")
    for entry in entries.values():
        if entry["size"] != 4 * math.prod(entry["shape"]):
            raise DamagedFile(index, "is truncated or corrupt")
    expected, size = max(e["offset"] + e["size"] for e in entries.values()), os.path.getsize(data)
    if size != expected:
        raise DamagedFile(data, f"is {size:,} bytes but {INDEX_FILE} says {expected:,}", resumable=size < expected)


def load_gpt2_params_from_tf_ckpt(tf_ckpt_path, hparams, verify=True):
    """The checkpoint's variables as a nested dict of float32 arrays:
    {wte, wpe, ln_f: {g, b}, blocks: [{ln_1, attn: {c_attn, c_proj}, ln_2, mlp: {c_fc, c_proj}}, ...]}
    with each conv1d weight [1, nx, nf] squeezed to [nx, nf].

    Every array is a read-only view of the data file, memory-mapped where it lies: nothing is
    copied, and the operating system pages the weights in as they are used. verify: first check
    each tensor's bytes against its CRC32C in the index (DamagedFile naming the data file if one
    differs); load_params does it once per version of the file."""
    model_dir = os.path.dirname(tf_ckpt_path)
    data_path = tf_ckpt_path + DATA_FILE.removeprefix("model.ckpt")
    entries = read_index(tf_ckpt_path + ".index")
    check_checkpoint(entries, hparams, model_dir)
    with open(data_path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if verify:
        with memoryview(data) as view:  # slices of a memoryview copy nothing
            whole = all(masked_crc32c(view[e["offset"]:e["offset"] + e["size"]]) == e["crc32c"] for e in entries.values())
        if not whole:
            data.close()  # so that the file can be set aside, even on Windows
            raise DamagedFile(data_path, f"does not match the checksums in {INDEX_FILE}")
    arrays = {}
    for name, e in entries.items():
        array = np.frombuffer(data, dtype="<f4", count=e["size"] // 4, offset=e["offset"]).reshape(e["shape"])
        arrays[param_name(name)] = array[0] if array.ndim == 3 else array  # conv1d [1, nx, nf] -> [nx, nf]
    return unflatten(arrays, hparams["n_layer"])


# ---------------------------------------------------------------------------------------------
# The model folder: checked once, shared safely

def fingerprint(model_dir):
    """Size, modification time and inode of the checkpoint's two files: a new version of either
    (downloaded again, copied over, edited) has another fingerprint."""
    stats = {name: os.stat(os.path.join(model_dir, name)) for name in (INDEX_FILE, DATA_FILE)}
    return {name: [s.st_size, s.st_mtime_ns, s.st_ino] for name, s in stats.items()}


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


@contextlib.contextmanager
def folder_lock(model_dir):
    """Hold model_dir's lock file while fetching or checking its files, so that two processes
    started at once (a notebook and a shell, say) take turns: the second waits, then finds the
    files whole. The operating system drops a lock when its process ends, however it ends, so a
    lock left by a killed process blocks no one. A folder that cannot be written (shared
    read-only, say) is read without a lock: no one can change it from here."""
    path = os.path.join(model_dir, LOCK_FILE)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield
            return
        if not try_lock(fd):
            print(f"waiting for another process to finish with {model_dir} (it holds {path})", file=sys.stderr)
            while not try_lock(fd):
                time.sleep(0.1)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the process before us removed the file we waited on: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)  # while still locked, so that anyone waiting on it sees it is gone
        os.close(fd)


def try_lock(fd):
    """Take the lock on an open file if no other process has it; False if one does."""
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


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
    os.makedirs(model_dir, exist_ok=True)
    refetched = {}  # path -> "resumed" or "fresh"
    with folder_lock(model_dir):
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
    check_size_name(hparams, model_size, model_dir)
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
