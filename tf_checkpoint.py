"""TensorFlow's checkpoint format (a "tensor bundle"), read and written with NumPy and the standard library.

A checkpoint saved under the prefix `model.ckpt` is two files. `model.ckpt.data-00000-of-00001`
is every tensor's raw bytes (little-endian float32 here), one after another. `model.ckpt.index`
says where each one lies: it is a sorted table in LevelDB's format, read from its end:

    [data block] ... [data block]   records: tensor name -> BundleEntryProto, sorted by name
    [metaindex block]               empty in checkpoints
    [index block]                   records: a key between one data block's last name and the
                                    next block's first -> BlockHandle of that block
    [footer, 48 bytes]              metaindex BlockHandle, index BlockHandle, zero padding to 40
                                    bytes, and the magic number 0xdb4775248b80fb57 (8 bytes,
                                    little-endian)

1. A BlockHandle is two varints: the block's offset and size in the file. A varint holds 7 bits
   per byte, low bits first, with the high bit set on every byte but the last.
2. After each block come 5 bytes: its compression (0, none, in checkpoints) and the masked
   CRC32C of the block and that byte. The blocks follow one another with no gap, so a flipped bit
   anywhere in the index is caught.
3. A block is its records, then the uint32 offsets of some of them (restart points, for binary
   search; reading every record needs none) and their count, a uint32. A record is three varints
   (bytes its key shares with the previous key, key bytes that follow, value length), then those
   key bytes, then the value. TensorFlow makes every 16th record of a data block a restart point
   (its key shares nothing), and every record of the index block; it closes a data block as soon
   as it holds 256 KiB. The index block's key for a data block is the shortest string at least
   its last key and below the next block's first: the last key with one byte raised by 1 and cut
   after it, where that fits between the two (after the last block: past its last key).
4. Values are protocol buffers: fields, each a varint tag (field number << 3 | wire type) and then
   a varint (wire type 0), 8 bytes (1), a varint length and that many bytes (2), or 4 bytes (5).
   A writer puts the fields in the order of their numbers and leaves out a number field that is 0.
   The empty key holds a BundleHeaderProto (field 1: number of data files, 1; 2: endianness, 0 for
   little; 3: a VersionDef whose field 1, the producer, is 1). Every other key is a tensor's name
   (UTF-8), and its value a BundleEntryProto (1: dtype, 1 for float32; 2: shape, a
   TensorShapeProto whose fields 2 are its dimensions, each with its size in field 1; 3: data file
   number; 4: offset; 5: size in bytes; 6: masked CRC32C of the tensor's bytes, 4 bytes (wire type
   5); 7: slices, for variables saved in pieces).
5. A masked CRC32C is the CRC32C (Castagnoli) rotated right by 15 bits plus 0xa282ead8, so that
   the CRC of bytes that themselves hold CRCs is not degenerate.

Writing (write_checkpoint) runs the same page backwards: each tensor's bytes are appended to the
data file in the order given, its CRC32C computed on the way; then the header and the entries,
sorted by name, fill the data blocks, followed by the empty metaindex block, the index block and
the footer. The two files come out byte for byte as TensorFlow's BundleWriter writes them.

Every damage this reader can meet is a ValueError; the caller names the file.
"""
import math
import mmap
import os

import numpy as np
from crc32c import crc32c

TABLE_MAGIC = 0xDB4775248B80FB57  # the last 8 bytes of every LevelDB-format table
FOOTER_BYTES = 48
DT_FLOAT = 1  # TensorFlow's number for float32
MAX_INDEX_BYTES = 16 << 20  # 1558M's index is 21 KB: anything far larger is not an index
BLOCK_SIZE = 256 << 10  # TensorFlow closes a data block once it holds this many bytes
RESTART_INTERVAL = 16  # every 16th record of a data block is a restart point, as TensorFlow writes
BUNDLE_VERSION = 1  # the producer version TensorFlow's BundleWriter writes into the header
PIECE_BYTES = 16 << 20  # a tensor that must be converted to little-endian C order goes this much at a time


def read_index(path):
    """{tensor name: {"shape", "offset", "size", "crc32c"}} from an index file. ValueError if it
    is not whole; OSError if it cannot be read."""
    with open(path, "rb") as f:
        index = f.read(MAX_INDEX_BYTES + 1)
    if len(index) > MAX_INDEX_BYTES:
        raise ValueError("too large to be an index")
    try:
        return parse_index(index)
    except IndexError:  # a varint or a field ran off the end of its bytes
        raise ValueError("cut off") from None


def parse_index(index):
    """The entries of read_index from the index file's bytes (the footer, then paragraphs 1-4)."""
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


def write_checkpoint(index_path, data_path, tensors, block_size=BLOCK_SIZE):
    """Write {name: float32 array} as a checkpoint: the tensors' bytes, in the order given, to
    data_path, and the index to index_path, each file on disk (fsync) when this returns. Any
    float32 array will do (views, other byte orders); names are non-empty strings. Returns the
    index entries, as read_index would give them. block_size: of the index's data blocks
    (TensorFlow's unless a test wants many blocks)."""
    for name in tensors:
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names are non-empty strings, not {name!r}")  # "" is the header's key
    entries = write_tensors(data_path, tensors)
    with open(index_path, "wb") as f:
        f.write(build_index(entries, block_size))
        f.flush()
        os.fsync(f.fileno())
    return entries


def build_index(entries, block_size=BLOCK_SIZE):
    """The index file's bytes for read_index's entries: parse_index run backwards."""
    entry_records = sorted((name.encode(), entry_bytes(entry)) for name, entry in entries.items())
    records = iter([(b"", header_bytes()), *entry_records])  # the header's empty key sorts first
    index, blocks = bytearray(), []  # blocks: (first key, last key, BlockHandle) of each data block
    block, first, last = build_block(records, RESTART_INTERVAL, block_size)
    while first is not None:
        blocks.append((first, last, write_block(index, block)))
        block, first, last = build_block(records, RESTART_INTERVAL, block_size)
    meta_handle = write_block(index, build_block(iter(()), RESTART_INTERVAL)[0])  # the empty metaindex block
    index_handle = write_block(index, build_block(index_records(blocks), restart_interval=1)[0])
    footer = (meta_handle + index_handle).ljust(FOOTER_BYTES - 8, b"\0") + TABLE_MAGIC.to_bytes(8, "little")
    return bytes(index + footer)


def index_records(blocks):
    """The index block's records, (key, BlockHandle) of each data block, from (first key, last
    key, BlockHandle) of each (paragraph 3)."""
    for (_, last, handle), following in zip(blocks, [*blocks[1:], None]):
        yield (short_successor(last) if following is None else shortest_separator(last, following[0])), handle


def read_varint(buf, pos):
    """(value, position after it) of the varint at buf[pos] (paragraph 1)."""
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


def write_varint(value):
    """The varint bytes of a whole number >= 0 (paragraph 1)."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_block_handle(buf, pos):
    offset, pos = read_varint(buf, pos)
    size, pos = read_varint(buf, pos)
    return offset, size, pos


def write_block_handle(offset, size):
    return write_varint(offset) + write_varint(size)


def read_block(index, offset, size):
    """The block at offset, once its trailer's CRC32C agrees with its bytes (paragraph 2)."""
    end = offset + size
    if end + 5 > len(index):
        raise ValueError("a block runs past the end")
    if index[end] != 0 or masked_crc32c(index[offset:end + 1]) != int.from_bytes(index[end + 1:end + 5], "little"):
        raise ValueError("a block does not match its checksum")
    return index[offset:end]


def write_block(index, block):
    """Append a block and its trailer to the bytearray index; its BlockHandle (paragraph 2)."""
    handle = write_block_handle(len(index), len(block))
    index += block + b"\0" + masked_crc32c(block + b"\0").to_bytes(4, "little")
    return handle


def block_records(block):
    """(key, value) of each record of a block, in order, with each key whole (paragraph 3)."""
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


def build_block(records, restart_interval, block_size=math.inf):
    """(block bytes, first key, last key) of the next records taken from an iterator of sorted
    (key, value) pairs, until the block holds block_size bytes (paragraph 3). No records left:
    an empty block, and None for the first key."""
    out, restarts, first, last = bytearray(), [], None, b""
    for n, (key, value) in enumerate(records):
        if n % restart_interval == 0:
            restarts.append(len(out))
            last = b""  # a restart point's key is written whole
        shared = len(os.path.commonprefix([last, key]))  # (commonprefix takes any sequences, bytes too)
        out += write_varint(shared) + write_varint(len(key) - shared) + write_varint(len(value)) + key[shared:] + value
        first, last = key if first is None else first, key
        if len(out) + 4 * len(restarts) + 4 >= block_size:
            break
    restarts = restarts or [0]  # an empty block still has its one restart point
    out += b"".join(offset.to_bytes(4, "little") for offset in restarts) + len(restarts).to_bytes(4, "little")
    return bytes(out), first, last


def shortest_separator(last, following):
    """The index key of a data block ending at key `last`, before a block starting at `following`:
    as short as may be, at least last and below following (paragraph 3)."""
    i = len(os.path.commonprefix([last, following]))
    if i < min(len(last), len(following)) and last[i] + 1 < following[i]:
        return last[:i] + bytes([last[i] + 1])
    return last


def short_successor(last):
    """The index key of the last data block: a short key at least its last key `last`."""
    for i, byte in enumerate(last):
        if byte < 0xFF:
            return last[:i] + bytes([byte + 1])
    return last


def read_fields(message):
    """A protocol buffer's fields, {number: [values]}: bytes for wire type 2, ints for the rest
    (paragraph 4)."""
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


def write_field(number, wire_type, value):
    """One protocol buffer field (paragraph 4): a number as a varint (wire type 0; left out if 0)
    or as 4 bytes (5), or bytes (2) after their length."""
    tag = write_varint(number << 3 | wire_type)
    if wire_type == 0:
        return tag + write_varint(value) if value else b""
    if wire_type == 5:
        return tag + value.to_bytes(4, "little")
    return tag + write_varint(len(value)) + value


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
    entry = {"shape": shape, "offset": field(fields, 4, 0), "size": field(fields, 5, 0), "crc32c": field(fields, 6, 0)}
    if entry["size"] != 4 * math.prod(shape):
        raise ValueError("a tensor's size is not its shape's")
    return entry


def header_bytes():
    """The BundleHeaderProto's bytes: one little-endian data file, TensorFlow's version 1."""
    return write_field(1, 0, 1) + write_field(2, 0, 0) + write_field(3, 2, write_field(1, 0, BUNDLE_VERSION))


def entry_bytes(entry):
    """read_index's entry of one float32 tensor -> its BundleEntryProto's bytes."""
    shape = b"".join(write_field(2, 2, write_field(1, 0, size)) for size in entry["shape"])
    return (write_field(1, 0, DT_FLOAT) + write_field(2, 2, shape) + write_field(4, 0, entry["offset"])
            + write_field(5, 0, entry["size"]) + write_field(6, 5, entry["crc32c"]))


def masked_crc32c(data):
    """CRC32C of data, masked as paragraph 5 says."""
    return mask(crc32c(data))


def mask(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def data_size(entries):
    """How long the data file must be: up to the end of its last tensor."""
    return max((e["offset"] + e["size"] for e in entries.values()), default=0)


def read_tensors(data_path, entries, verify=True):
    """{name: array} of every tensor in the index entries, each a read-only float32 view of the
    data file, memory-mapped where it lies: nothing is copied, and the operating system pages
    the bytes in as they are used. The file must be at least data_size(entries) long.
    verify: first check each tensor's bytes against its CRC32C (ValueError if one differs)."""
    with open(data_path, "rb") as f:
        # mmap refuses an empty file, which TensorFlow writes when no tensor has an element
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""
    if verify:
        with memoryview(data) as view:  # slices of a memoryview copy nothing
            bad = [name for name, e in entries.items()
                   if masked_crc32c(view[e["offset"]:e["offset"] + e["size"]]) != e["crc32c"]]
        if bad:
            if data:
                data.close()  # so that the caller can set the file aside, even on Windows
            raise ValueError(f"{bad[0]} does not match its checksum")
    return {name: np.frombuffer(data, dtype="<f4", count=e["size"] // 4, offset=e["offset"]).reshape(e["shape"])
            for name, e in entries.items()}


def write_tensors(data_path, tensors):
    """Write each float32 array of {name: array} to a new data file at data_path, one after
    another in the order given, as little-endian bytes in C order, and return read_index's
    entries for them. The file is on disk (fsync) when this returns. ValueError for an array
    that is not float32: converting it here would hide a mistake."""
    entries = {}
    with open(data_path, "wb") as f:
        for name, array in tensors.items():
            array = np.asarray(array)
            if array.dtype.kind != "f" or array.itemsize != 4:
                raise ValueError(f"{name} is {array.dtype}, not float32")
            offset, crc = f.tell(), 0
            for piece in little_endian_pieces(array):
                f.write(piece)
                crc = crc32c(piece, crc)
            entries[name] = {"shape": list(array.shape), "offset": offset, "size": array.nbytes, "crc32c": mask(crc)}
        f.flush()
        os.fsync(f.fileno())
    return entries


def little_endian_pieces(array):
    """A float32 array's bytes (little-endian, C order) as contiguous arrays: the array itself
    if it is already so, otherwise slices of it converted PIECE_BYTES at a time, so that a view
    or a big-endian array of 3 GB is written without a second copy of it whole."""
    if array.nbytes <= PIECE_BYTES or (array.flags.c_contiguous and array.dtype == "<f4"):
        yield np.ascontiguousarray(array, dtype="<f4")
        return
    rows = max(1, PIECE_BYTES // array[0].nbytes)  # rows of the first axis per piece
    for i in range(0, len(array), rows):
        yield from little_endian_pieces(array[i] if rows == 1 else array[i:i + rows])
