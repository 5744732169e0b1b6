"""`python gpt2.py --classify`: a trained head's class probabilities, for one text and for a labeled file, against
TensorFlow's final hidden state on the saved checkpoint times the saved head; and every bad head or flag refused in
one line."""
import os
import shutil

import numpy as np
import pytest

from checkpoints import reference_hidden
from encoder import get_encoder
from helpers import assert_one_line_error, gpt2_cli as run

CLASSES = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def classifier(tiny_models, tmp_path_factory):
    """(a model folder: the tiny model with a random head.npz, w float32 [64, 3], the encoder)."""
    folder = tmp_path_factory.mktemp("classifier") / "model"
    shutil.copytree(os.path.join(tiny_models, "124M"), folder)
    w = (np.random.default_rng(3).standard_normal((64, len(CLASSES))) * 0.4).astype(np.float32)
    np.savez(folder / "head.npz", w=w, labels=np.array(CLASSES))
    return str(folder), w, get_encoder("124M", tiny_models)


def expected_probabilities(folder, w, ids):
    """softmax(h w) in float64 at the text's last token, h from TensorFlow."""
    logits = reference_hidden(folder, ids)[-1].astype(np.float64) @ w.astype(np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def rows_of(stdout):
    return [line.split("\t") for line in stdout.splitlines()]


@pytest.mark.parametrize("order", ["flag first", "text first"])
def test_one_text_prints_each_class_likeliest_first(classifier, order):
    folder, w, encoder = classifier
    text = "I loved this film"
    args = ["--classify", text] if order == "flag first" else [text, "--classify"]
    result = run("--model_dir", folder, *args)
    assert result.returncode == 0, result.stderr
    probs = expected_probabilities(folder, w, encoder.encode(text))
    order = np.argsort(-probs)
    rows = rows_of(result.stdout)
    assert [label for label, _ in rows] == [CLASSES[i] for i in order]
    for (_, shown), i in zip(rows, order):
        assert len(shown.split(".")[1]) == 4 and abs(float(shown) - probs[i]) <= 6e-5, (shown, probs[i])


def test_a_labeled_file_gives_a_row_per_text_then_the_scores(classifier, tmp_path):
    """Rows keep the file's line numbers; a label the head does not know is classified but left out of the scores,
    which are the accuracy and confusion matrix of the predictions TensorFlow's numbers give."""
    folder, w, encoder = classifier
    rows = [("A fine, warm film", "positive"), ("Dull\nand long", "negative"), ("It exists", "neutral"),
            ("Loud", "bogus"), ("Rather good", "positive")]
    path = tmp_path / "test.csv"
    path.write_text("label,text\n" + "".join(f'{label},"{text}"\n' for text, label in rows), encoding="utf-8")
    result = run("--model_dir", folder, "--prompt_file", str(path), "--classify")
    assert result.returncode == 0, result.stderr
    probs = [expected_probabilities(folder, w, encoder.encode(text)) for text, _ in rows]
    predicted = [int(np.argmax(p)) for p in probs]
    out = result.stdout.splitlines()
    for line, row, p, i in zip([2, 3, 5, 6, 7], rows_of("\n".join(out[:5])), probs, predicted):
        assert row[:2] == [str(line), CLASSES[i]] and abs(float(row[2]) - p[i]) <= 6e-5, row
    known = [(CLASSES.index(label), i) for (_, label), i in zip(rows, predicted) if label in CLASSES]
    right = sum(truth == guess for truth, guess in known)
    assert out[5] == "" and out[6] == f"accuracy {right / 4:.4f} ({right} of 4)"
    counts = np.zeros((3, 3), int)
    for truth, guess in known:
        counts[truth, guess] += 1
    assert [line.split()[1:] for line in out[-3:]] == [[str(c) for c in row] for row in counts]
    assert "1 row has a label the head does not know ('bogus'" in result.stderr
    assert "the scores count the other 4" in result.stderr


def test_each_line_and_a_text_longer_than_the_context(classifier, tmp_path):
    """A text of more than n_ctx (64) tokens keeps its last 64, as training keeps the end of a long text."""
    folder, w, encoder = classifier
    long = " ".join(f"word{i}" for i in range(60))
    path = tmp_path / "lines.txt"
    path.write_text(f"short one\n\n{long}\n", encoding="utf-8")
    result = run("--model_dir", folder, "--prompt_file", str(path), "--each_line", "--classify")
    assert result.returncode == 0, result.stderr
    ids = encoder.encode(long)
    assert len(ids) > 64
    for row, (line, text_ids) in zip(rows_of(result.stdout), [(1, encoder.encode("short one")), (3, ids[-64:])]):
        p = expected_probabilities(folder, w, text_ids)
        assert row[:2] == [str(line), CLASSES[int(np.argmax(p))]] and abs(float(row[2]) - p.max()) <= 6e-5
    assert len(rows_of(result.stdout)) == 2  # no labels, no scores
    assert f"1 text (line 3): longer than the model's context, so only the last 64 tokens are read " \
           f"({len(ids) - 64} cut from the start)" in result.stderr


@pytest.mark.parametrize("head, message", [
    (None, "has no head.npz: it was not trained with `python train.py --task classify`"),
    (b"PK\x03\x04 not a whole zip", "head.npz is damaged"),
    (dict(w=np.zeros((32, 2), np.float32), labels=np.array(["a", "b"])),
     "head.npz holds a head of shape [32, 2] for 2 classes, which does not fit this model (n_embd 64)"),
    (dict(w=np.zeros((64, 2), np.float32), labels=np.array(["a", {}], object)), "head.npz is damaged"),
])
def test_a_folder_without_a_fitting_head_is_one_line(tiny_models, tmp_path, head, message):
    folder = tmp_path / "model"
    shutil.copytree(os.path.join(tiny_models, "124M"), folder)
    if isinstance(head, bytes):
        (folder / "head.npz").write_bytes(head)
    elif head is not None:
        np.savez(folder / "head.npz", **head)
    assert_one_line_error(run("--model_dir", str(folder), "--classify", "Some text"), message)


def test_no_head_is_found_before_any_download(tmp_path):
    """models/124M without a head: the error comes before the loader would fetch OpenAI's model."""
    result = run("--classify", "Some text", cwd=tmp_path)
    assert_one_line_error(result, os.path.join("models", "124M"), "has no head.npz")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["Some text", "--classify", "--choices", "a|b"], "--classify does not go with --choices"),
    (["Some text", "--classify", "--score"], "--score does not go with --classify"),
    (["Some text", "--classify", "--temperature", "1"], "--temperature is for generating; --classify reads"),
    (["Some text", "--classify", "--seed", "1"], "--seed is for generating"),
    (["Some text", "--classify", "--template", "{text}:"], "--template goes with --choices"),
    (["Some text", "--classify", "--each_line"], "--each_line goes with --prompt_file"),
    (["", "--classify"], "there is nothing to classify"),
    (["Some text", "--classify=maybe"], "--classify is a switch"),
])
def test_flags_that_do_not_apply_are_refused(classifier, args, message):
    assert_one_line_error(run("--model_dir", classifier[0], *args), message)


def test_a_bad_labeled_file_is_one_line(classifier, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nfine,positive\n,negative\n", encoding="utf-8")
    assert_one_line_error(run("--model_dir", classifier[0], "--prompt_file", str(path), "--classify"),
                          f"--prompt_file {path}, line 3: the text is empty")
