"""`python gpt2.py --help` and `python train.py --help` explain every flag, and README.md's flag tables say the same."""
import os
import re
import subprocess
import sys

import pytest

import cli
from helpers import ROOT


def help_text(program):
    result = subprocess.run([sys.executable, os.path.join(ROOT, program), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


def help_flags(program="gpt2.py"):
    """{flag: (default, description)} in the order `--help` lists them, one line each."""
    lines = help_text(program).splitlines()
    flags = {}
    for line in lines[lines.index("flags (name, default, meaning):") + 1:]:
        match = re.fullmatch(r"  --(\w+) +(\S+) +(.+)", line)
        assert match, f"--help line not of a flag: {line!r}"
        flags[match[1]] = (match[2], match[3])
    return flags


def readme_flags(section="## Quick start"):
    """{flag: (default, meaning)} from the flag table of README.md's section, code marks and escaped pipes
    removed."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = lines.index("| flag | default | meaning |", lines.index(section)) + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip().replace("`", "").replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 3, f"README row with {len(cells)} cells (an unescaped |?): {line}"
        flag, default, meaning = cells
        rows[flag.removeprefix("--")] = (default, meaning)
    return rows


def test_every_flag_says_what_it_does_and_its_default():
    flags = help_flags()
    assert list(flags)[0] == "prompt" and "prompt_file" in flags and "stride" in flags
    for name, (default, description) in flags.items():
        assert default is not None, f"--{name} has no default in --help"
        assert description, f"--{name} is not explained in --help (add it to main's Args:)"
    assert str(cli.TOKEN_LINES) in flags["tokens"][1]


@pytest.mark.parametrize("program, section", [("gpt2.py", "## Quick start"),
                                              ("train.py", "## Fine-tune on your own text"),
                                              ("utils.py", "## Hugging Face models")])
def test_readme_table_agrees_with_help(program, section):
    help_, readme = help_flags(program), readme_flags(section)
    assert list(readme) == list(help_), "README's flag table and --help list different flags or orders"
    for name, (default, description) in help_.items():
        assert readme[name] == (default, description), f"--{name}"


def test_every_train_flag_says_what_it_does_and_its_default():
    flags = help_flags("train.py")
    assert list(flags)[0] == "data" and "resume" in flags
    for name, (default, description) in flags.items():
        assert default is not None, f"--{name} has no default in --help"
        assert description, f"--{name} is not explained in --help (add it to train_main's Args:)"


@pytest.mark.parametrize("program", ["gpt2.py", "train.py", "utils.py"])
def test_help_shows_the_flags_only(program):
    """Not fire's GROUP | COMMAND synopsis, its FIRE_METADATA group, or the Type: Optional[] it prints for
    SetParseFns' flags: a usage line, what the command does, and the flags."""
    text = help_text(program)
    assert text.startswith(f"usage: python {program}")
    for fire_word in ("GROUP", "FIRE_METADATA", "Type:", "Optional", "SYNOPSIS", "NAME"):
        assert fire_word not in text, fire_word
    assert all(default != "" for default, _ in help_flags(program).values())


@pytest.mark.parametrize("program", ["gpt2.py", "train.py", "utils.py"])
@pytest.mark.parametrize("spelling", ["-h", "--help"])
def test_help_comes_first_whatever_else_is_given(program, spelling, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, program), "--bogus", "1", spelling],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: ") and os.listdir(tmp_path) == []


@pytest.mark.parametrize("program, args, message", [
    ("train.py", ["--data", "t.txt", "--learning_rate", "1e-5"], "unknown flag --learning_rate: did you mean --lr?"),
    ("train.py", ["--data", "t.txt", "--max_iters=5"], "unknown flag --max_iters: did you mean --steps?"),
    ("gpt2.py", ["hi", "--bogus", "3"], "unknown flag --bogus: did you mean --"),
    ("gpt2.py", ["hi", "--temprature", "1"], "unknown flag --temprature: did you mean --temperature?"),
    ("gpt2.py", ["hi", "--nsamples", "2"], "unknown flag --nsamples: did you mean --n_samples?"),
    ("utils.py", ["--model_sizes", "124M"], "unknown flag --model_sizes: did you mean --model_size?"),
])
def test_an_unknown_flag_is_refused_before_any_work(program, args, message, tmp_path):
    """Fire would run the command (train a whole run, start a download) and only then complain."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, program), *args], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env={**os.environ, "GPT2_BASE_URL": "http://127.0.0.1:9"})
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"error: {message}")
    assert os.listdir(tmp_path) == []  # nothing downloaded, nothing trained
