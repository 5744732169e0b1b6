"""encoder.py gives exactly OpenAI's GPT-2 token ids.

The reference is tiktoken, OpenAI's own tokenizer library, built offline from the same verified
encoder.json and vocab.bpe (tests/vocab.py) with GPT-2's pre-tokenizer pattern. Every comparison
uses tiktoken's encode_ordinary, because our encoder treats "<|endoftext|>" typed in text as text.
"""
import os
import shutil
import socket
import sys
import unicodedata
from functools import lru_cache

import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenizer as tiktoken has it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import encoder  # noqa: E402
from corpus import corpus_size_bytes, documents  # noqa: E402
from vocab import SHA256, vocab_dir  # noqa: E402

EOT = "<|endoftext|>"
MIN_CORPUS_BYTES = 200_000


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def no_network():
    """Any attempt to open a connection while these tests run is an error, not a download."""

    def refuse(*args, **kwargs):
        raise RuntimeError("test_encoder.py must not use the network")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "create_connection", refuse)
        # tiktoken's loader otherwise caches files by path under the temp dir (and would trust a
        # stale copy there); an empty cache dir turns that off, so the files are read directly.
        mp.setenv("TIKTOKEN_CACHE_DIR", "")
        yield


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A models folder whose 124M/ holds copies of the verified vocabulary files."""
    source, parent = vocab_dir(), tmp_path_factory.mktemp("encoder-models")
    (parent / "124M").mkdir()
    for name in SHA256:
        shutil.copyfile(os.path.join(source, name), parent / "124M" / name)
    return parent


@pytest.fixture(scope="module")
def enc(models_dir, no_network):
    return encoder.get_encoder("124M", str(models_dir))


@pytest.fixture(scope="module")
def ref(models_dir, no_network):
    """OpenAI's GPT-2 tokenizer as tiktoken builds it, from local files only."""
    folder = models_dir / "124M"
    ranks = data_gym_to_mergeable_bpe_ranks(
        str(folder / "vocab.bpe"), str(folder / "encoder.json"),
        vocab_bpe_hash=SHA256["vocab.bpe"], encoder_json_hash=SHA256["encoder.json"])
    return tiktoken.Encoding(name="gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256})


def divergence(text, ours, theirs, ref):
    """Empty if the id lists agree; otherwise where and how they first differ."""
    if ours == theirs:
        return ""
    i = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    offset = len(ref.decode_bytes(theirs[:i]).decode("utf-8", errors="ignore"))  # chars agreed on
    pieces = lambda ids: [ref.decode_bytes([t]) for t in ids]  # noqa: E731
    return (f"ids differ at token {i} (text offset ~{offset}; {len(ours)} ours vs {len(theirs)} "
            f"tiktoken's)\n  text there: {text[max(0, offset - 30):offset]!r} | "
            f"{text[offset:offset + 30]!r}\n  ours:     {ours[i:i + 8]} {pieces(ours[i:i + 8])}\n"
            f"  tiktoken: {theirs[i:i + 8]} {pieces(theirs[i:i + 8])}")


def check_same(enc, ref, text):
    """Our ids are tiktoken's, and decoding them gives the text back."""
    ours, theirs = enc.encode(text), ref.encode_ordinary(text)
    same = ours == theirs  # compared apart: pytest's own diff of huge lists or strings is slow
    assert same, divergence(text, ours, theirs, ref)
    back = enc.decode(ours)
    round_trips = back == text
    if not round_trips:
        i = next((k for k, (a, b) in enumerate(zip(back, text)) if a != b), min(len(back), len(text)))
        assert round_trips, (f"decode(encode(text)) differs at char {i}: "
                             f"{back[i:i + 20]!r} instead of {text[i:i + 20]!r}")


def test_network_is_off_for_these_tests(no_network):
    with pytest.raises(RuntimeError, match="network"):
        socket.create_connection(("127.0.0.1", 9))
    assert os.environ["TIKTOKEN_CACHE_DIR"] == ""


# ---------------------------------------------------------------------------------------------
# 1. Known ids


@pytest.mark.parametrize("text, ids", [
    ("Not all heroes wear capes.", [3673, 477, 10281, 5806, 1451, 274, 13]),
    ("Hello world", [15496, 995]),
    (" Hello world", [18435, 995]),
    ("", []),
])
def test_known_ids(enc, text, ids):
    assert enc.encode(text) == ids
    assert enc.decode(ids) == text


def test_endoftext_typed_in_text_is_ordinary_text(enc, ref):
    assert enc.eot_id == 50256
    assert enc.decode([50256]) == EOT
    ids = enc.encode(EOT)
    assert ids == [27, 91, 437, 1659, 5239, 91, 29]  # "<", "|", "end", "of", "text", "|", ">"
    assert ids == ref.encode_ordinary(EOT)
    assert enc.decode(ids) == EOT
    assert 50256 not in enc.encode(f"a{EOT}b {EOT}{EOT}")


# ---------------------------------------------------------------------------------------------
# 2. Agreement on a corpus of real text (see tests/corpus.py for what it holds and where from)


def test_corpus_size_and_scripts():
    size = corpus_size_bytes()
    print(f"\nencoder corpus: {size} bytes of UTF-8 text in {len(documents())} documents")
    assert size >= MIN_CORPUS_BYTES, f"corpus is only {size} bytes"
    text = "".join(t for _, t in documents())
    scripts = ["Latin", "Greek", "Cyrillic", "Arabic", "Hebrew", "Devanagari", "Thai", "Han",
               "Hiragana", "Katakana", "Hangul"]
    missing = [s for s in scripts if not regex.search(rf"\p{{Script={s}}}", text)]
    assert not missing, f"corpus lacks scripts {missing}"
    for needed in ["\u200d", "\U0001f3fd", "\u0301", "\r\n", "\u00a0", "\u3000", "I'll", "DON'T"]:
        assert needed in text, f"corpus lacks {needed!r}"


@pytest.mark.parametrize("name, text", documents(), ids=[name for name, _ in documents()])
def test_corpus_matches_tiktoken(enc, ref, name, text):
    check_same(enc, ref, text)


# ---------------------------------------------------------------------------------------------
# 3. Property-based fuzzing
#
# Unicode versions: Python's `regex` module (2026.5.9 here) has Unicode 17.0 tables, while tiktoken's
# Rust regex (regex-syntax 0.8.11) has Unicode 16.0. The letters and numbers added in Unicode 17.0
# (e.g. U+A7CE-A7CF Latin, U+10940-10959 Sidetic, U+11DB0-11DDB Tolong Siki, U+16EA0-16ED3 Beria
# Erfe, U+1E6C0-1E6FF Tai Yo, U+323B0-33479 CJK Extension J, digits U+11DE0-11DE9) are \p{L}/\p{N}
# for `regex` but not for tiktoken, so the two split text like "\ua7ce's" differently:
# ours [166, 253, 236, 338] ("'s" as a contraction) vs tiktoken [166, 253, 236, 6, 82]. Neither
# is wrong; OpenAI's own encoder.py, which also uses `regex`, behaves like ours. The fuzzers below
# leave out exactly the code points on which the two regex engines disagree (computed at run time,
# so the list follows whatever versions are installed), and
# test_regex_engines_disagree_only_on_newly_assigned_code_points checks that this exclusion only
# ever covers code points too new for Python's own Unicode database, never established characters.

PROBE_RANKS = {bytes([b]): b for b in range(256)}


@lru_cache()
def class_members(pattern):
    """(per tiktoken, per regex): the sets of non-surrogate code points matching `pattern`."""
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    # A tiktoken "encoding" that keeps only what matches the pattern, byte by byte.
    probe = tiktoken.Encoding(name="probe", pat_str=pattern, mergeable_ranks=PROBE_RANKS,
                              special_tokens={})
    theirs = set(bytes(probe.encode_ordinary(everything)).decode("utf-8"))
    ours = set(regex.findall(pattern, everything))
    return theirs, ours


@lru_cache()
def engines_disagree():
    """Code points classed differently (letter, number, whitespace) by the two regex engines."""
    return frozenset().union(*(a ^ b for a, b in map(class_members, [r"\p{L}", r"\p{N}", r"\s"])))


def test_regex_engines_disagree_only_on_newly_assigned_code_points():
    for pattern in [r"\p{L}", r"\p{N}", r"\s"]:
        theirs, ours = class_members(pattern)
        assert len(theirs) > 1000 or pattern == r"\s", f"probe for {pattern} is broken"
        only_theirs = sorted(theirs - ours)
        assert not only_theirs, f"tiktoken alone puts {[hex(ord(c)) for c in only_theirs[:20]]} in {pattern}"
        old = sorted(c for c in ours - theirs if unicodedata.category(c) != "Cn")
        assert not old, (f"the engines disagree on {pattern} for characters Python's Unicode "
                         f"{unicodedata.unidata_version} knows: {[hex(ord(c)) for c in old[:20]]}")
    assert len(engines_disagree()) < 20_000


def test_every_known_character_in_context_matches_tiktoken(enc, ref):
    """Each character Python's Unicode database has assigned (plus the newer letters and numbers
    both engines know, and the BMP private-use area), between letters, digits, spaces, apostrophes."""
    theirs_l, ours_l = class_members(r"\p{L}")
    theirs_n, ours_n = class_members(r"\p{N}")
    newer = (theirs_l & ours_l) | (theirs_n & ours_n)
    chars = sorted(c for c in map(chr, range(0x110000))
                   if (unicodedata.category(c) not in ("Cs", "Cn", "Co") or c in newer
                       or "\ue000" <= c <= "\uf8ff") and c not in engines_disagree())
    assert len(chars) > 140_000
    separators = [" ", "", "'s", "a", "1", "!", "\n", "  ", " x", "'", "\t "]
    text = "".join(c + separators[i % len(separators)] for i, c in enumerate(chars))
    check_same(enc, ref, text)


def portable_characters():
    """Hypothesis' default text alphabet (no surrogates) minus the engines' disagreement."""
    return st.characters(codec="utf-8", exclude_characters=engines_disagree())


INTERESTING_CHARS = (
    " \t\n\r\x0b\x0c\x85\u00a0\u1680\u2000\u2003\u2009\u200a\u2028\u2029\u202f\u205f\u3000"  # spaces
    "\u200b\u200c\u200d\ufeff\u2060"  # zero-width
    "'\"`’‘.,;:!?-_()[]{}<>|/\\@#$%^&*+=~"  # punctuation, apostrophes
    "0123456789٠١٢٣٤५६७๘๙①½²Ⅻ〇"  # digits and other numbers
    "sdmtlvreSDMTLVRE"  # the letters of contractions
    "aZéßøłđĳΩωЖжїאبپअক்ทกຂកმԱአ中文日本語カタかなㄱ한"  # letters of many scripts
    "\u0300\u0301\u0308\u0323\u0334\u036f\u064b\u05b8\u093f\u0e31\u20dd\u20e3\ufe0f"  # combining
    "😀👍🏽🏿👨👩👧🏳🌈🇯🇵🫠🐍\u2764\u2640"  # emoji, skin tones, flags
    "\x00\x01\x1b\x1c\x1f\x7f\u0085\ue000\U000f0000\U0010ffff\ufffd\uffff"  # control, private use
)
FRAGMENTS = [
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "''", "I'll", "they're", "DON'T",
    "it's", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\u00a0", "\u3000", "Hello", " world",
    " the", "12345", "3.14", " 1,000", "👨\u200d👩\u200d👧\u200d👦", "👍🏽", "🏳️\u200d🌈", "e\u0301",
    "Привет", "γειά", "مرحبا", "שלום", "नमस्ते", "สวัสดี", "你好", "こんにちは", "안녕", EOT,
    "https://example.com/a?b=1", "\U000105c0",  # a Todhri letter: Unicode 16.0, known to both engines
]

interesting_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(alphabet=st.sampled_from(INTERESTING_CHARS), max_size=6),
              st.text(alphabet=st.deferred(portable_characters), max_size=3)),
    max_size=25).map("".join)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(text=st.text(alphabet=st.deferred(portable_characters)))
def test_fuzz_any_text_matches_tiktoken(enc, ref, text):
    check_same(enc, ref, text)


@FUZZ
@given(text=interesting_text)
def test_fuzz_interesting_text_matches_tiktoken(enc, ref, text):
    check_same(enc, ref, text)


# ---------------------------------------------------------------------------------------------
# 4. Text that is not valid Unicode


@pytest.mark.parametrize("text", ["\ud800", "abc \udfff def", "ok\ud83d", "\udc00\ud800"])
def test_lone_surrogate_raises_plain_value_error(enc, text):
    with pytest.raises(ValueError, match="surrogate") as info:
        enc.encode(text)
    # UnicodeEncodeError is itself a ValueError; the point is a clear message instead of it.
    assert not isinstance(info.value, UnicodeError), repr(info.value)


# ---------------------------------------------------------------------------------------------
# 5. Damaged vocabulary files


def damaged_copy(tmp_path, name, cut):
    """models dir whose 124M/ has the verified files, except `name` replaced by cut(its bytes)."""
    folder = tmp_path / "124M"
    folder.mkdir()
    for other in SHA256:
        with open(os.path.join(vocab_dir(), other), "rb") as f:
            data = f.read()
        (folder / other).write_bytes(cut(data) if other == name else data)
    return str(tmp_path), str(folder / name)


def check_clean_value_error(tmp_path, name, cut):
    models, path = damaged_copy(tmp_path, name, cut)
    with pytest.raises(ValueError) as info:
        encoder.get_encoder("124M", models)
    # json.JSONDecodeError and UnicodeDecodeError are ValueErrors too; they must not leak out bare.
    error = info.value
    assert type(error) is ValueError, f"bare {type(error).__name__}: {str(error)[:300]}"
    assert path in str(error), f"message does not name {path}: {error}"


def half(data):
    return data[:len(data) // 2]


def half_mid_character(data):
    """Cut near the middle, inside a multi-byte UTF-8 character (as a broken download may).

    Only vocab.bpe has such characters ("Ġ" is C4 A0); encoder.json is pure ASCII (\\u escapes)."""
    i = len(data) // 2
    while not 0x80 <= data[i] < 0xC0:  # stop on a continuation byte
        i += 1
    return data[:i]


def half_of_the_lines(data):
    lines = data.split(b"\n")
    return b"\n".join(lines[:len(lines) // 2]) + b"\n"


def test_truncated_encoder_json(tmp_path):
    check_clean_value_error(tmp_path, "encoder.json", half)


def test_vocab_bpe_with_fewer_merges(tmp_path):
    check_clean_value_error(tmp_path, "vocab.bpe", half_of_the_lines)


def test_truncated_vocab_bpe(tmp_path):
    check_clean_value_error(tmp_path, "vocab.bpe", half)


def test_truncated_vocab_bpe_mid_character(tmp_path):
    check_clean_value_error(tmp_path, "vocab.bpe", half_mid_character)
