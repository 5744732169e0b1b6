"""Tasks: labeled files read, their classes, and the scores a user judges a classifier by.

A labeled file is a CSV file whose header row names a `text` and a `label` column (other columns are ignored;
Python's csv rules, so a quoted field may hold commas and newlines), or a JSON Lines file (`.jsonl`) of objects
with "text" and "label". It is UTF-8. Labels are strings as written; the classes of a task are the distinct
labels of its training file, in sorted order. Errors name the file and the line a bad row starts on.

The command lines (gpt2.py --classify and --choices) and the fine-tuning run (train.py --task classify) read
and score labeled texts here; gpt2.py reads a trained classifier's head here, and builds the prompts and choices
of zero- and few-shot tasks here.
"""
import csv
import io
import json
import os

import numpy as np

from texts import read_text


def read_labeled(path, flag, need_labels=True, text=None):
    """[(line, text, label)] of a labeled file (see above), line being where the row starts in the file and label
    None where the file has no label column (allowed unless need_labels). flag names the file in errors, e.g.
    "--data". text: the file's text if it was read already."""
    name = "stdin" if path == "-" else f"{flag} {path}"
    text = read_text(path, flag) if text is None else text
    rows = json_lines(text, name) if path.endswith(".jsonl") else csv_rows(text, name, need_labels)
    if not rows:
        raise ValueError(f"{name} holds no labeled texts: give a CSV file with a header row naming text and label, "
                         "or a .jsonl file of {\"text\": ..., \"label\": ...} objects")
    for line, text, label in rows:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name}, line {line}: the text is empty")
        if need_labels and (label is None or label == ""):
            raise ValueError(f"{name}, line {line}: the label is missing")
    return rows


def csv_rows(text, name, need_labels):
    """read_labeled's rows of a CSV file."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # strict: a stray quote is an error, not a merge
    line = 1
    try:
        header = next(reader, [])
        columns = {column.strip().lower(): i for i, column in enumerate(header)}
        if "text" not in columns or need_labels and "label" not in columns:
            needed = "text and label columns" if need_labels else "a text column"
            raise ValueError(f"{name}: its first row must name {needed} (it is {','.join(header)!r})")
        rows = []
        while True:
            line = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                return rows
            if row:  # a blank line holds no row
                if len(row) < len(header):
                    raise ValueError(f"{name}, line {line}: {len(row)} fields where the header has {len(header)}")
                label = row[columns["label"]].strip() if "label" in columns else None
                rows.append((line, row[columns["text"]], label))
    except csv.Error as e:
        raise ValueError(f"{name}, line {line}: not CSV ({e}): check its quotes") from None


def json_lines(text, name):
    """read_labeled's rows of a JSON Lines file."""
    rows = []
    for line, row in enumerate(text.split("\n"), 1):
        if not row.strip():
            continue
        try:
            item = json.loads(row)
        except ValueError as e:
            raise ValueError(f"{name}, line {line}: not JSON ({e.msg})") from None
        if not isinstance(item, dict) or "text" not in item:
            raise ValueError(f"{name}, line {line}: not an object with \"text\" (and \"label\")")
        label = item.get("label")
        rows.append((line, item["text"], None if label is None else str(label)))
    return rows


def classes_of(rows, name):
    """The classes of a training file: its distinct labels, sorted. A task needs two at least."""
    classes = sorted({label for _, _, label in rows})
    if len(classes) < 2:
        raise ValueError(f"{name} has one class only ({classes[0]!r}): a classifier needs texts of two or more")
    return classes


def class_indices(rows, classes, name):
    """Each row's label as its index in classes; a label training never saw is an error naming its line."""
    index = {label: i for i, label in enumerate(classes)}
    for line, _, label in rows:
        if label not in index:
            raise ValueError(f"{name}, line {line}: the label {label!r} is not one of the training file's classes "
                             f"({', '.join(map(repr, classes))})")
    return np.array([index[label] for _, _, label in rows], np.int64)


def held_out(labels, fraction, seed):  # [n] -> train indices, validation indices
    """A seeded `fraction` of each class's rows (one at least) held out for validation, the rest to train on."""
    rng, val = np.random.default_rng(seed), []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        val.extend(rng.choice(rows, max(1, round(fraction * len(rows))), replace=False))
    val = np.sort(np.array(val, np.int64))
    return np.setdiff1d(np.arange(len(labels)), val), val


def confusion_matrix(truth, predicted, n_classes):  # [n], [n] -> [n_classes, n_classes]
    """counts[i, j]: texts of class i predicted as class j."""
    counts = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(counts, (truth, predicted), 1)
    return counts


def report(counts, classes):
    """The scores of a confusion matrix as text: accuracy, each class's precision, recall and F1, and the
    matrix itself (rows the true class, columns the predicted one)."""
    n = counts.sum()
    lines = [f"accuracy {np.trace(counts) / n:.4f} ({np.trace(counts)} of {n})", "",
             f"{'class':20} {'precision':>9} {'recall':>9} {'f1':>9} {'texts':>6}"]
    for i, label in enumerate(classes):
        predicted, true = counts[:, i].sum(), counts[i].sum()
        precision = counts[i, i] / predicted if predicted else 0.0
        recall = counts[i, i] / true if true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        lines.append(f"{label[:20]:20} {precision:9.4f} {recall:9.4f} {f1:9.4f} {true:6d}")
    width = max(6, *(len(label[:12]) for label in classes))
    lines += ["", "confusion (rows: true class, columns: predicted)",
              " " * 13 + " ".join(f"{label[:12]:>{width}}" for label in classes)]
    lines += [f"{label[:12]:12} " + " ".join(f"{count:{width}d}" for count in row) for label, row in zip(classes, counts)]
    return "\n".join(lines)


def plot_confusion(counts, classes, path):
    """The confusion matrix drawn as a picture at path (matplotlib), written whole or not at all."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.5 + 0.6 * len(classes), 1.2 + 0.6 * len(classes)))
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > counts.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path + ".tmp", format="png")
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------------------------------------
# Zero- and few-shot prompts: a task told in words, answered by the likeliest choice

def fill(template, text):
    """The template with {text} replaced by the text (other braces are left as they are)."""
    return template.replace("{text}", text)


def few_shot_prompt(template, examples, text):
    """GPT-3's K-shot prompt: each example (text, label) written as its filled template, a space, its label and a
    blank line, then the filled template of the text to answer. No examples: the filled template alone."""
    shots = "".join(f"{fill(template, shot)} {label}\n\n" for shot, label in examples)
    return shots + fill(template, text)


def draw_shots(examples, k, rng, asked=None):
    """k of the examples (text, label), drawn without replacement, in the order drawn; never one whose text is the
    one asked about (when the examples come from its own file, as lm-evaluation-harness leaves it out too)."""
    pool = [example for example in examples if example[0] != asked]
    if k > len(pool):
        raise ValueError(f"{k} examples are asked for and there are {len(pool)} to draw from (the text asked about "
                         "is never one of them)")
    return [pool[i] for i in rng.choice(len(pool), k, replace=False)]


def continuation_ids(encoder, context, choices):
    """(context ids, [each choice's ids]) as lm-evaluation-harness tokenizes a choice after a context: the choice
    follows one space; whitespace that ends the context is moved to the start of the continuation; the
    continuation's ids are those of encode(context + " " + choice) after the context's own. GPT-2's pre-tokenizer
    never joins a space to the characters before it, so these are encode(" " + choice) whenever the context ends
    in no whitespace. An empty context is <|endoftext|>, as GPT-2 saw a document begin."""
    stripped = context.rstrip()
    context_ids = encoder.encode(stripped)
    continuations = [encoder.encode(stripped + context[len(stripped):] + " " + choice)[len(context_ids):]
                     for choice in choices]
    return context_ids or [encoder.eot_id], continuations
