"""GPT-2's tokenizer: byte-level byte-pair encoding (BPE), giving exactly OpenAI's token ids.

Text -> UTF-8 bytes -> one printable character per byte -> words split by a regex -> each word
merged pairwise by rank from vocab.bpe -> ids from encoder.json. Decoding runs it backwards.
"""
import json
import os
from functools import lru_cache

import regex  # unlike `re`, knows the Unicode classes \p{L} (letters) and \p{N} (numbers)

# GPT-2's pre-tokenizer: contractions, words, numbers, other symbols (each may take one leading
# space), then whitespace. The `\s+(?!\S)` branch leaves the last space of a run to the next word.
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

MAX_FILE_BYTES = 16 << 20  # encoder.json is 1 MB; anything far larger is not a vocabulary


@lru_cache()
def bytes_to_unicode():
    """A printable character for each of the 256 byte values, so that BPE works on text.

    Printable Latin-1 bytes stand for themselves; the rest (control bytes, space) are moved to
    code points from 256 up, which is why a leading space shows as 'Ġ' in encoder.json.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {b: b for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], n = 256 + n, n + 1
    return {b: chr(c) for b, c in chars.items()}


def get_pairs(word):
    """The set of adjacent symbol pairs in a word (a tuple of symbols)."""
    return set(zip(word, word[1:]))


class Encoder:
    """Holds the vocabulary (token string -> id) and merge ranks; encode/decode use them."""

    def __init__(self, encoder, bpe_merges):
        self.encoder = encoder  # {token string: id}
        self.decoder = {i: s for s, i in encoder.items()}
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(bpe_merges)}  # lower merges first
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.eot_id = encoder["<|endoftext|>"]  # 50256; only reachable by id, never from text
        self.bpe = lru_cache(maxsize=1 << 16)(self.bpe)  # words repeat a lot in real text

    def bpe(self, token):
        """Merge the characters of one pre-token, lowest-ranked pair first, until no merge applies."""
        word = tuple(token)
        while len(word) > 1:
            pair = min(get_pairs(word), key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if pair not in self.bpe_ranks:
                break
            first, second = pair
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text):
        """str -> list of token ids. "<|endoftext|>" in the text is ordinary text, as in OpenAI's."""
        ids = []
        for token in PATTERN.findall(text):
            try:
                data = token.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("text contains a lone surrogate (not valid Unicode); "
                                 "decode bytes with errors='replace' before encoding") from None
            chars = "".join(self.byte_encoder[b] for b in data)
            ids.extend(self.encoder[piece] for piece in self.bpe(chars))
        return ids

    def decode_bytes(self, ids):
        """list of token ids -> the bytes they stand for (a token may end mid-character)."""
        return bytes(self.byte_decoder[c] for i in ids for c in self.decoder[i])

    def decode(self, ids):
        """list of token ids -> str; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def read_vocab_file(path):
    """Text of encoder.json or vocab.bpe, with a plain error naming the file if it is unusable."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; run gpt2.py with network access to download it")
    if os.path.getsize(path) > MAX_FILE_BYTES:
        raise ValueError(f"{path} is too large to be a GPT-2 vocabulary file; delete it and run again")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is truncated or corrupt; delete it and run again to download it") from None


def get_encoder(model_name, models_dir):
    """Encoder from models_dir/model_name/{encoder.json, vocab.bpe}, checked to be whole."""
    folder = os.path.join(models_dir, model_name)
    return read_encoder(os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe"))


def read_encoder(encoder_path, bpe_path):
    """Encoder from the token table and the merges at these paths (OpenAI's encoder.json and
    vocab.bpe, or Hugging Face's vocab.json and merges.txt, the same files), checked to be whole."""
    try:
        encoder = json.loads(read_vocab_file(encoder_path))
    except json.JSONDecodeError:
        raise ValueError(f"{encoder_path} is truncated or corrupt; delete it and run again to download it") from None
    lines = read_vocab_file(bpe_path).split("\n")
    # First line is a '#version' header; the rest are "a b" merges. 256 bytes + merges + <|endoftext|>.
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
    if not fits(encoder, merges):
        raise ValueError(f"{encoder_path} and {bpe_path} do not match (truncated or corrupt?); "
                         "delete them and run again")
    return Encoder(encoder, merges)


def fits(encoder, merges):
    """Whether a token table and merges make one tokenizer: 256 bytes + a token per merge + <|endoftext|>."""
    return isinstance(encoder, dict) and "<|endoftext|>" in encoder and len(merges) == len(encoder) - 257 \
        and all(type(i) is int for i in encoder.values()) \
        and all(isinstance(m, tuple) and len(m) == 2 and all(isinstance(s, str) for s in m) for m in merges)
