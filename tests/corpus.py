"""Test corpus for the tokenizer: real text found at test time on any machine with Python installed.

Nothing third-party is stored in this repository. The documents are read from the Python standard
library that runs the tests (English documentation prose, Python source code, the licence text, the
CJK sample files of the `test` package if it is installed, HTML entity names and legacy code pages),
plus a few paragraphs written for this project in many scripts. `python tests/corpus.py` prints the
size and the list of documents.
"""
import html.entities
import os
from functools import lru_cache

STDLIB_DIR = os.path.dirname(os.__file__)

# Python source files: code, comments and docstrings. Missing ones are skipped.
STDLIB_SOURCES = [
    "this.py", "string.py", "textwrap.py", "difflib.py", "fractions.py", "calendar.py", "shlex.py",
    "json/__init__.py", "json/decoder.py", "json/encoder.py", "html/parser.py", "email/utils.py",
]
# Plain-text and data files; the `test` package is optional (some distributions leave it out).
STDLIB_TEXT_FILES = ["LICENSE.txt", "test/xmltestdata/expat224_utf8_bug.xml"]
CJK_SAMPLES_DIR = "test/cjkencodings"

PROSE_BUDGET = 200_000  # bytes of documentation prose taken from pydoc_data.topics
CHUNK_CHARS = 32_000  # longer documents are compared in pieces of about this many characters

# One-byte code pages: their upper halves give whole alphabets (Cyrillic, Greek, Hebrew, Arabic,
# Thai, Vietnamese, box drawing, ...).
CODE_PAGES = ["cp437", "cp850", "cp866", "cp874", "cp1250", "cp1251", "cp1253", "cp1254", "cp1255",
              "cp1256", "cp1257", "cp1258", "koi8_r", "koi8_u", "iso8859_7", "iso8859_8", "mac_roman",
              "tis_620"]

# Written for this project. Each line tries one kind of difficulty.
HANDWRITTEN = """\
English: I'll bring the maps; they're in the car. DON'T forget it's Tuesday, and we've only got 2 hours.
Contractions in every case: 's 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D ''s '''ll y'all 'tis rock 'n' roll O'Neill's
Curly quotes: it’s the dog’s “ball”, isn’t it? ‘Yes,’ she said — probably… 100% sure.
Greek: Η γάτα κοιμάται δίπλα στο παράθυρο, ενώ έξω βρέχει από το πρωί. ΑΒΓΔ αβγδ ά έ ή ί ΐ ό ύ ΰ ώ
Russian: Вчера мы купили три килограмма яблок и испекли пирог для соседей. ЁЖИК ёжик
Ukrainian: Ми їхали потягом до Львова, і дорога забрала майже дев'ять годин. Ґанок, Єва, Їжак.
Arabic: ذهبت إلى السوق صباحاً واشتريت خبزاً طازجاً وبعض الزيتون. الأرقام: ٠١٢٣٤٥٦٧٨٩
Persian: امروز هوا آفتابی است و بچه‌ها در پارک بازی می‌کنند. ۱۴۰۳
Hebrew: הספרייה העירונית נפתחת בשעה תשע בבוקר ונסגרת בשבע בערב. שָׁלוֹם
Hindi: कल शाम हमने छत पर बैठकर चाय पी और बारिश देखी। संख्या १२३४५
Bengali: আমি প্রতিদিন সকালে হাঁটতে যাই। ১২৩
Tamil: நான் நேற்று ஒரு புதிய புத்தகம் வாங்கினேன்.
Thai: ฉันชอบเดินเล่นในสวนสาธารณะตอนเช้าก่อนไปทำงาน ๑๒๓
Lao and Khmer: ສະບາຍດີ ជំរាបសួរ
Georgian and Armenian: გამარჯობა, როგორ ხარ? Բարեւ, ինչպես ես:
Amharic: ሰላም ነው? ፩፪፫
Chinese: 我们明天早上八点在火车站门口见面，别忘了带伞。數字：一二三，１２３。
Japanese: 駅の近くに新しいパン屋さんができたので、週末に行ってみます。ｶﾀｶﾅ ﾃｽﾄ、カタカナ。
Korean: 오늘은 날씨가 맑아서 공원에서 자전거를 탔어요. 한글 자모: \u1112\u1161\u11ab\u1100\u1173\u11af
Vietnamese: Tôi đã học tiếng Việt được hai năm rồi; phở và bánh mì rất ngon.
Turkish: İstanbul'da yağmur yağıyor; ılık bir rüzgâr esiyor. I ı İ i
German and French: Grüße aus Köln! Straße, Maße; L'été dernier, l'hôtel était complet. Œuvre, æther.
Emoji: 👍 👍🏽 👍🏿 👨‍👩‍👧‍👦 🧑🏿‍💻 🏳️‍🌈 🏴‍☠️ 🇯🇵🇫🇷🇧🇷 ❤️ ❤ ✌🏻 1️⃣ #️⃣ 🫠 🫶🏼 😀😃😄😁 🐍🦀
Combining marks: e\u0301 a\u0308\u0323 n\u0303 Z\u0351\u0363a\u036b\u0300l\u0334g\u0335o\u0336 \u0301lead i\u0307\u0301 \u20dd\u20e3
Symbols: ∀x∈ℝ: x² ≥ 0; ∑ᵢ aᵢ ≤ ∞ → ⊥ ½ ¾ ⅓ Ⅻ ℃ № ™ © ® € £ ¥ ₹ ₿ §¶ †‡ •·… ←↑→↓ ♠♥♦♣ ☃ ✓✗ ░▒▓█ ┌─┐│└┘
Numbers: 0 7 42 007 3.14159265358979323846 1,234,567,890 -12e-10 0x7fffffff 0b1010 1_000_000 2024-06-01T12:34:56.789Z 12:00 +1 (555) 010-9999 ١٢٣ ४५६ ๗๘๙ ①②③ ²³¹ ⁴⁵
Long number: 31415926535897932384626433832795028841971693993751058209749445923078164062862089986280348253421170679
URLs: https://example.com/path/to/page?query=1&lang=en#section-2 http://localhost:8080/ ftp://files.example.org/pub/README.txt mailto:someone@example.org user@mail.example.co.uk
Markup: <div class="note">Tom &amp; Jerry</div> {"key": [1, 2.5, null, true], "ключ": "值"} `code` **bold** _em_ # Heading
Special token text: <|endoftext|> and <|endoftext|><|endoftext|>x and <|startoftext|> are ordinary text here.
Whitespace runs: a  b   c    d\t\te\t \tf
\n\n\ng\r\nh\r\n\r\n\ri \u00a0j\u00a0\u00a0k\u3000l\u3000\u3000m\u2003n\u2009o\u200bp\u200dq\u2028r\u2029s\x0bt\x0cu\x85v\x1cw\x1fx
Trailing spaces then newline:    \n    \n\t\n \u00a0\n
Indented code:
    def f(x):
        return x ** 2  # square
\tif (a && b) { return c; }
"""


def _read(relative):
    path = os.path.join(STDLIB_DIR, relative)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", newline="") as f:  # newline="" keeps any \r\n as written
        return f.read()


def _chunks(name, text):
    """Split on line ends into pieces of about CHUNK_CHARS characters, each named for errors."""
    if len(text) <= CHUNK_CHARS:
        return [(name, text)]
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + CHUNK_CHARS)
        end = len(text) if end == -1 else end + 1
        pieces.append(text[start:end])
        start = end
    return [(f"{name} [part {i + 1}/{len(pieces)}]", piece) for i, piece in enumerate(pieces)]


def _stress_text():
    """Edge cases of the pre-tokenizer and of long words, built by repetition."""
    return "".join([
        " " * 100, "x", "\t" * 40, "y", "\n" * 30, "z", " \n" * 20, "\r\n" * 10, "\u00a0" * 10, "!",
        "a" * 700, " ", "ab" * 300, " ", "'s" * 50, " ", "9" * 300, " ", "!?" * 100, " ",
        "é" * 200, " ", "中" * 300, " ", "🙂" * 100, " ", "supercalifragilisticexpialidocious" * 10, "\n",
    ])


@lru_cache()
def documents():
    """[(name, text)]: the corpus, in a fixed order; long documents come in named parts."""
    docs = []
    try:
        from pydoc_data.topics import topics
    except ImportError:
        topics = {}
    taken = 0
    for key in sorted(topics):
        if taken >= PROSE_BUDGET:
            break
        docs += _chunks(f"pydoc_data.topics[{key!r}]", topics[key])
        taken += len(topics[key].encode("utf-8"))
    for relative in STDLIB_SOURCES + STDLIB_TEXT_FILES:
        text = _read(relative)
        if text is not None:
            docs += _chunks(f"stdlib {relative}", text)
    cjk_dir = os.path.join(STDLIB_DIR, CJK_SAMPLES_DIR)
    if os.path.isdir(cjk_dir):
        for filename in sorted(os.listdir(cjk_dir)):
            if filename.endswith("-utf8.txt"):
                docs.append((f"stdlib {CJK_SAMPLES_DIR}/{filename}",
                             _read(os.path.join(CJK_SAMPLES_DIR, filename))))
    entities = "".join(f"&{name} = {char}\n" for name, char in sorted(html.entities.html5.items()))
    docs += _chunks("html.entities.html5", entities)
    for codec in CODE_PAGES:
        upper = bytes(range(0x80, 0x100)).decode(codec, errors="replace")
        rows = [upper[i:i + 16] for i in range(0, len(upper), 16)]
        docs.append((f"code page {codec}", "\n".join(rows) + "\n" + " ".join(upper) + "\n"))
    docs.append(("handwritten multi-script text", HANDWRITTEN))
    docs.append(("repetition stress text", _stress_text()))
    return docs


def corpus_size_bytes():
    """Total UTF-8 size of the corpus."""
    return sum(len(text.encode("utf-8")) for _, text in documents())


if __name__ == "__main__":
    for name, text in documents():
        print(f"{len(text.encode('utf-8')):8d}  {name}")
    print(f"{corpus_size_bytes():8d}  bytes in {len(documents())} documents")
