"""`python train.py --task classify ...` end to end, as a user runs it, on the tiny model and a labeled set that
random weights can learn (a keyword decides the label): the accuracy rises, the folder holds OpenAI's layout and
head.npz, a resumed run is bit for bit the same, and each bad labeled file is a one-line error."""
import json
import os

import numpy as np
import pytest

from helpers import assert_one_line_error, data_bytes, gpt2_cli, log_rows, straight_and_resumed, tensorflow_arrays, \
    train_cli
from utils import flatten, load_encoder_hparams_and_params

WORDS = "the a film story plot actor scene music day night city river old new long short".split()
FAST = ("--task", "classify", "--seq_len", "32", "--lr", "1e-3", "--warmup", "2")


def keyword_rows(n, seed):
    """n (text, label) rows: a few common words with "wonderful" (pos) or "awful" (neg) somewhere among them."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = ["neg", "pos"][rng.integers(2)]
        words = list(rng.choice(WORDS, rng.integers(3, 12)))
        words.insert(rng.integers(len(words) + 1), "wonderful" if label == "pos" else "awful")
        rows.append((" ".join(words), label))
    return rows


def write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(f'"{text}",{label}\n' for text, label in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labeled")
    return write_csv(folder / "reviews.csv", keyword_rows(200, seed=0))


@pytest.fixture(scope="module")
def model(tiny_models):
    return os.path.join(tiny_models, "124M")


def test_a_classifier_learns_a_keyword_and_saves_its_head(model, labeled, tmp_path):
    out = str(tmp_path / "run")
    result = train_cli("--data", labeled, "--model_dir", model, "--out", out, "--steps", "60", "--eval_every", "20",
                       *FAST)
    assert result.returncode == 0, result.stderr
    rows = log_rows(out)
    accuracy = [(int(row["step"]), float(row["val_accuracy"])) for row in rows if row["val_accuracy"]]
    print("validation accuracy by step:", accuracy)
    assert [step for step, _ in accuracy] == [0, 20, 40, 60] and accuracy[-1][1] >= 0.9
    assert "on the 20 validation texts at step 60:" in result.stdout  # a seeded 10% of each class
    assert f"accuracy {accuracy[-1][1]:.4f}" in result.stdout and "confusion (rows: true class" in result.stdout
    assert {"head.npz", "confusion.png", "loss.png"} <= set(os.listdir(out))
    with np.load(os.path.join(out, "head.npz"), allow_pickle=False) as head:
        assert head["w"].dtype == np.float32 and head["w"].shape == (64, 2)
        assert list(head["labels"]) == ["neg", "pos"]
    _, _, params = load_encoder_hparams_and_params(model_dir=out)  # the checkpoint holds OpenAI's variables only
    ours, theirs = flatten(params), tensorflow_arrays(out)
    assert sorted(ours) == sorted(theirs) and all(np.array_equal(ours[name], theirs[name]) for name in ours)


def test_a_lora_classifiers_head_is_read_beside_its_adapters(model, labeled, tmp_path):
    """gpt2.py --model_dir BASE --adapters RUN --classify takes the head that the LoRA run saved beside its
    adapters (BASE has none), and prints what the run's own folder, the adapters merged, prints."""
    out = str(tmp_path / "run")
    result = train_cli("--data", labeled, "--model_dir", model, "--out", out, "--steps", "4", "--eval_every", "0",
                       "--lora_rank", "4", *FAST)
    assert result.returncode == 0, result.stderr
    assert not os.path.exists(os.path.join(model, "head.npz"))
    text = ("--classify", "a wonderful film about the river")
    merged = gpt2_cli("--model_dir", out, *text)
    for adapters in (out, os.path.join(out, "adapters.npz")):
        based = gpt2_cli("--model_dir", model, "--adapters", adapters, *text)
        assert based.returncode == 0 and merged.returncode == 0, based.stderr + merged.stderr
        assert based.stdout == merged.stdout and len(merged.stdout.splitlines()) == 2


def test_a_classifier_resumes_bit_for_bit(model, labeled, tmp_path):
    straight_and_resumed(("--model_dir", model, "--eval_every", "0", "--lm_weight", "0.5", *FAST), labeled, tmp_path, 6)
    assert data_bytes(tmp_path / "straight") == data_bytes(tmp_path / "resumed")
    assert (tmp_path / "straight" / "head.npz").read_bytes() == (tmp_path / "resumed" / "head.npz").read_bytes()
    with np.load(tmp_path / "resumed" / "train_state.npz") as state:
        assert json.loads(str(state["record"]))["flags"]["lm_weight"] == 0.5


def test_texts_longer_than_seq_len_keep_their_end(model, tmp_path):
    long = [(" ".join(["old"] * 60) + " " + text, label) for text, label in keyword_rows(40, seed=1)]
    data = write_csv(tmp_path / "long.csv", long)
    result = train_cli("--data", data, "--model_dir", model, "--out", str(tmp_path / "run"), "--steps", "1", *FAST)
    assert result.returncode == 0, result.stderr
    assert "note: 36 of 36 texts are longer than --seq_len 32 tokens: each keeps its last 32" in result.stderr


@pytest.mark.parametrize("files, fragment", [
    ({"data": "text,kind\nhello,a\n"}, "its first row must name text and label columns"),
    ({"data": "text,label\nhello,a\nworld,a\n"}, "has one class only ('a')"),
    ({"data": 'text,label\nhello,a\n"",b\n'}, "line 3: the text is empty"),
    ({"data": "text,label\nhello,a\nworld,\n"}, "line 3: the label is missing"),
    ({"data": "text,label\nhello,a\nworld,b\n", "val_data": "text,label\nhi,a\nyo,c\n"},
     "--val_data {tmp}/val_data.csv, line 3: the label 'c' is not one of the training file's classes ('a', 'b')"),
    ({"data": "text,label\nhello,a\nworld,b\n"}, "no text of class 'a' is left to train on"),
    ({"data.jsonl": '{"text": "hello", "label": "a"}\n{"text": "world"\n'}, "line 2: not JSON"),
])
def test_bad_labeled_files_are_one_line_errors(model, tmp_path, files, fragment):
    paths = {}
    for name, content in files.items():
        stem, _, suffix = name.partition(".")
        paths[stem] = tmp_path / f"{stem}.{suffix or 'csv'}"
        paths[stem].write_text(content, encoding="utf-8")
    args = [arg for stem, path in paths.items() for arg in (f"--{stem}", str(path))]
    result = train_cli(*args, "--model_dir", model, "--out", str(tmp_path / "run"), *FAST)
    assert_one_line_error(result, fragment.format(tmp=tmp_path))
    assert not (tmp_path / "run").exists()


def test_lm_weight_goes_with_classify_only(model, labeled, tmp_path):
    assert_one_line_error(train_cli("--data", labeled, "--model_dir", model, "--lm_weight", "0.5"),
                          "--lm_weight goes with --task classify")
    assert_one_line_error(train_cli("--data", labeled, "--model_dir", model, "--task", "regress"),
                          "--task must be lm or classify, not 'regress'")
