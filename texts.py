"""Reading the texts users give: a UTF-8 file (a prompt, a text to learn) or stdin, split into lines if asked, and
refused in one line when it is not text.

The command lines (cli.py) and the fine-tuning run (finetune.py) read their files here, so a file is read, and
its errors worded, the same way everywhere. `name` is how the file is named in errors, e.g. "--data my_text.txt".
"""
import re
import sys

# C0 and C1 control characters but tab, newline, carriage return and form feed: rare in text, common in binaries
CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def read_text(path, flag):
    """The text of a UTF-8 file, or of stdin for "-", named `flag` in errors (e.g. "--prompt_file").
    A leading byte-order mark is dropped."""
    name = "stdin" if path == "-" else f"{flag} {path}"
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {name}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name} is not UTF-8 text: byte offset {e.start} (0x{data[e.start]:02x}): {e.reason}; "
                         "save it as UTF-8") from None


def check_is_text(text, name):
    """Refuse what decodes as UTF-8 but is not text (a binary file, a disk image): a NUL byte, or control
    characters in more than one character of ten. A model trained on it would learn noise."""
    if "\0" in text:
        raise ValueError(f"{name} holds NUL bytes at character {text.index(chr(0)):,}: it is not a text file; "
                         "give a UTF-8 text")
    controls = len(CONTROL.findall(text))
    if controls * 10 > len(text):
        raise ValueError(f"{name} is {controls / len(text):.0%} control characters: it is not a text file; "
                         "give a UTF-8 text")


def lines_of(text):
    """(line number, line) of each line, split on newlines only, as editors number them: a form
    feed or U+2028 inside a line is part of it. A line's closing "\\r" (Windows files) is dropped."""
    return [(number, line.removesuffix("\r")) for number, line in enumerate(text.split("\n"), 1)]
