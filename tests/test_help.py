"""`python gpt2.py --help` and `python train.py --help` explain every flag, and README.md's flag tables say the same."""
import ast
import os
import re
import subprocess
import sys

import pytest

import cli
from helpers import ROOT


def help_flags(program="gpt2.py"):
    """{flag: (default, description)} in the order `--help` lists them (fire prints help on stderr
    when it is not a terminal)."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, program), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    flags, name = {}, None
    for line in lines[lines.index("FLAGS") + 1:]:
        if line and not line.startswith(" "):
            break  # the next section
        match = re.fullmatch(r" {4}(?:-\w, )?--(\w+)=\w+", line)
        if match:
            name = match.group(1)
            flags[name] = {}
        elif line.startswith(" " * 8):
            key, _, value = line.strip().partition(": ")
            if key in ("Type", "Default"):
                flags[name][key] = value
            else:
                assert "description" not in flags[name], f"--{name} takes more than one line in --help"
                flags[name]["description"] = line.strip()
    return {name: (item.get("Default"), item.get("description")) for name, item in flags.items()}


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


def as_in_readme(default):
    """How README's table writes a default that --help prints as a Python value."""
    value = ast.literal_eval(default)
    if value is None or value is False:
        return "none" if value is None else "off"
    return value if isinstance(value, str) else f"{value:g}"


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
        assert readme[name] == (as_in_readme(default), description), f"--{name}"


def test_every_train_flag_says_what_it_does_and_its_default():
    flags = help_flags("train.py")
    assert list(flags)[0] == "data" and "resume" in flags
    for name, (default, description) in flags.items():
        assert default is not None, f"--{name} has no default in --help"
        assert description, f"--{name} is not explained in --help (add it to train_main's Args:)"
