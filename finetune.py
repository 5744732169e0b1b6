"""The fine-tuning run of `python train.py`: its texts read, its folder opened (new, or resumed as it was left), and
one loop in which training, evaluation, logging, samples and saves stand side by side, as in nanoGPT's train.py.

A run learns a text (--task lm: the language model's loss on random windows of it) or a labeled file (--task
classify: a head on the last token, train.classify_loss_and_grads), with every weight training, or LoRA adapters
(--lora_rank), or the last blocks alone (--train_blocks): train.trained_names says which tensors train; the
others stay the loader's read-only arrays and AdamW keeps no state for them.

train.py holds the math of a step and touches no file; this file is the run around it. A run's folder (--out)
holds the model in OpenAI's layout (utils.save_model_folder; LoRA's adapters merged into it) or with --save_format
hf in Hugging Face's (utils.save_hf_folder), adapters.npz (the adapters themselves), a classifier's head (head.npz,
or in Hugging Face's layout GPT2ForSequenceClassification's score), train_state.npz (AdamW's moments, the step,
the batches' generator and the run's record: the flags, texts and starting model it began with), log.csv and
loss.png. Every save writes them together, atomically, so --resume goes on from the last save exactly as if the
run had never stopped. Errors a user can meet are ValueErrors that say what to do.
"""
import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import time

import numpy as np

import gpt2
import tasks
import train
from gpt2 import EOT
from store import MODEL_SIZES, settled_folder
from texts import check_is_text, read_text
from utils import ADAPTERS_FILE, is_hf_folder, load_encoder_hparams_and_params, read_adapters, read_head, \
    save_hf_folder, save_model_folder, with_adapters, write_adapters

# The flags that shape a run's weights, and the layout they are saved in: recorded with it, and a resumed run keeps
# them.
RUN_FLAGS = ("task", "lm_weight", "batch_size", "seq_len", "lr", "warmup", "lr_schedule", "min_lr", "decay_steps",
             "weight_decay", "grad_clip", "accumulate", "seed", "lora_rank", "lora_alpha", "lora_targets",
             "train_blocks", "save_format")
BEFORE = {"task": "lm", "lm_weight": 0.0, "lr_schedule": "constant", "min_lr": 0.0, "decay_steps": None,
          "lora_rank": 0, "lora_alpha": None, "lora_targets": "c_attn", "train_blocks": None,
          "save_format": "openai"}  # older records
STATE_FILE = "train_state.npz"  # AdamW's moments, the step, the batches' generator and the run's record
LOG_FILE, PLOT_FILE = "log.csv", "loss.png"
LOG_COLUMNS = ("step", "lr", "train_loss", "val_loss", "tokens_per_s", "seconds", "val_accuracy")
CONFUSION_FILE = "confusion.png"
HEAD_STD = 0.02  # a new head's weights: normal, as Hugging Face's GPT2ForSequenceClassification starts its score
VAL_WINDOWS = 32  # at most this many windows of the validation text are scored at each evaluation
SAMPLE_TOKENS = 40


@dataclasses.dataclass
class Run:
    """What a run holds from one step to the next. Its step is AdamW's own count, state["step"]: one counter."""
    flags: dict  # every flag of train.py; a resumed run's RUN_FLAGS as it began
    out: str  # the folder it saves into
    record: dict  # saved with it: flags, sha256 of the texts, starting model, seconds of training, best val loss
    encoder: object
    hparams: dict
    params: dict  # the model as it trains: trained tensors writable copies (and adapters), frozen ones the loader's
    trainable: dict  # {flat name: array} of what AdamW updates (a classifier's head as "head"), shared with params
    state: dict  # AdamW's: {"step", "m", "v"}, the moments shaped like trainable
    rng: np.random.Generator  # draws each step's windows or texts
    train_data: object  # lm: the text's tokens [n_tokens]; classify: (texts as token lists, labels [n_texts])
    val_data: object  # lm: windows [n_windows, seq_len + 1]; classify: as train_data. The same at every evaluation
    classes: list  # classify: the class names, in class order; lm: None
    vocab_dir: str  # where a save copies encoder.json and vocab.bpe from
    can_plot: bool  # matplotlib is installed

    @property
    def step(self):
        return self.state["step"]


def fine_tune(flags, given):
    """python train.py: a new run, or with --resume the one --out holds, trained up to --steps.
    flags: every flag of train.py; given: the names of those the user gave."""
    run = start_run(flags, given)
    if run.classes is None:
        data = f"{len(run.train_data):,} tokens of {flags['data']} ({len(run.val_data)} validation windows)"
    else:
        data = (f"{len(run.train_data[1]):,} texts of {len(run.classes)} classes of {flags['data']} "
                f"({len(run.val_data[1])} for validation)")
    print(f"fine-tuning {run.record['start']['model']} on {data}, {train_summary(run)}, from step {run.step} to "
          f"{run.flags['steps']}, saving to {run.out}", file=sys.stderr)
    if not run.can_plot:
        print("note: matplotlib is not installed, so there is no loss.png (log.csv has the losses)", file=sys.stderr)
    train_loop(run)
    if run.classes is not None:
        print_report(run)
    if flags["model_only"]:
        drop_state(run)


def train_summary(run):
    """Which numbers train, in a few words: "all 124,439,808 weights", say, or LoRA's."""
    n = sum(array.size for array in run.trainable.values())
    if run.flags["lora_rank"]:
        return f"LoRA adapters of rank {run.flags['lora_rank']} on {run.flags['lora_targets']} ({n:,} numbers train)"
    if run.flags["train_blocks"]:
        blocks = run.flags["train_blocks"]
        return f"the last {'block' if blocks == 1 else f'{blocks} blocks'} and ln_f ({n:,} numbers train)"
    return f"all {n:,} weights"


# ---------------------------------------------------------------------------------------------
# The run's start: texts, folder, model, state

def start_run(flags, given):
    """The run --out holds (--resume) or a new one, everything checked before a file is written: the texts, the
    folder, the model, the texts or windows to learn from and to validate on, what trains, AdamW's state."""
    texts = read_texts(flags)
    out = flags["out"] or default_out(flags)
    record = open_out(out, flags)
    resumed = record is not None
    if resumed:
        check_same_run(record, flags, given, texts, out)
        del record["step"]  # the step is AdamW's, read with its state
    else:
        record = new_record(flags, texts)
    flags = {**flags, **record["flags"]}  # the flags that shape the run, as it began
    encoder, hparams, params, vocab_dir = load_model(flags, record, out, resumed)
    check_model_fits(flags, hparams)
    train_data, val_data, classes = (classify_data if flags["task"] == "classify" else lm_data)(encoder, texts, flags)
    params = with_lora(params, flags, out if resumed else None)
    params, trainable = train.writable_trained(params, train.trained_names(params, flags["train_blocks"]))
    if classes is not None:
        trainable["head"] = read_head(out, hparams["n_embd"])[0].copy() if resumed else \
            new_head(hparams["n_embd"], len(classes), flags["seed"])
    run = Run(flags, out, record, encoder, hparams, params, trainable, train.adamw_state(trainable),
              np.random.default_rng(flags["seed"]), train_data, val_data, classes, vocab_dir, has_matplotlib())
    if resumed:
        load_state(run)
    return run


def read_texts(flags):
    """{"data": the text (or labeled file) to learn, "val_data": the validation one or None}, checked to be text."""
    texts = {}
    for name in ("data", "val_data"):
        texts[name] = None if flags[name] is None else read_text(flags[name], f"--{name}")
        if texts[name] is not None:
            if not texts[name].strip():
                raise ValueError(f"--{name} {flags[name]} holds no text")
            check_is_text(texts[name], f"--{name} {flags[name]}")
    return texts


def sha256(text):
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def model_folder(flags):
    """The starting model's folder: --model_dir, or models_dir/model_size."""
    return flags["model_dir"] or os.path.join(flags["models_dir"], flags["model_size"])


def model_source(flags):
    """The loader's arguments for the starting model."""
    if flags["model_dir"]:
        return {"model_dir": flags["model_dir"]}
    return {"model_size": flags["model_size"], "models_dir": flags["models_dir"]}


def default_out(flags):
    """Where a run goes without --out: beside its starting model, named after the text (models/124M-my_text)."""
    stem = "stdin" if flags["data"] == "-" else os.path.splitext(os.path.basename(flags["data"]))[0] or "data"
    return f"{os.path.normpath(model_folder(flags))}-{stem}"


def index_sha256(model_dir):
    """The weights' identity: the sha256 of OpenAI's checkpoint index, which holds every tensor's CRC32C, or of a
    Hugging Face folder's whole model.safetensors, which holds no checksum ("" if there is neither)."""
    digest = hashlib.sha256()
    try:
        with open(os.path.join(model_dir, "model.safetensors" if is_hf_folder(model_dir) else "model.ckpt.index"),
                  "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):  # a piece at a time: the file may be gigabytes
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def new_record(flags, texts):
    """What a new run records about itself, saved with it: the flags that shape it (settled: a cosine schedule's
    floor and horizon, lr / 10 and --steps unless given; LoRA's alpha, its rank unless given), its texts' sha256,
    its starting model, the seconds spent training and the best validation loss so far."""
    start = model_folder(flags)
    settled = {"min_lr": flags["lr"] / 10 if flags["min_lr"] is None else flags["min_lr"],
               "decay_steps": flags["decay_steps"] or flags["steps"],
               "lora_alpha": flags["lora_alpha"] or flags["lora_rank"] or None}
    return {"flags": {name: settled.get(name, flags[name]) for name in RUN_FLAGS}, "data_sha256": sha256(texts["data"]),
            "val_sha256": sha256(texts["val_data"]), "elapsed": 0.0, "best_val_loss": None,
            "start": {"model": start, "index_sha256": index_sha256(start)}}


def every_weight_trains(flags):
    return not flags["lora_rank"] and not flags["train_blocks"]


def load_model(flags, record, out, resumed):
    """(encoder, hparams, params, the folder a save copies the vocabulary from): the weights the run starts from.
    A new run: the starting model. A resumed run in which every weight trains: the last save. One that trains a
    part: the starting model (its frozen weights; refused if its checkpoint changed since the run began) with the
    last save's trained blocks, copied, so that no array maps a file a save replaces."""
    if not resumed:
        return (*load_encoder_hparams_and_params(**model_source(flags)), model_folder(flags))
    if every_weight_trains(flags):
        return (*load_encoder_hparams_and_params(model_dir=out), out)
    start = record["start"]["model"]
    if index_sha256(start) != record["start"]["index_sha256"]:
        raise ValueError(f"the run in {out} trains part of {start}, whose checkpoint has changed since the run began "
                         "(or is gone), and takes its other weights from it: put it back as it was, or start a new "
                         "--out")
    encoder, hparams, params = load_encoder_hparams_and_params(model_dir=start)
    if not flags["lora_rank"]:  # --train_blocks: the blocks it trains as the last save left them
        _, _, saved = load_encoder_hparams_and_params(model_dir=out)
        params = {**params, "ln_f": train.tree_map(np.array, saved["ln_f"]),
                  "blocks": params["blocks"][:-flags["train_blocks"]] +
                  [train.tree_map(np.array, block) for block in saved["blocks"][-flags["train_blocks"]:]]}
    return encoder, hparams, params, start


def check_model_fits(flags, hparams):
    if flags["seq_len"] > hparams["n_ctx"]:
        raise ValueError(f"--seq_len {flags['seq_len']} is longer than the model's context of {hparams['n_ctx']}")
    if flags["train_blocks"] and flags["train_blocks"] > hparams["n_layer"]:
        raise ValueError(f"--train_blocks {flags['train_blocks']} is more than the model's {hparams['n_layer']} "
                         "blocks: give at most that (or leave it out to train every weight)")


def with_lora(params, flags, out):
    """params with the run's LoRA adapters, if it has them: those a resumed run saved in out (adapters.npz), or new
    ones (train.add_lora, in the last --train_blocks blocks if given)."""
    if not flags["lora_rank"]:
        return params
    if out is not None:
        return with_adapters(params, *read_adapters(out)[:3], os.path.join(out, ADAPTERS_FILE))
    n_layer, last = len(params["blocks"]), flags["train_blocks"]
    try:
        return train.add_lora(params, flags["lora_rank"], flags["lora_alpha"], flags["lora_targets"].split(","),
                              None if last is None else range(n_layer - last, n_layer), rng=flags["seed"])
    except ValueError as e:  # a rank the weights cannot take
        raise ValueError(f"--lora_rank {flags['lora_rank']} does not fit this model: {e}") from None


def new_head(n_embd, n_classes, seed):  # -> [n_embd, n_classes]
    return np.random.default_rng(seed).normal(0, HEAD_STD, (n_embd, n_classes)).astype(np.float32)


def lm_data(encoder, texts, flags):
    """--task lm: the training text's tokens, the validation windows, no classes."""
    train_tokens, val_tokens = split_tokens(encoder, texts["data"], texts["val_data"], flags["seq_len"])
    return train_tokens, train.eval_windows(val_tokens, flags["seq_len"], VAL_WINDOWS), None


def classify_data(encoder, texts, flags):
    """--task classify: (token lists, labels) to train on and to validate on, and the classes. Without --val_data
    a seeded 10% of each class is held out. A text longer than --seq_len keeps its last --seq_len tokens."""
    name = f"--data {flags['data']}"
    rows = tasks.read_labeled(flags["data"], "--data", text=texts["data"])
    classes = tasks.classes_of(rows, name)
    ids, labels = [encoder.encode(text) for _, text, _ in rows], tasks.class_indices(rows, classes, name)
    if texts["val_data"] is not None:
        val_rows = tasks.read_labeled(flags["val_data"], "--val_data", text=texts["val_data"])
        val = ([encoder.encode(text) for _, text, _ in val_rows],
               tasks.class_indices(val_rows, classes, f"--val_data {flags['val_data']}"))
        training = (ids, labels)
    else:
        kept, held = tasks.held_out(labels, 0.1, flags["seed"])
        training, val = ([ids[i] for i in kept], labels[kept]), ([ids[i] for i in held], labels[held])
    missing = [classes[c] for c in range(len(classes)) if c not in training[1]]
    if missing:
        raise ValueError(f"{name}: no text of class {missing[0]!r} is left to train on once 10% of each class is "
                         "held out for validation: give more texts of it, or --val_data")
    return cut(training, flags["seq_len"]), cut(val, flags["seq_len"]), classes


def cut(data, seq_len):
    """(texts, labels) with each text's last seq_len tokens, saying how many were longer."""
    texts, labels = data
    longer = sum(len(text) > seq_len for text in texts)
    if longer:
        print(f"note: {longer} of {len(texts)} texts are longer than --seq_len {seq_len} tokens: each keeps its "
              f"last {seq_len}", file=sys.stderr)
    return [text[-seq_len:] for text in texts], labels


def open_out(out, flags):
    """The record of the run saved in --out (None if it holds none), after checking that out may hold this run:
    a new or empty folder, or with --resume an earlier run's. A folder holding only the log of a run stopped
    before its first save is taken over by a new run, saying so."""
    start = model_folder(flags)
    if os.path.exists(out) and os.path.exists(start) and os.path.samefile(out, start):
        raise ValueError(f"--out {out} is the starting model's folder: choose another, e.g. --out {default_out(flags)}")
    if os.path.basename(os.path.normpath(out)) in MODEL_SIZES:
        raise ValueError(f"--out {out} is named as OpenAI's downloads are: choose another folder")
    record, names = None, os.listdir(out) if os.path.isdir(out) else []
    if names:
        with settled_folder(out):  # a save cut short is finished or undone, a killed run's lock file removed
            record = read_record(out)
        names = os.listdir(out)
    log_only = bool(names) and set(names) <= {LOG_FILE, PLOT_FILE}
    if flags["resume"] and record is None:
        why = "it stopped before its first save" if log_only else f"{STATE_FILE} is missing"
        raise ValueError(f"--resume: {out} holds no saved run of train.py ({why}): leave out --resume to start one")
    if not flags["resume"] and record is not None:
        raise ValueError(f"--out {out} holds a run of train.py (at step {record['step']}): add --resume to go on "
                         "with it, or choose another --out")
    if log_only and not flags["resume"]:
        print(f"note: {out} holds only the log of a run stopped before its first save: starting afresh there",
              file=sys.stderr)
        for name in names:
            os.remove(os.path.join(out, name))
    elif not flags["resume"] and os.path.exists(out) and (not os.path.isdir(out) or names):
        raise ValueError(f"--out {out} is not a new or empty folder: choose another")
    return record


def read_record(out):
    """The record of the run saved in out, with its "step", or None if out holds no run."""
    path = os.path.join(out, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as state:
            record = {**json.loads(str(state["record"])), "step": int(state["step"])}
    except (OSError, ValueError, KeyError):
        raise ValueError(f"{path} is truncated or corrupt: this run cannot be resumed") from None
    record["flags"] = {**BEFORE, **record["flags"]}
    return record


def check_same_run(record, flags, given, texts, out):
    """A resumed run goes on with what it began with: the same flags that shape it, the same texts, the same
    starting model if one is named again; and it has steps left to take."""
    for name in set(given) & set(RUN_FLAGS):
        if flags[name] != record["flags"][name]:
            raise ValueError(f"--{name} {flags[name]} is not the {record['flags'][name]} that the run in {out} "
                             f"began with: leave out --{name} to go on with it, or start a new --out")
    for name, key in (("data", "data_sha256"), ("val_data", "val_sha256")):
        if sha256(texts[name]) != record[key]:
            raise ValueError(f"the run in {out} learned from another --{name}" + (
                ": give it again" if texts[name] is None else " (its sha256 differs): give the same file, "
                                                              "or start a new --out"))
    named = [name for name in given if name in ("model_size", "models_dir", "model_dir")]
    if named and index_sha256(model_folder(flags)) != record["start"]["index_sha256"]:
        raise ValueError(f"{' '.join('--' + name for name in named)} do not name the model the run in {out} "
                         f"started from ({record['start']['model']}): leave them out to go on with it")
    if record["step"] >= flags["steps"]:
        raise ValueError(f"the run in {out} is at step {record['step']} already: give --steps above "
                         f"{record['step']} to go on")


def split_tokens(encoder, text, val_text, seq_len):  # -> train, validation: [n_tokens] each
    """The text's token ids, the last 10% held out for validation unless a validation text is given, each
    part long enough for one window of seq_len + 1 tokens."""
    tokens = np.array(encoder.encode(text), np.int64)
    if val_text is None:
        n_train = len(tokens) - len(tokens) // 10
        parts = {"training": tokens[:n_train], "validation": tokens[n_train:]}
    else:
        parts = {"training": tokens, "validation": np.array(encoder.encode(val_text), np.int64)}
    fits = min(len(part) for part in parts.values()) - 1
    for name, part in parts.items():
        if len(part) < seq_len + 1:
            split = "" if val_text is not None else f" of the {len(tokens):,} in --data (the last 10% are held out)"
            fix = f"use --seq_len {fits} or less" if fits >= 1 else "give a longer text"
            raise ValueError(f"the {name} part has {len(part):,} tokens{split}, too few for one window of "
                             f"--seq_len {seq_len} + 1: {fix}")
    return parts["training"], parts["validation"]


def load_state(run):
    """AdamW's moments, the step and the batches' generator as the last save left them; log.csv's rows of later
    steps dropped (the resumed run takes those steps again)."""
    path = os.path.join(run.out, STATE_FILE)
    with np.load(path) as saved:
        try:
            for key in ("m", "v"):
                run.state[key] = {name: saved[f"{key}/{name}"] for name in run.trainable}
        except KeyError as e:
            raise ValueError(f"{path} holds no moments of {e}: this run cannot be resumed") from None
        run.rng.bit_generator.state = json.loads(str(saved["rng"]))
        run.state["step"] = int(saved["step"])
    trim_log(run.out, run.step)


def has_matplotlib():
    return importlib.util.find_spec("matplotlib") is not None


# ---------------------------------------------------------------------------------------------
# The loop

def train_loop(run):
    """From run.step to --steps. After each step, side by side, what falls due at it: the validation loss (every
    --eval_every steps and at the end), a row of log.csv, a sample of text (every --sample_every steps and at the
    end, when it learns a text),
    a save (every --save_every steps and at the end; with --keep_best, whenever the validation loss improves).
    A tqdm bar on stderr shows the loss, tokens/s and the time left; notes are written through it."""
    from tqdm import tqdm

    flags = run.flags
    with tqdm(total=flags["steps"], initial=run.step, desc="fine-tuning", unit="step", dynamic_ncols=True) as bar:
        try:
            if run.step == 0:
                log_row(run, bar, val=evaluate(run, bar))
            while run.step < flags["steps"]:
                lr = train.learning_rate(run.step + 1, *(flags[name] for name in ("lr", "warmup", "lr_schedule",
                                                                                  "min_lr", "decay_steps")))
                loss, tokens_per_s = take_step(run, lr)
                step, last = run.step, run.step == flags["steps"]
                bar.set_postfix(loss=f"{loss:.3f}", tokens_per_s=f"{tokens_per_s:.0f}")
                bar.update()
                val = evaluate(run, bar) if every(step, flags["eval_every"]) or last else None
                log_row(run, bar, lr, loss, val, tokens_per_s)
                if (every(step, flags["sample_every"]) or last) and run.classes is None:
                    print_sample(run, bar)
                if val and val["best"] if flags["keep_best"] else every(step, flags["save_every"]) or last:
                    save_run(run, bar)
        except KeyboardInterrupt:
            bar.close()
            print(f"interrupted at step {run.step}: {last_save(run)}", file=sys.stderr)
            raise
        except FloatingPointError as e:
            raise ValueError(f"step {run.step} went wrong ({e}): the learning rate is too high for this "
                             f"text and model, so lower --lr (it is {flags['lr']:g}); {last_save(run)}") from None
    if flags["keep_best"]:
        print(f"the best validation loss was {run.record['best_val_loss']:.4f}: {last_save(run)}", file=sys.stderr)


def every(step, period):
    return period > 0 and step % period == 0


def take_step(run, lr):
    """One AdamW step on the mean gradient of --accumulate batches, timed: (loss, tokens per second).
    FloatingPointError (before any weight is saved) if the loss or the gradients are not finite."""
    flags, tokens = run.flags, []
    start = time.perf_counter()
    with np.errstate(all="ignore"):  # a step that goes non-finite is reported as a whole, not op by op
        loss, grads = train.mean_of(batch_loss_and_grads(run, tokens) for _ in range(flags["accumulate"]))
        train.adamw_step(run.trainable, grads, run.state, loss, lr, flags["weight_decay"], flags["grad_clip"] or None)
    seconds = time.perf_counter() - start
    run.record["elapsed"] += seconds
    return loss, sum(tokens) / seconds


def batch_loss_and_grads(run, tokens):
    """The loss of one batch the run draws (random windows of the text, or random labeled texts) and its gradients
    {name: gradient} for what trains; the batch's tokens are added to the list `tokens`."""
    flags, n_head, trained = run.flags, run.hparams["n_head"], set(run.trainable) - {"head"}
    if run.classes is None:
        inputs, targets = train.get_batch(run.train_data, flags["batch_size"], flags["seq_len"], run.rng)
        tokens.append(inputs.size)
        return train.loss_and_grads(inputs, targets, run.params, n_head, trained=trained)
    texts, labels = run.train_data
    rows = run.rng.integers(0, len(texts), flags["batch_size"])
    batch = [texts[i] for i in rows]
    tokens.append(sum(map(len, batch)))
    loss, grads, dw = train.classify_loss_and_grads(batch, labels[rows], run.params, run.trainable["head"], n_head,
                                                    flags["lm_weight"], trained=trained)
    return loss, {**grads, "head": dw}


def model(run):
    """The run's model as gpt2.py's functions take it: LoRA's adapters merged into their weights."""
    return train.merge_lora(run.params) if run.flags["lora_rank"] else run.params


def evaluate(run, bar):
    """{"loss": the validation loss, "accuracy": a classifier's (None for a text), "best": whether the loss is the
    run's best yet}, on the same windows or texts every time, printed through the bar. The record keeps the best
    loss (the starting model's, at step 0, counts)."""
    val = {"loss": None, "accuracy": None, "best": False}
    if run.classes is None:
        val["loss"] = train.evaluate(run.val_data, model(run), run.hparams["n_head"], run.flags["batch_size"])
    else:
        labels, probs = run.val_data[1], validation_probabilities(run)
        val["loss"] = float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-300)).mean())
        val["accuracy"] = float((probs.argmax(axis=1) == labels).mean())
    accuracy = "" if val["accuracy"] is None else f", accuracy {val['accuracy']:.4f}"
    bar.write(f"step {run.step}: validation loss {val['loss']:.4f}{accuracy}")
    best = run.record["best_val_loss"]
    if best is None or val["loss"] < best:
        run.record["best_val_loss"], val["best"] = val["loss"], True
    return val


def validation_probabilities(run):  # -> [n_texts, n_classes]
    return gpt2.classify(run.val_data[0], model(run), run.trainable["head"], run.hparams["n_head"])


def log_row(run, bar, lr=None, loss=None, val=None, tokens_per_s=None):
    """Append the step's row to log.csv (and draw loss.png again after a validation loss)."""
    val = val or {}
    row = [run.step, lr, loss, val.get("loss"), tokens_per_s, run.record["elapsed"], val.get("accuracy")]
    path = os.path.join(run.out, LOG_FILE)
    os.makedirs(run.out, exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(",".join(LOG_COLUMNS) + "\n")
        f.write(",".join("" if value is None else f"{value:.6g}" for value in row) + "\n")
    if val and run.can_plot:
        plot_losses(run.out)


def trim_log(out, step):
    """Drop log.csv's rows after `step`: they are of steps a resumed run takes again. (A log of an older version,
    with fewer columns, gets today's header; its rows leave the new columns empty.)"""
    path = os.path.join(out, LOG_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            _, *rows = f.read().splitlines()
        kept = [row + "," * (len(LOG_COLUMNS) - 1 - row.count(",")) for row in rows
                if row.split(",")[0].isdigit() and int(row.split(",")[0]) <= step]
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join([",".join(LOG_COLUMNS), *kept]) + "\n")


def print_sample(run, bar):
    """A short sample from <|endoftext|>, the same draw at every step, so that a person sees the model change."""
    ids = gpt2.generate([EOT], model(run), run.hparams["n_head"], min(SAMPLE_TOKENS, run.hparams["n_ctx"]),
                        temperature=0.8, top_k=40, seed=run.flags["seed"])
    bar.write(f"step {run.step}, a sample: {run.encoder.decode(ids)!r}")


def save_run(run, bar):
    """The model in OpenAI's layout, or Hugging Face's with --save_format hf (LoRA's adapters merged in; a
    classifier's head as head.npz or as GPT2ForSequenceClassification's score), the adapters beside it
    (adapters.npz), and the state a resumed run needs, as one save (utils.save_model_folder, save_hf_folder: a
    process killed while saving leaves the previous save or this one). Weights that are not finite are never
    saved: FloatingPointError."""
    if not all(np.isfinite(array).all() for array in run.trainable.values()):
        raise FloatingPointError("some weights are not finite")
    flags, extra = run.flags, {STATE_FILE: lambda path: write_state(path, run)}
    if flags["lora_rank"]:
        extra[ADAPTERS_FILE] = lambda path: write_adapters(path, run.params, flags["lora_rank"], flags["lora_alpha"],
                                                           flags["lora_targets"].split(","))
    head = None if run.classes is None else (run.trainable["head"], run.classes)
    save = save_hf_folder if flags["save_format"] == "hf" else save_model_folder
    save(run.out, model(run), run.hparams, run.vocab_dir, extra, head=head)
    run.vocab_dir = run.out
    bar.write(f"step {run.step}: saved to {run.out}")


def write_state(path, run):
    """train_state.npz: AdamW's moments under the names of what trains, the step, the generator and the record."""
    moments = {f"{key}/{name}": array for key in ("m", "v") for name, array in run.state[key].items()}
    with open(path, "wb") as f:
        np.savez(f, step=run.step, rng=json.dumps(run.rng.bit_generator.state), record=json.dumps(run.record),
                 **moments)


def last_save(run):
    """What --out holds, read from it once a save that was cut short is finished or undone."""
    record = None
    if os.path.isdir(run.out):
        with settled_folder(run.out):
            record = read_record(run.out)
    if record is None:
        return "nothing was saved" + ("" if run.flags["keep_best"] and run.step == run.flags["steps"] else " yet")
    return f"{run.out} holds step {record['step']}, the last save (--resume goes on from it)"


def plot_losses(out):
    """loss.png beside log.csv: the training and validation losses by step."""
    from matplotlib.figure import Figure

    with open(os.path.join(out, LOG_FILE), encoding="utf-8") as f:
        rows = [dict(zip(LOG_COLUMNS, line.split(","))) for line in f.read().splitlines()[1:]]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for column, label in (("train_loss", "training"), ("val_loss", "validation")):
        points = [(int(row["step"]), float(row[column])) for row in rows if row.get(column)]
        if points:
            ax.plot(*zip(*points), marker="o" if column == "val_loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.legend()
    path = os.path.join(out, PLOT_FILE)
    fig.savefig(path + ".tmp", format="png")
    os.replace(path + ".tmp", path)


def print_report(run):
    """The end of a classifier's run: accuracy, each class's precision, recall and F1, and the confusion matrix of
    the validation texts, printed and drawn as confusion.png beside loss.png."""
    counts = tasks.confusion_matrix(run.val_data[1], validation_probabilities(run).argmax(axis=1), len(run.classes))
    print(f"on the {len(run.val_data[1])} validation texts at step {run.step}:\n" + tasks.report(counts, run.classes))
    if run.can_plot:
        tasks.plot_confusion(counts, run.classes, os.path.join(run.out, CONFUSION_FILE))


def drop_state(run):
    """--model_only: train_state.npz removed once the run is over (AdamW's moments take twice the model's size);
    the folder keeps the model alone, which can no longer be resumed."""
    path = os.path.join(run.out, STATE_FILE)
    if os.path.exists(path):
        size = os.path.getsize(path)
        os.remove(path)
        print(f"--model_only: removed {path} ({size / 2**20:,.0f} MiB); {run.out} holds the model alone, which "
              "cannot be resumed", file=sys.stderr)
