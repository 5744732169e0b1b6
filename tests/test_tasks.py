"""tasks.py: labeled files read (CSV and JSON Lines, every bad row named by its line), a task's classes, the seeded
hold-out, the confusion matrix and its report against counts written out by hand, a trained head read from
head.npz, and the prompts and choice tokens of zero- and few-shot tasks."""
import string

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tasks


def write(tmp_path, name, text, bom=False):
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return str(path)


# ---------------------------------------------------------------------------------------------
# Labeled files

def test_csv_quoted_commas_and_newlines_other_columns_a_bom_and_blank_lines(tmp_path):
    text = ('id,Text,source,label\n'
            '7,"Good, very good",web, positive \n'
            '\n'
            '8,"Two\nlines, and ""quotes""",book,negative\n'
            '\r\n'
            '9,plain,web,negative\n')
    path = write(tmp_path, "reviews.csv", text, bom=True)
    assert tasks.read_labeled(path, "--data") == [
        (2, "Good, very good", "positive"),  # the label's spaces go, the text is as written
        (4, 'Two\nlines, and "quotes"', "negative"),
        (7, "plain", "negative"),  # lines 3 and 6 are blank; the row of line 4 ends on line 5
    ]


def test_csv_without_a_label_column_when_labels_are_optional(tmp_path):
    path = write(tmp_path, "texts.csv", "text\nfirst\nsecond\n")
    assert tasks.read_labeled(path, "--prompt_file", need_labels=False) == [(2, "first", None), (3, "second", None)]


def test_json_lines_with_blank_lines_and_labels_of_any_kind(tmp_path):
    path = write(tmp_path, "reviews.jsonl", '{"text": "fine", "label": "pos", "id": 3}\n\n'
                                            '{"label": 0, "text": "a\\nb"}\r\n{"text": "no label"}\n')
    assert tasks.read_labeled(path, "--data", need_labels=False) == [(1, "fine", "pos"), (3, "a\nb", "0"),
                                                                     (4, "no label", None)]


@pytest.mark.parametrize("name, text, message", [
    ("a.csv", "text,score\nfine,1\n", "--data a.csv: its first row must name text and label columns (it is "
                                      "'text,score')"),
    ("a.csv", "Just some prose, not a table.\n", "its first row must name text and label columns"),
    ("a.csv", "", "its first row must name text and label columns (it is '')"),
    ("a.csv", "text,label\n", "--data a.csv holds no labeled texts"),
    ("a.csv", "text,label,id\nfine,pos,1\n\nbad,neg\n", "--data a.csv, line 4: 2 fields where the header has 3"),
    ("a.csv", "text,label\nfine,pos\n  ,neg\n", "--data a.csv, line 3: the text is empty"),
    ("a.csv", "text,label\nfine,pos\nok,\n", "--data a.csv, line 3: the label is missing"),
    ("a.csv", 'text,label\nfine,pos\n"open,neg\nnext,pos\n', "--data a.csv, line 3: not CSV (unexpected end of data)"),
    ("a.csv", 'text,label\n"a"b,pos\n', "--data a.csv, line 2: not CSV"),
    ("a.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n', "--data a.jsonl, line 2: not JSON"),
    ("a.jsonl", '\n["a", "x"]\n', "--data a.jsonl, line 2: not an object with \"text\""),
    ("a.jsonl", '{"label": "x"}\n', "--data a.jsonl, line 1: not an object with \"text\""),
    ("a.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', "--data a.jsonl, line 2: the label is missing"),
    ("a.jsonl", '{"text": "", "label": "x"}\n', "--data a.jsonl, line 1: the text is empty"),
])
def test_every_bad_file_names_its_line(tmp_path, monkeypatch, name, text, message):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, name, text)
    with pytest.raises(ValueError) as error:
        tasks.read_labeled(name, "--data")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_file_that_is_not_utf8_or_not_there(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"text,label\ncaf\xe9,x\n")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        tasks.read_labeled(str(path), "--data")
    with pytest.raises(ValueError, match="cannot read --data"):
        tasks.read_labeled(str(tmp_path / "missing.csv"), "--data")


def test_classes_are_the_sorted_labels_and_need_two():
    rows = [(2, "a", "pos"), (3, "b", "neg"), (4, "c", "pos")]
    assert tasks.classes_of(rows, "--data t.csv") == ["neg", "pos"]
    with pytest.raises(ValueError, match="--data t.csv has one class only \\('pos'\\)"):
        tasks.classes_of(rows[::2], "--data t.csv")


def test_class_indices_and_a_label_training_never_saw():
    rows = [(2, "a", "pos"), (3, "b", "neg"), (5, "c", "meh")]
    assert tasks.class_indices(rows[:2], ["neg", "pos"], "--val_data v.csv").tolist() == [1, 0]
    with pytest.raises(ValueError) as error:
        tasks.class_indices(rows, ["neg", "pos"], "--val_data v.csv")
    assert "--val_data v.csv, line 5: the label 'meh' is not one of the training file's classes ('neg', 'pos')" \
        in str(error.value)


def test_held_out_takes_a_seeded_share_of_each_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1 + [0] * 10)  # 20, 3 and 1 texts
    train, val = tasks.held_out(labels, 0.25, seed=4)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))  # each row once
    assert np.bincount(labels[val], minlength=3).tolist() == [5, 1, 1]  # round(0.25 n), one at least
    again, other = tasks.held_out(labels, 0.25, seed=4)[1], tasks.held_out(labels, 0.25, seed=5)[1]
    assert again.tolist() == val.tolist() and other.tolist() != val.tolist()


def test_confusion_matrix_and_report_against_counts_by_hand():
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    guess = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2])
    counts = tasks.confusion_matrix(truth, guess, 4)  # a fourth class no text has
    assert counts.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 3, 0], [0, 0, 0, 0]]
    lines = tasks.report(counts, ["cat", "dog", "fish", "owl"]).splitlines()
    assert lines[0] == "accuracy 0.6667 (6 of 9)"
    # cat: precision 2/3, recall 2/3; dog: 1/2, 1/2; fish: 3/4, 3/4; owl: none predicted, none true
    assert lines[3].split() == ["cat", "0.6667", "0.6667", "0.6667", "3"]
    assert lines[4].split() == ["dog", "0.5000", "0.5000", "0.5000", "2"]
    assert lines[5].split() == ["fish", "0.7500", "0.7500", "0.7500", "4"]
    assert lines[6].split() == ["owl", "0.0000", "0.0000", "0.0000", "0"]
    assert [line.split() for line in lines[-4:]] == [["cat", "2", "1", "0", "0"], ["dog", "0", "1", "1", "0"],
                                                     ["fish", "1", "0", "3", "0"], ["owl", "0", "0", "0", "0"]]


def test_plot_confusion_writes_a_png_whole(tmp_path):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "confusion.png")
    tasks.plot_confusion(np.array([[3, 1], [0, 2]]), ["neg", "pos"], path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png"]


# ---------------------------------------------------------------------------------------------
# Zero- and few-shot prompts

def test_a_few_shot_prompt_is_written_exactly_as_gpt3s():
    template = "Review: {text}\nSentiment:"
    examples = [("a joy {text} to watch", "positive"), ("dull", "negative")]
    assert tasks.few_shot_prompt(template, examples, "not bad {at all}") == (
        "Review: a joy {text} to watch\nSentiment: positive\n\n"  # a text's own braces are left alone
        "Review: dull\nSentiment: negative\n\n"
        "Review: not bad {at all}\nSentiment:")
    assert tasks.few_shot_prompt(template, [], "fine") == "Review: fine\nSentiment:"
    assert tasks.few_shot_prompt("{text} {text}?", [], "x") == "x x?"


def test_shots_are_drawn_without_replacement_and_seeded():
    examples = [(f"text {i}", "pos" if i % 2 else "neg") for i in range(10)]
    first = tasks.draw_shots(examples, 4, np.random.default_rng(1))
    assert len(set(first)) == 4 and set(first) <= set(examples)
    assert tasks.draw_shots(examples, 4, np.random.default_rng(1)) == first
    assert tasks.draw_shots(examples, 4, np.random.default_rng(2)) != first
    for seed in range(20):  # drawn from its own file, a text is never its own example
        assert ("text 3", "pos") not in tasks.draw_shots(examples, 9, np.random.default_rng(seed), "text 3")
    with pytest.raises(ValueError, match="10 examples are asked for and there are 9 to draw from"):
        tasks.draw_shots(examples, 10, np.random.default_rng(0), "text 3")


def lm_eval_pair(encoder, context, choice):
    """lm-evaluation-harness's tokenization of a context and a continuation (" " + choice), written out again."""
    continuation = " " + choice
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole, context_ids = encoder.encode(context + continuation), encoder.encode(context)
    return context_ids, whole[len(context_ids):]


TEXT = st.text(alphabet=st.sampled_from(list(string.ascii_letters + string.digits + " \n\t'.:,!?-") +
                                        ["é", "ß", "猫", "\u00a0", "\u2028", "\x1f", "🙂"]), max_size=24)


@given(context=TEXT, choice=TEXT.filter(str.strip))
def test_choice_tokens_are_lm_evaluation_harness(tiny, context, choice):
    """Against the harness's own steps; the context's ids start the whole text's (so prompt + choice is the text
    the model reads), and the choice's are encode(" " + choice) whenever the context ends in no whitespace."""
    encoder = tiny[0]
    context_ids, (continuation,) = tasks.continuation_ids(encoder, context, [choice])
    theirs = lm_eval_pair(encoder, context, choice)
    assert context_ids == (theirs[0] or [encoder.eot_id]) and continuation == theirs[1]
    if context.rstrip():
        assert encoder.encode(context.rstrip() + context[len(context.rstrip()):] + " " + choice)[:len(context_ids)] \
            == context_ids
    if context == context.rstrip():
        assert continuation == encoder.encode(" " + choice)


def test_whitespace_ending_the_context_starts_every_choice(tiny):
    encoder = tiny[0]
    context_ids, continuations = tasks.continuation_ids(encoder, "Sentiment:\n", ["positive", "negative"])
    assert context_ids == encoder.encode("Sentiment:")
    assert continuations == [encoder.encode("\n positive"), encoder.encode("\n negative")]
    assert continuations[0] != encoder.encode(" positive")
    assert tasks.continuation_ids(encoder, "", ["yes"]) == ([encoder.eot_id], [encoder.encode(" yes")])
