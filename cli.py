"""The command lines of gpt2.py, train.py and utils.py: flags checked, texts read, results shown, errors in one line.

Each check is a small function used wherever it applies; the model's own checks (gpt2.check_*)
are called with flag="--" so that their messages name the flags. run_command() gives every command the
same ending: an `error: ...` line and exit code 1 for a ValueError or OSError, 130 for Ctrl-C.
"""
import codecs
import hashlib
import inspect
import json
import os
import sys
import time

import numpy as np

import gpt2
from gpt2 import EOT
from store import MODEL_SIZES

GPT2_TEXT_FLAGS = ("prompt", "model_size", "models_dir", "model_dir", "prompt_file")  # taken verbatim, never as numbers
TOKEN_LINES = 256  # --score prints a line per token up to this many tokens, and beyond it only with --tokens
GENERATION_FLAGS = ("n_tokens_to_generate", "temperature", "top_k", "top_p", "seed", "ignore_eos", "n_samples")


def run_command(main, text_flags=()):
    """Run main(**flags) as this process's command line, with fire.

    text_flags: the flags to take verbatim (fire would turn "1e3" into a number). A lone "-"
    after a flag is that flag's value (stdin), not fire's separator. Results are printed by main
    itself, so fire prints nothing more."""
    import fire

    argv = []
    for arg in sys.argv[1:]:
        if arg == "-" and argv and argv[-1].startswith("--") and "=" not in argv[-1]:
            argv[-1] += "=-"
        else:
            argv.append(arg)
    try:
        check_text_values(argv, text_flags)
        verbatim = fire.decorators.SetParseFns(**dict.fromkeys(text_flags, str))(main)
        fire.Fire(verbatim, command=argv, serialize=lambda result: None)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `python gpt2.py ... | head` closed the pipe: not an error
        sys.stdout = None
        sys.exit(0)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


# ---------------------------------------------------------------------------------------------
# Checks of flags, each written once

def check_text_values(argv, text_flags):
    """A text flag given without its value: fire would pass the text "True" (a folder named True, say)."""
    for arg, following in zip(argv, [*argv[1:], None]):
        if arg.startswith("--") and arg[2:] in text_flags and (following is None or following.startswith("--")):
            raise ValueError(f"{arg} needs a value")


def given_flags(main, flags):
    """The names of the flags whose values differ from main's defaults, in main's order."""
    defaults = {name: p.default for name, p in inspect.signature(main).parameters.items()}
    return [name for name, value in flags.items() if value is not defaults[name] and value != defaults[name]]


def check_switches(flags, names):
    for name in names:  # fire passes "--score=no" as text
        if not isinstance(flags[name], bool):
            raise ValueError(f"--{name} is a switch: give it alone, without a value")


def check_texts(flags, names):
    for name in names:  # a flag given without a value comes as True
        if flags[name] is not None and not isinstance(flags[name], str):
            raise ValueError(f"--{name} needs a value")


def refuse(names, verbs, rest):
    """A one-line error for flags given where they do not apply, e.g. --temperature with --score:
    "--a and --b" + verbs[0] for one flag, verbs[1] for more + rest."""
    if names:
        listed = " and ".join(f"--{name}" for name in names)
        raise ValueError(f"{listed} {verbs[len(names) > 1]} {rest}")


def check_prompt_source(prompt, prompt_file):
    if prompt is not None and prompt_file is not None:
        raise ValueError("give the prompt either as an argument or with --prompt_file, not both")
    if prompt is None and prompt_file is None:
        raise ValueError('give a prompt ("" starts from <|endoftext|>; one starting with "-" as --prompt="-..."), '
                         "or --prompt_file PATH (- reads stdin)")


def check_n_tokens(n_tokens_to_generate):
    if isinstance(n_tokens_to_generate, str):  # `python gpt2.py Hello world` gives "world" here
        raise ValueError(f"--n_tokens_to_generate must be a whole number >= 0, not {n_tokens_to_generate!r}: "
                         'a prompt of several words goes in quotes, e.g. python gpt2.py "Hello world"')


def check_gpt2_flags(flags):
    """Every flag of gpt2_main, before the model is loaded."""
    check_switches(flags, ("ignore_eos", "score", "tokens", "each_line"))
    check_texts(flags, GPT2_TEXT_FLAGS)
    check_prompt_source(flags["prompt"], flags["prompt_file"])
    check_n_tokens(flags["n_tokens_to_generate"])
    gpt2.check_sampling(*(flags[name] for name in ("n_tokens_to_generate", "temperature", "top_k", "top_p", "seed")),
                        flag="--")
    if flags["each_line"] and not (flags["score"] and flags["prompt_file"] is not None):
        raise ValueError("--each_line goes with --score and --prompt_file: it scores each line of the file")
    if flags["each_line"] and flags["tokens"]:
        raise ValueError("--each_line prints a row per line, not per token: leave out --tokens")
    given = given_flags(gpt2_main, flags)
    if flags["model_dir"] is not None:
        refuse([name for name in given if name in ("model_size", "models_dir")], ("does not go", "do not go"),
               "with --model_dir, which names the model folder itself")
    if flags["score"]:
        refuse([name for name in given if name in GENERATION_FLAGS], ("is", "are"),
               "for generating; --score reads the prompt only")
    else:
        refuse([name for name in given if name in ("stride", "tokens")], ("goes", "go"), "with --score")
    if flags["n_samples"] is not None:
        gpt2.check_n_samples(flags["n_samples"], flags["temperature"], flag="--")
    if flags["stride"] is not None:
        gpt2.check_stride(flags["stride"], flag="--")


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


def lines_of(text):
    """(line number, line) of each line, split on newlines only, as editors number them: a form
    feed or U+2028 inside a line is part of it. A line's closing "\\r" (Windows files) is dropped."""
    return [(number, line.removesuffix("\r")) for number, line in enumerate(text.split("\n"), 1)]


# ---------------------------------------------------------------------------------------------
# Output

def progress_bar(desc, unit, least=1):
    """A `progress` argument for gpt2's loops: their steps wrapped in a tqdm bar on stderr, shown
    only when there are at least `least` of them."""
    from tqdm import tqdm  # only the command line needs it: `import gpt2` stays NumPy only

    return lambda steps: tqdm(steps, desc=desc, unit=unit, disable=len(steps) < least, leave=False)


def detokenize(tokens, encoder):
    """Text pieces for a stream of token ids, each ready to print as soon as its token arrives.
    A character split across tokens is held back until its last byte comes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in tokens:
        yield decoder.decode(encoder.decode_bytes([token]))
    yield decoder.decode(b"", final=True)


def print_stream(tokens, encoder):
    """Print each piece of text as its tokens arrive, and return the whole text."""
    pieces = []
    for piece in detokenize(tokens, encoder):
        print(piece, end="", flush=True)
        pieces.append(piece)
    if sys.stdout.isatty():
        print()  # a terminal gets a newline; a file or pipe gets the continuation alone
    return "".join(pieces)


def print_samples(samples, encoder):
    """Print each sample under a header line, as OpenAI's sample scripts do."""
    texts = [encoder.decode(sample) for sample in samples]
    for i, text in enumerate(texts, 1):
        print(f"======== SAMPLE {i} ========")
        print(text)
    return texts


def print_score(inputs, encoder, params, n_head, stride=None, every_token=True):
    """Print each token with its log-probability (unless every_token is False), then the total and
    the perplexity. A text longer than the context shows a progress bar over its windows on stderr."""
    if not every_token:
        print(f"{len(inputs)} tokens: only the summary is printed (--tokens adds a line per token)", file=sys.stderr)
    log_probs = gpt2.score(inputs, params, n_head, stride, progress_bar("scoring", "window", least=2))
    if every_token:
        for token, log_prob in zip(inputs, log_probs):
            print(f"{log_prob:10.4f}  {encoder.decode([token])!r}")
    result = {"log_probs": log_probs.tolist(), "total": float(log_probs.sum()),
              "perplexity": float(np.exp(-log_probs.mean()))}
    print(f"total log-probability {result['total']:.4f} over {len(inputs)} tokens, "
          f"perplexity {result['perplexity']:.4f}")
    return result


def print_line_scores(text, encoder, params, n_head, stride=None):
    """Score each non-empty line of `text` as a text of its own and print a tab-separated row per
    line (line number, tokens, total log-probability, perplexity), then a summary line."""
    numbered = [(number, encoder.encode(line)) for number, line in lines_of(text) if line.strip()]
    if not numbered:
        raise ValueError("there is nothing to score: every line of the prompt is empty")
    results = gpt2.score_many([ids for _, ids in numbered], params, n_head, stride,
                              progress=progress_bar("scoring", "batch", least=2))
    for (number, ids), log_probs in zip(numbered, results):
        print(f"{number}\t{len(ids)}\t{log_probs.sum():.4f}\t{np.exp(-log_probs.mean()):.4f}")
    all_log_probs = np.concatenate(results)
    total, n_tokens = float(all_log_probs.sum()), len(all_log_probs)
    print(f"{len(numbered)} lines, {n_tokens} tokens: total log-probability {total:.4f}, "
          f"perplexity {np.exp(-total / n_tokens):.4f}")
    return [float(log_probs.sum()) for log_probs in results]


# ---------------------------------------------------------------------------------------------
# The commands

def gpt2_main(prompt=None, n_tokens_to_generate=40, model_size="124M", models_dir="models", model_dir=None,
              temperature=0.0, top_k=None, top_p=None, seed=None, ignore_eos=False, score=False, stride=None,
              tokens=False, prompt_file=None, n_samples=None, each_line=False):
    """Print GPT-2's continuation of a prompt as it is generated, and return it.

    Downloads OpenAI's checkpoint into models_dir/model_size on first use, or uses the folder
    --model_dir as it is. With --score, print how likely the model finds the prompt instead
    (per token, total, perplexity).

    Args:
        prompt: the text to continue or score, given first, in quotes; "" starts from <|endoftext|>
        n_tokens_to_generate: how many tokens to add (fewer if the model writes <|endoftext|>)
        model_size: 124M, 355M, 774M or 1558M
        models_dir: where model folders are kept, relative to the current directory
        model_dir: a model folder to use as it is, e.g. one train.py wrote; nothing is downloaded
        temperature: 0 is greedy; above 0, sample from softmax(logits / temperature)
        top_k: sample only among the k likeliest tokens
        top_p: then only among the fewest likeliest tokens whose probabilities sum to p
        seed: makes a sampled run repeatable
        ignore_eos: keep going past <|endoftext|> instead of stopping there
        score: print how likely the model finds the prompt instead of continuing it
        stride: with --score: how far windows move on long texts (none: half the context)
        tokens: with --score: a line per token even for texts over 256 tokens
        prompt_file: read the prompt verbatim from this UTF-8 file instead; - reads stdin
        n_samples: print this many samples of the continuation, each under a header (needs a temperature)
        each_line: with --score and --prompt_file: score each non-empty line alone, a row per line
    """
    check_gpt2_flags(dict(locals()))  # first: locals() is the flags alone
    from utils import load_encoder_hparams_and_params  # requests and the checkpoint reader load only here

    text = prompt if prompt_file is None else read_text(prompt_file, "--prompt_file")
    if score and not text:
        raise ValueError("there is nothing to score: give a prompt")
    encoder, hparams, params = load_encoder_hparams_and_params(model_size, models_dir, model_dir)
    n_head, stop_id = hparams["n_head"], None if ignore_eos else EOT
    if stride is not None:
        gpt2.check_stride(stride, hparams["n_ctx"], flag="--")
    if each_line:
        return print_line_scores(text, encoder, params, n_head, stride)
    inputs = encoder.encode(text) or [EOT]
    if score:
        return print_score(inputs, encoder, params, n_head, stride, tokens or len(inputs) <= TOKEN_LINES)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop_id=stop_id)
    if n_samples is not None:
        progress = progress_bar(f"{n_samples} samples", "token")
        return print_samples(gpt2.generate_many(inputs, params, n_head, n_tokens_to_generate, n_samples, **sampling,
                                                progress=progress), encoder)
    return print_stream(gpt2.stream(inputs, params, n_head, n_tokens_to_generate, **sampling), encoder)


def gpt2_command():
    run_command(gpt2_main, GPT2_TEXT_FLAGS)


UTILS_TEXT_FLAGS = ("model_size", "models_dir", "model_dir", "out", "to")


def utils_main(model_size="124M", models_dir="models", model_dir=None, out=None, to=None):
    """Print a model's hparams and every parameter's shape, or with --out and --to, convert its folder.

        python utils.py --model_size 124M
        python utils.py --model_dir models/124M --out gpt2-hf --to hf

    Args:
        model_size: 124M, 355M, 774M or 1558M (downloaded on first use, as gpt2.py does)
        models_dir: where model folders are kept, relative to the current directory
        model_dir: a model folder to use as it is, in OpenAI's layout or Hugging Face's
        out: with --to: a new or empty folder to save the model into
        to: with --out: the layout to save in: openai (TensorFlow's checkpoint) or hf (Hugging Face's safetensors)
    """
    flags = dict(locals())
    check_texts(flags, UTILS_TEXT_FLAGS)
    if model_dir is not None:
        refuse([name for name in given_flags(utils_main, flags) if name in ("model_size", "models_dir")],
               ("does not go", "do not go"), "with --model_dir, which names the model folder itself")
    if (out is None) != (to is None):
        raise ValueError("--out and --to go together: --out FOLDER --to hf (or --to openai) converts the model")
    from utils import convert_model_folder, load_encoder_hparams_and_params, param_shapes

    if out is not None:
        convert_model_folder(out, to, model_size, models_dir, model_dir)
        print(f"saved {model_dir or os.path.join(models_dir, model_size)} to {out} in "
              f"{'Hugging Face' if to == 'hf' else 'OpenAI'}'s layout")
        return
    _, hparams, params = load_encoder_hparams_and_params(model_size, models_dir, model_dir)
    shapes = param_shapes(params)
    print(json.dumps(hparams))
    for name, shape in shapes.items():
        print(f"{name:28} {shape}")
    print(f"{sum(int(np.prod(shape)) for shape in shapes.values()):,} parameters")


def utils_command():
    run_command(utils_main, UTILS_TEXT_FLAGS)


# ---------------------------------------------------------------------------------------------
# train.py: fine-tuning runs

TRAIN_TEXT_FLAGS = ("data", "model_size", "models_dir", "model_dir", "out", "val_data")
# The flags that shape a run's weights: recorded with it, and a resumed run keeps them.
RUN_FLAGS = ("batch_size", "seq_len", "lr", "warmup", "weight_decay", "grad_clip", "accumulate", "seed")
STATE_FILE = "train_state.npz"  # AdamW's moments, the step, the batches' generator and the run's record
LOG_FILE, PLOT_FILE = "log.csv", "loss.png"
LOG_COLUMNS = ("step", "lr", "train_loss", "val_loss", "tokens_per_s", "seconds")
VAL_WINDOWS = 32  # at most this many windows of the validation text are scored at each evaluation
SAMPLE_TOKENS = 40


def check_train_flags(flags):
    """Every flag of train_main that can be checked before anything is read."""
    check_switches(flags, ("resume",))
    check_texts(flags, TRAIN_TEXT_FLAGS)
    if flags["data"] is None:
        raise ValueError("give the text to learn: --data PATH (a UTF-8 file)")
    for name in ("steps", "batch_size", "seq_len", "accumulate"):
        gpt2.check_whole(flags[name], f"--{name}", 1)
    for name in ("warmup", "seed", "eval_every", "sample_every", "save_every"):
        gpt2.check_whole(flags[name], f"--{name}", 0)
    if not (gpt2.is_real(flags["lr"]) and flags["lr"] > 0):
        raise ValueError(f"--lr must be a number above 0 (e.g. 1e-4), not {flags['lr']!r}")
    for name in ("weight_decay", "grad_clip"):
        if not (gpt2.is_real(flags[name]) and flags[name] >= 0):
            raise ValueError(f"--{name} must be a number >= 0, not {flags[name]!r}")
    if flags["model_dir"] is not None:
        refuse([name for name in given_flags(train_main, flags) if name in ("model_size", "models_dir")],
               ("does", "do"), "not go with --model_dir, which names the starting model's folder itself")


def default_out(flags):
    """Where a run goes without --out: beside its starting model, named after the text (models/124M-my_text)."""
    stem = "stdin" if flags["data"] == "-" else os.path.splitext(os.path.basename(flags["data"]))[0] or "data"
    start = flags["model_dir"] or os.path.join(flags["models_dir"], flags["model_size"])
    return f"{os.path.normpath(start)}-{stem}"


def read_record(out):
    """The record of the run saved in out ({"step", "flags", "start", "data_sha256", "val_sha256", "elapsed"}),
    or None if out holds no run."""
    path = os.path.join(out, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as state:
            return {**json.loads(str(state["record"])), "step": int(state["step"])}
    except (OSError, ValueError, KeyError):
        raise ValueError(f"{path} is truncated or corrupt: this run cannot be resumed") from None


def check_out(out, flags, record):
    """--out must be a new or empty folder, or, with --resume, an earlier run's."""
    start = start_folder(flags)
    if os.path.exists(out) and os.path.exists(start) and os.path.samefile(out, start):
        raise ValueError(f"--out {out} is the starting model's folder: choose another, e.g. --out {default_out(flags)}")
    if os.path.basename(os.path.normpath(out)) in MODEL_SIZES:
        raise ValueError(f"--out {out} is named as OpenAI's downloads are: choose another folder")
    if flags["resume"] and record is None:
        raise ValueError(f"--resume: {out} holds no run of train.py ({STATE_FILE} is missing): leave out --resume "
                         "to start one")
    if not flags["resume"] and record is not None:
        raise ValueError(f"--out {out} holds a run of train.py (at step {record['step']}): add --resume to go on "
                         "with it, or choose another --out")
    if not flags["resume"] and os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"--out {out} is not a new or empty folder: choose another")


def check_resumable(record, flags, out, text_hashes):
    """A resumed run goes on with what it began with: the same flags that shape it, the same texts, and
    the same starting model if one is named again."""
    for name in set(given_flags(train_main, flags)) & set(RUN_FLAGS):
        if flags[name] != record["flags"][name]:
            raise ValueError(f"--{name} {flags[name]} is not the {record['flags'][name]} that the run in {out} "
                             f"began with: leave out --{name} to go on with it, or start a new --out")
    for name, key, text_hash in (("data", "data_sha256", text_hashes[0]), ("val_data", "val_sha256", text_hashes[1])):
        if text_hash != record[key]:
            raise ValueError(f"the run in {out} learned from another --{name}" + (": give it again" if text_hash is None
                             else " (its sha256 differs): give the same file, or start a new --out"))
    named = [name for name in given_flags(train_main, flags) if name in ("model_size", "models_dir", "model_dir")]
    if named and index_sha256(start_folder(flags)) != record["start"]["index_sha256"]:
        raise ValueError(f"{' '.join('--' + name for name in named)} do not name the model the run in {out} "
                         f"started from ({record['start']['model']}): leave them out to go on with it")


def start_folder(flags):
    return flags["model_dir"] or os.path.join(flags["models_dir"], flags["model_size"])


def index_sha256(model_dir):
    """The sha256 of a model's checkpoint index, which holds every tensor's CRC32C: the weights' identity
    ("" if there is none)."""
    try:
        with open(os.path.join(model_dir, "model.ckpt.index"), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


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


def read_texts(flags):
    """The texts of --data and --val_data (None if not given), and the sha256 of each."""
    texts = [None if flags[name] is None else read_text(flags[name], f"--{name}") for name in ("data", "val_data")]
    for name, text in zip(("data", "val_data"), texts):
        if text is not None and not text.strip():
            raise ValueError(f"--{name} {flags[name]} holds no text")
    return texts, [None if text is None else hashlib.sha256(text.encode()).hexdigest() for text in texts]


def open_out(flags, hashes):
    """--out's path and the record of the run it holds (None for a new run), checked against the flags."""
    from store import settled_folder

    out = flags["out"] or default_out(flags)
    if os.path.isdir(out):
        with settled_folder(out):  # a save cut short is finished or undone, a killed run's lock file removed
            pass
    record = read_record(out) if os.path.isdir(out) else None
    check_out(out, flags, record)
    if record is not None:
        check_resumable(record, flags, out, hashes)
        if record["step"] >= flags["steps"]:
            raise ValueError(f"the run in {out} is at step {record['step']} already: give --steps above "
                             f"{record['step']} to go on")
    return out, record


def start_run(flags):
    """Everything a run needs, from --data, the starting model or --out's saved run, checked before a file
    is written: the flags, texts, model, AdamW's state, the batches' generator and the step."""
    from train import adamw_state, eval_windows, writable_copy
    from utils import load_encoder_hparams_and_params

    (text, val_text), hashes = read_texts(flags)
    out, record = open_out(flags, hashes)
    flags = {**flags, **(record["flags"] if record else {})}  # a resumed run goes on as it began
    where = {"model_dir": out} if record else {"model_dir": flags["model_dir"]} if flags["model_dir"] else \
        {"model_size": flags["model_size"], "models_dir": flags["models_dir"]}
    encoder, hparams, params = load_encoder_hparams_and_params(**where)
    if flags["seq_len"] > hparams["n_ctx"]:
        raise ValueError(f"--seq_len {flags['seq_len']} is longer than the model's context of {hparams['n_ctx']}")
    train_tokens, val_tokens = split_tokens(encoder, text, val_text, flags["seq_len"])
    start = start_folder(flags)
    run = {"flags": flags, "out": out, "encoder": encoder, "hparams": hparams, "params": writable_copy(params),
           "train": train_tokens, "val": eval_windows(val_tokens, flags["seq_len"], VAL_WINDOWS),
           "vocab_dir": out if record else start,
           "record": record or {"flags": {name: flags[name] for name in RUN_FLAGS}, "data_sha256": hashes[0],
                                "val_sha256": hashes[1], "elapsed": 0.0,
                                "start": {"model": start, "index_sha256": index_sha256(start)}}}
    del params  # the loaded arrays map the checkpoint's file: let go of it before a save replaces it
    return resume_state(run) if record else {**run, "state": adamw_state(run["params"]), "step": 0,
                                             "rng": np.random.default_rng(flags["seed"])}


def resume_state(run):
    """The run with AdamW's state, the step and the batches' generator as the last save left them."""
    from utils import unflatten

    n_layer = run["hparams"]["n_layer"]
    with np.load(os.path.join(run["out"], STATE_FILE)) as saved:
        moments = {key: unflatten({name.removeprefix(key + "/"): saved[name] for name in saved.files
                                   if name.startswith(key + "/")}, n_layer) for key in ("m", "v")}
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(str(saved["rng"]))
        step = int(saved["step"])
    trim_log(run["out"], step)
    return {**run, "state": {"step": step, **moments}, "step": step, "rng": rng}


def fine_tune(run):
    """Train from run["step"] to --steps: the validation loss at step 0 and every --eval_every steps, a
    sample every --sample_every, a save every --save_every and at the end. A tqdm bar on stderr shows the
    loss, tokens/s and the time left; evaluations, samples and saves are reported on stdout."""
    from tqdm import tqdm

    flags = run["flags"]
    with tqdm(total=flags["steps"], initial=run["step"], desc="fine-tuning", unit="step", dynamic_ncols=True) as bar:
        try:
            if run["step"] == 0:
                log_step(run, bar, None, None)
            while run["step"] < flags["steps"]:
                train_one_step(run, bar)
        except KeyboardInterrupt:
            bar.close()
            print(f"interrupted at step {run['step']}: {last_save(run)}", file=sys.stderr)
            raise
        except FloatingPointError as e:
            raise ValueError(f"step {run['step'] + 1} went wrong ({e}): the learning rate is too high for this "
                             f"text and model, so lower --lr (it is {flags['lr']:g}); {last_save(run)}") from None
    plot_losses(run)
    return run["params"]


def train_one_step(run, bar):
    """One step of train.train_step, then what falls due at it: evaluating, logging, sampling, saving."""
    from train import leaves, learning_rate, train_step

    flags, step = run["flags"], run["step"] + 1
    lr = learning_rate(step, flags["lr"], flags["warmup"])
    save = every(step, flags["save_every"]) or step == flags["steps"]
    start = time.perf_counter()
    with np.errstate(all="ignore"):  # a step that goes non-finite is reported as a whole, not op by op
        loss, _ = train_step(run["params"], run["state"], run["train"], run["rng"], run["hparams"]["n_head"],
                             flags["batch_size"], flags["seq_len"], lr, flags["accumulate"], flags["weight_decay"],
                             flags["grad_clip"] or None)
        if save and not all(np.isfinite(p).all() for p in leaves(run["params"])):  # never saved
            raise FloatingPointError("some weights are not finite")
    seconds = time.perf_counter() - start
    run["step"], run["record"]["elapsed"] = step, run["record"]["elapsed"] + seconds
    tokens_per_s = flags["batch_size"] * flags["seq_len"] * flags["accumulate"] / seconds
    bar.set_postfix(loss=f"{loss:.3f}", tokens_per_s=f"{tokens_per_s:.0f}")
    bar.update()
    log_step(run, bar, (lr, loss, tokens_per_s), every(step, flags["eval_every"]) or step == flags["steps"])
    if every(step, flags["sample_every"]):
        print_training_sample(run, bar)
    if save:
        save_run(run, bar)


def every(step, period):
    return period > 0 and step % period == 0


def log_step(run, bar, trained, evaluate):
    """Append the step's row to log.csv: (lr, train loss, tokens/s) if a step was trained, and the
    validation loss if evaluate (always at step 0)."""
    from train import evaluate as validation_loss

    val = None
    if evaluate or run["step"] == 0:
        val = validation_loss(run["val"], run["params"], run["hparams"]["n_head"], run["flags"]["batch_size"])
        bar.write(f"step {run['step']}: validation loss {val:.4f}")
    lr, loss, tokens_per_s = trained or (None, None, None)
    row = [run["step"], lr, loss, val, tokens_per_s, run["record"]["elapsed"]]
    path = os.path.join(run["out"], LOG_FILE)
    os.makedirs(run["out"], exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(",".join(LOG_COLUMNS) + "\n")
        f.write(",".join("" if value is None else f"{value:.6g}" for value in row) + "\n")
    if val is not None:
        plot_losses(run)


def trim_log(out, step):
    """Drop log.csv's rows after `step`: they are of steps a resumed run does again."""
    path = os.path.join(out, LOG_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            header, *rows = f.read().splitlines()
        kept = [row for row in rows if row.split(",")[0].isdigit() and int(row.split(",")[0]) <= step]
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join([header, *kept]) + "\n")


def print_training_sample(run, bar):
    """A short sample from <|endoftext|>, the same draw at every step, so that a person sees the model change."""
    ids = gpt2.generate([EOT], run["params"], run["hparams"]["n_head"], min(SAMPLE_TOKENS, run["hparams"]["n_ctx"]),
                        temperature=0.8, top_k=40, seed=run["flags"]["seed"])
    bar.write(f"step {run['step']}, a sample: {run['encoder'].decode(ids)!r}")


def save_run(run, bar):
    """The weights in OpenAI's layout, and the state a resumed run needs, as one save (utils.save_model_folder:
    a process killed while saving leaves the previous save or this one)."""
    from utils import flatten, save_model_folder

    def write_state(path):
        moments = {f"{key}/{name}": array for key in ("m", "v") for name, array in flatten(run["state"][key]).items()}
        with open(path, "wb") as f:
            record = {key: value for key, value in run["record"].items() if key != "step"}
            np.savez(f, step=run["step"], rng=json.dumps(run["rng"].bit_generator.state), record=json.dumps(record),
                     **moments)

    save_model_folder(run["out"], run["params"], run["hparams"], run["vocab_dir"], {STATE_FILE: write_state})
    bar.write(f"step {run['step']}: saved to {run['out']}")


def last_save(run):
    """What --out holds, read from it once a save that was cut short is finished or undone."""
    from store import settled_folder

    record = None
    if os.path.isdir(run["out"]):
        with settled_folder(run["out"]):
            record = read_record(run["out"])
    if record is None:
        return "nothing was saved yet"
    return f"{run['out']} holds step {record['step']}, the last save (--resume goes on from it)"


def plot_losses(run):
    """loss.png beside log.csv: the training and validation losses by step, if matplotlib is installed
    (it is not needed to train: a note says so, once)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        if not run.get("noted_plot"):
            print("note: matplotlib is not installed, so there is no loss.png (log.csv has the losses)",
                  file=sys.stderr)
            run["noted_plot"] = True
        return
    with open(os.path.join(run["out"], LOG_FILE), encoding="utf-8") as f:
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
    path = os.path.join(run["out"], PLOT_FILE)
    fig.savefig(path + ".tmp", format="png")
    os.replace(path + ".tmp", path)


def train_main(data=None, model_size="124M", models_dir="models", model_dir=None, out=None, steps=200, batch_size=4,
               seq_len=256, lr=1e-4, warmup=20, weight_decay=0.0, grad_clip=1.0, accumulate=1, seed=0, val_data=None,
               eval_every=25, sample_every=50, save_every=50, resume=False):
    """Fine-tune GPT-2 on a text of your own and save it in OpenAI's checkpoint format.

    Starts from OpenAI's model (downloaded on first use, as gpt2.py does) or from a model folder,
    and saves into --out, which gpt2.py --model_dir then uses as it is.

    Args:
        data: the text to learn, a UTF-8 file
        model_size: the starting model: 124M, 355M, 774M or 1558M
        models_dir: where model folders are kept, relative to the current directory
        model_dir: start from this model folder instead (e.g. an earlier run's --out)
        out: the folder to save to (none: beside the starting model, named after --data)
        steps: steps in all (with --resume too): each learns from batch_size x accumulate windows
        batch_size: windows of the text per step; memory grows with batch_size x seq_len
        seq_len: tokens per window, at most the model's context (1024); the main lever for speed and memory
        lr: the learning rate after warmup (gpt-2-simple's; nanoGPT's 3e-5 is gentler, for longer runs)
        warmup: steps over which the rate rises linearly to lr, so the first steps do not jolt the model
        weight_decay: AdamW's decay of the weight matrices (0: a short fine-tune needs no pull towards 0)
        grad_clip: largest global norm of the gradients, as nanoGPT (0: no clipping)
        accumulate: batches whose gradients add up to one step: a larger batch in the same memory
        seed: makes the run repeatable (which windows each step learns from)
        val_data: a UTF-8 file to measure the validation loss on (none: the last 10% of --data)
        eval_every: steps between validation losses (also at step 0 and at the end)
        sample_every: steps between short samples, to see the model change (0: none)
        save_every: steps between saves (also at the end; 0: only at the end)
        resume: go on with the run saved in --out, up to --steps in all
    """
    check_train_flags(dict(locals()))
    run = start_run(dict(locals()))
    print(f"fine-tuning {run['record']['start']['model']} on {len(run['train']):,} tokens of {data} "
          f"({len(run['val'])} validation windows) from step {run['step']} to {run['flags']['steps']}, saving to "
          f"{run['out']}", file=sys.stderr)
    fine_tune(run)
    return None


def train_command():
    run_command(train_main, TRAIN_TEXT_FLAGS)
