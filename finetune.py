"""The fine-tuning run of `python train.py`: its texts read, its folder opened (new, or resumed as it was left), and
one loop in which training, evaluation, logging, samples and saves stand side by side, as in nanoGPT's train.py.

train.py holds the math of a step and touches no file; this file is the run around it. A run's folder (--out)
holds the model in OpenAI's layout (utils.save_model_folder), train_state.npz (AdamW's moments, the step, the
batches' generator and the run's record: the flags, texts and starting model it began with), log.csv and
loss.png. Every save writes the model and train_state.npz together, atomically, so --resume goes on from the
last save exactly as if the run had never stopped. Errors a user can meet are ValueErrors that say what to do.
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
import train
from gpt2 import EOT
from store import MODEL_SIZES, settled_folder
from texts import check_is_text, read_text
from utils import flatten, load_encoder_hparams_and_params, save_model_folder, unflatten

# The flags that shape a run's weights: recorded with it, and a resumed run keeps them.
RUN_FLAGS = ("batch_size", "seq_len", "lr", "warmup", "lr_schedule", "min_lr", "decay_steps", "weight_decay",
             "grad_clip", "accumulate", "seed")
BEFORE_SCHEDULES = {"lr_schedule": "constant", "min_lr": 0.0, "decay_steps": None}  # runs recorded before them
STATE_FILE = "train_state.npz"  # AdamW's moments, the step, the batches' generator and the run's record
LOG_FILE, PLOT_FILE = "log.csv", "loss.png"
LOG_COLUMNS = ("step", "lr", "train_loss", "val_loss", "tokens_per_s", "seconds")
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
    params: dict  # the weights as they train: writable copies
    state: dict  # AdamW's: {"step", "m", "v"}
    rng: np.random.Generator  # draws each step's windows
    train_tokens: np.ndarray  # [n_tokens]
    val_windows: np.ndarray  # [n_windows, seq_len + 1]: the same at every evaluation
    vocab_dir: str  # where a save copies encoder.json and vocab.bpe from
    can_plot: bool  # matplotlib is installed

    @property
    def step(self):
        return self.state["step"]


def fine_tune(flags, given):
    """python train.py: a new run, or with --resume the one --out holds, trained up to --steps.
    flags: every flag of train.py; given: the names of those the user gave."""
    run = start_run(flags, given)
    print(f"fine-tuning {run.record['start']['model']} on {len(run.train_tokens):,} tokens of {flags['data']} "
          f"({len(run.val_windows)} validation windows) from step {run.step} to {run.flags['steps']}, saving to "
          f"{run.out}", file=sys.stderr)
    if not run.can_plot:
        print("note: matplotlib is not installed, so there is no loss.png (log.csv has the losses)", file=sys.stderr)
    train_loop(run)
    if flags["model_only"]:
        drop_state(run)


# ---------------------------------------------------------------------------------------------
# The run's start: texts, folder, model, state

def start_run(flags, given):
    """The run --out holds (--resume) or a new one, everything checked before a file is written: the texts, the
    folder, the starting model (or the saved one), the windows to learn from and to validate on, AdamW's state."""
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
    source = {"model_dir": out} if resumed else model_source(flags)
    encoder, hparams, params = load_encoder_hparams_and_params(**source)
    if flags["seq_len"] > hparams["n_ctx"]:
        raise ValueError(f"--seq_len {flags['seq_len']} is longer than the model's context of {hparams['n_ctx']}")
    train_tokens, val_tokens = split_tokens(encoder, texts["data"], texts["val_data"], flags["seq_len"])
    run = Run(flags, out, record, encoder, hparams, train.writable_copy(params), train.adamw_state(params),
              np.random.default_rng(flags["seed"]), train_tokens,
              train.eval_windows(val_tokens, flags["seq_len"], VAL_WINDOWS), out if resumed else model_folder(flags),
              has_matplotlib())
    del params  # the loaded arrays map the checkpoint's file: let go of it before a save replaces it
    if resumed:
        load_state(run)
    return run


def read_texts(flags):
    """{"data": the text to learn, "val_data": the validation text or None}, each checked to be text."""
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
    """The sha256 of a model's checkpoint index, which holds every tensor's CRC32C: the weights' identity
    ("" if there is none)."""
    try:
        with open(os.path.join(model_dir, "model.ckpt.index"), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def new_record(flags, texts):
    """What a new run records about itself, saved with it: the flags that shape it (a cosine schedule's floor
    and horizon settled: lr / 10 and --steps unless given), its texts' sha256, its starting model, the seconds
    spent training and the best validation loss so far."""
    start = model_folder(flags)
    settled = {"min_lr": flags["lr"] / 10 if flags["min_lr"] is None else flags["min_lr"],
               "decay_steps": flags["decay_steps"] or flags["steps"]}
    return {"flags": {name: settled.get(name, flags[name]) for name in RUN_FLAGS}, "data_sha256": sha256(texts["data"]),
            "val_sha256": sha256(texts["val_data"]), "elapsed": 0.0, "best_val_loss": None,
            "start": {"model": start, "index_sha256": index_sha256(start)}}


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
    record["flags"] = {**BEFORE_SCHEDULES, **record["flags"]}
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
    """AdamW's state, the step and the batches' generator as the last save left them; log.csv's rows of later
    steps dropped (the resumed run takes those steps again)."""
    n_layer = run.hparams["n_layer"]
    with np.load(os.path.join(run.out, STATE_FILE)) as saved:
        for key in ("m", "v"):
            run.state[key] = unflatten({name.removeprefix(key + "/"): saved[name] for name in saved.files
                                        if name.startswith(key + "/")}, n_layer)
        run.rng.bit_generator.state = json.loads(str(saved["rng"]))
        run.state["step"] = int(saved["step"])
    trim_log(run.out, run.step)


def has_matplotlib():
    return importlib.util.find_spec("matplotlib") is not None


# ---------------------------------------------------------------------------------------------
# The loop

def train_loop(run):
    """From run.step to --steps. After each step, side by side, what falls due at it: the validation loss (every
    --eval_every steps and at the end), a row of log.csv, a sample (every --sample_every steps and at the end),
    a save (every --save_every steps and at the end; with --keep_best, whenever the validation loss improves).
    A tqdm bar on stderr shows the loss, tokens/s and the time left; notes are written through it."""
    from tqdm import tqdm

    flags = run.flags
    with tqdm(total=flags["steps"], initial=run.step, desc="fine-tuning", unit="step", dynamic_ncols=True) as bar:
        try:
            if run.step == 0:
                log_row(run, bar, val_loss=evaluate(run, bar)[0])
            while run.step < flags["steps"]:
                lr = train.learning_rate(run.step + 1, *(flags[name] for name in ("lr", "warmup", "lr_schedule",
                                                                                  "min_lr", "decay_steps")))
                loss, tokens_per_s = take_step(run, lr)
                step, last = run.step, run.step == flags["steps"]
                bar.set_postfix(loss=f"{loss:.3f}", tokens_per_s=f"{tokens_per_s:.0f}")
                bar.update()
                val_loss, best = evaluate(run, bar) if every(step, flags["eval_every"]) or last else (None, False)
                log_row(run, bar, lr, loss, val_loss, tokens_per_s)
                if every(step, flags["sample_every"]) or last:
                    print_sample(run, bar)
                if best if flags["keep_best"] else every(step, flags["save_every"]) or last:
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
    """One step of train.train_step on the run, timed: (loss, tokens per second). FloatingPointError (before any
    weight is saved) if the loss or the gradients are not finite."""
    flags = run.flags
    start = time.perf_counter()
    with np.errstate(all="ignore"):  # a step that goes non-finite is reported as a whole, not op by op
        loss, _ = train.train_step(run.params, run.state, run.train_tokens, run.rng, run.hparams["n_head"],
                                   flags["batch_size"], flags["seq_len"], lr, flags["accumulate"],
                                   flags["weight_decay"], flags["grad_clip"] or None)
    seconds = time.perf_counter() - start
    run.record["elapsed"] += seconds
    return loss, flags["batch_size"] * flags["seq_len"] * flags["accumulate"] / seconds


def evaluate(run, bar):
    """The validation loss, on the same windows every time, printed through the bar, and whether it is the run's
    best yet (the record keeps the best; the starting model's, at step 0, counts)."""
    val_loss = train.evaluate(run.val_windows, run.params, run.hparams["n_head"], run.flags["batch_size"])
    bar.write(f"step {run.step}: validation loss {val_loss:.4f}")
    best = run.record["best_val_loss"]
    if best is not None and not val_loss < best:
        return val_loss, False
    run.record["best_val_loss"] = val_loss
    return val_loss, True


def log_row(run, bar, lr=None, loss=None, val_loss=None, tokens_per_s=None):
    """Append the step's row to log.csv (and draw loss.png again after a validation loss)."""
    row = [run.step, lr, loss, val_loss, tokens_per_s, run.record["elapsed"]]
    path = os.path.join(run.out, LOG_FILE)
    os.makedirs(run.out, exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(",".join(LOG_COLUMNS) + "\n")
        f.write(",".join("" if value is None else f"{value:.6g}" for value in row) + "\n")
    if val_loss is not None and run.can_plot:
        plot_losses(run.out)


def trim_log(out, step):
    """Drop log.csv's rows after `step`: they are of steps a resumed run takes again."""
    path = os.path.join(out, LOG_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            header, *rows = f.read().splitlines()
        kept = [row for row in rows if row.split(",")[0].isdigit() and int(row.split(",")[0]) <= step]
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join([header, *kept]) + "\n")


def print_sample(run, bar):
    """A short sample from <|endoftext|>, the same draw at every step, so that a person sees the model change."""
    ids = gpt2.generate([EOT], run.params, run.hparams["n_head"], min(SAMPLE_TOKENS, run.hparams["n_ctx"]),
                        temperature=0.8, top_k=40, seed=run.flags["seed"])
    bar.write(f"step {run.step}, a sample: {run.encoder.decode(ids)!r}")


def save_run(run, bar):
    """The weights in OpenAI's layout, and the state a resumed run needs, as one save (utils.save_model_folder:
    a process killed while saving leaves the previous save or this one). Weights that are not finite are never
    saved: FloatingPointError."""
    if not all(np.isfinite(p).all() for p in train.leaves(run.params)):
        raise FloatingPointError("some weights are not finite")

    def write_state(path):
        moments = {f"{key}/{name}": array for key in ("m", "v") for name, array in flatten(run.state[key]).items()}
        with open(path, "wb") as f:
            np.savez(f, step=run.step, rng=json.dumps(run.rng.bit_generator.state), record=json.dumps(run.record),
                     **moments)

    save_model_folder(run.out, run.params, run.hparams, run.vocab_dir, {STATE_FILE: write_state})
    run.vocab_dir = run.out
    bar.write(f"step {run.step}: saved to {run.out}")


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


def drop_state(run):
    """--model_only: train_state.npz removed once the run is over (AdamW's moments take twice the model's size);
    the folder keeps the model alone, which can no longer be resumed."""
    path = os.path.join(run.out, STATE_FILE)
    if os.path.exists(path):
        size = os.path.getsize(path)
        os.remove(path)
        print(f"--model_only: removed {path} ({size / 2**20:,.0f} MiB); {run.out} holds the model alone, which "
              "cannot be resumed", file=sys.stderr)
