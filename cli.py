"""The command lines of gpt2.py, train.py and utils.py: flags checked, texts read, results shown, errors in one line.

Each check is a small function used wherever it applies; the model's own checks (gpt2.check_*)
are called with flag="--" so that their messages name the flags. run_command() gives every command the
same start and ending: --help printed from main's docstring, an unknown flag refused before any work, an
`error: ...` line and exit code 1 for a ValueError or OSError, 130 for Ctrl-C and 143 for SIGTERM.
The fine-tuning run itself is finetune.py's; train_main here is its command line.
"""
import codecs
import difflib
import inspect
import json
import os
import re
import signal
import sys

import numpy as np

import gpt2
import tasks
from gpt2 import EOT
from texts import lines_of, read_text

GPT2_TEXT_FLAGS = ("prompt", "model_size", "models_dir", "model_dir", "prompt_file", "choices", "template",
                   "shots_from", "adapters")  # taken verbatim, never as numbers
TOKEN_LINES = 256  # --score prints a line per token up to this many tokens, and beyond it only with --tokens
GENERATION_FLAGS = ("n_tokens_to_generate", "temperature", "top_k", "top_p", "seed", "ignore_eos", "n_samples")
CHOICE_FLAGS = ("template", "shots", "shots_from")  # they shape --choices' prompts
# Flags users bring from OpenAI's sample scripts, nanoGPT and Hugging Face, and what they are called here
OTHER_NAMES = {"learning_rate": "lr", "max_iters": "steps", "max_steps": "steps", "block_size": "seq_len",
               "max_length": "n_tokens_to_generate", "length": "n_tokens_to_generate", "nsamples": "n_samples",
               "eval_interval": "eval_every", "warmup_iters": "warmup", "warmup_steps": "warmup",
               "gradient_accumulation_steps": "accumulate", "out_dir": "out", "output_dir": "out",
               "model_name": "model_size", "model": "model_size"}


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, systemd, a job scheduler), raised where Ctrl-C would be, so that a command stops
    the same way and says the same things (exit code 143 instead of 130)."""


def raise_terminated(signum, frame):
    raise Terminated()


def run_command(main, usage, text_flags=()):
    """Run main(**flags) as this process's command line, with fire.

    usage: the first line of --help. text_flags: the flags to take verbatim (fire would turn "1e3"
    into a number). A lone "-" after a flag is that flag's value (stdin), not fire's separator.
    Results are printed by main itself, so fire prints nothing more."""
    import fire

    argv = []
    for arg in sys.argv[1:]:
        if arg == "-" and argv and argv[-1].startswith("--") and "=" not in argv[-1]:
            argv[-1] += "=-"
        else:
            argv.append(arg)
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        if {"-h", "--help"} & set(argv[:argv.index("--") if "--" in argv else len(argv)]):
            return print(help_text(main, usage))
        check_flag_names(argv, main)
        check_text_values(argv, text_flags)
        verbatim = fire.decorators.SetParseFns(**dict.fromkeys(text_flags, str))(main)
        fire.Fire(verbatim, command=argv, serialize=lambda result: None)
    except KeyboardInterrupt as e:
        sys.exit(143 if isinstance(e, Terminated) else 130)
    except BrokenPipeError:  # `python gpt2.py ... | head` closed the pipe: not an error
        sys.stdout = None
        sys.exit(0)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


def help_text(main, usage):
    """--help: what the command does, then each flag with its default and meaning, in main's order (README's
    tables follow it), from main's docstring (its "Args:" list)."""
    summary, _, rest = inspect.getdoc(main).partition("\n\n")
    description, _, args = rest.partition("Args:\n")
    meanings = dict(re.findall(r"^\s+(\w+): (.*)$", args, re.M))
    rows = [(f"--{name}", shown_default(p.default), meanings[name])
            for name, p in inspect.signature(main).parameters.items()]
    widths = [max(len(row[i]) for row in rows) for i in (0, 1)]
    lines = [f"  {flag:{widths[0]}}  {default:{widths[1]}}  {meaning}" for flag, default, meaning in rows]
    return "\n".join([f"usage: {usage}", "", summary, "", description.strip("\n").rstrip(), "",
                      "flags (name, default, meaning):", *lines])


def shown_default(value):
    """A default as README's tables write it: none, off, 0.0001, 124M."""
    if value is None or value is False:
        return "none" if value is None else "off"
    return value if isinstance(value, str) else f"{value:g}"


# ---------------------------------------------------------------------------------------------
# Checks of flags, each written once

def check_flag_names(argv, main):
    """Every flag in argv (before fire's own "--") is one of main's: fire would run the command first and
    complain after. An unknown one is a one-line error naming it and the known flag nearest to it."""
    known = list(inspect.signature(main).parameters)
    for arg in argv[:argv.index("--") if "--" in argv else len(argv)]:
        name = arg.lstrip("-").partition("=")[0].replace("-", "_")
        if not re.match(r"-{1,2}[a-zA-Z]", arg) or len(name) > 1 and (name in known or name[2:] in known and
                                                                        name.startswith("no")):
            continue  # a value, a prompt, a known flag, or fire's --noswitch
        prompt = "prompt" in known and (" " in arg or not arg.startswith("--"))
        hint = '; to give a prompt that starts with "-", write --prompt="-..."' if prompt else ""
        raise ValueError(f"unknown flag {arg.partition('=')[0]}: did you mean --{nearest_flag(name, known)}?{hint}")


def nearest_flag(name, known):
    """The known flag a mistyped or borrowed one most likely means: its name here (learning_rate -> lr), or the
    one spelt most alike."""
    if OTHER_NAMES.get(name) in known:
        return OTHER_NAMES[name]
    return max(known, key=lambda flag: (flag.startswith(name), difflib.SequenceMatcher(None, name, flag).ratio()))


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
    check_switches(flags, ("ignore_eos", "score", "tokens", "each_line", "classify"))
    check_prompt_source(flags["prompt"], flags["prompt_file"])
    check_n_tokens(flags["n_tokens_to_generate"])
    gpt2.check_sampling(*(flags[name] for name in ("n_tokens_to_generate", "temperature", "top_k", "top_p", "seed")),
                        flag="--")
    reads_texts = flags["score"] or flags["classify"] or flags["choices"] is not None
    if flags["each_line"] and not (reads_texts and flags["prompt_file"] is not None):
        raise ValueError("--each_line goes with --prompt_file and --score, --classify or --choices: it takes each "
                         "line of the file as a text")
    if flags["each_line"] and flags["tokens"]:
        raise ValueError("--each_line prints a row per line, not per token: leave out --tokens")
    given = given_flags(gpt2_main, flags)
    if flags["model_dir"] is not None:
        refuse([name for name in given if name in ("model_size", "models_dir")], ("does not go", "do not go"),
               "with --model_dir, which names the model folder itself")
    check_task_flags(flags, given)
    if flags["score"]:
        refuse([name for name in given if name in GENERATION_FLAGS], ("is", "are"),
               "for generating; --score reads the prompt only")
    else:
        refuse([name for name in given if name in ("stride", "tokens")], ("goes", "go"), "with --score")
    if flags["n_samples"] is not None:
        gpt2.check_n_samples(flags["n_samples"], flags["temperature"], flag="--")
    if flags["stride"] is not None:
        gpt2.check_stride(flags["stride"], flag="--")


def check_task_flags(flags, given):
    """--classify and --choices: each alone, without --score or generation flags (--seed goes with --shots), and
    --choices' own flags with it alone."""
    refuse([name for name in ("classify", "score") if name in given and flags["choices"] is not None],
           ("does not go", "do not go"), "with --choices, which chooses by the language model's likelihood")
    refuse(["score"] if flags["classify"] and flags["score"] else [], ("does not go",) * 2,
           "with --classify, which gives a trained head's class probabilities")
    if flags["choices"] is None:
        refuse([name for name in given if name in CHOICE_FLAGS], ("goes", "go"), "with --choices")
    else:
        split_choices(flags["choices"])
        gpt2.check_whole(flags["shots"], "--shots", 0)
        if flags["template"] is not None and "{text}" not in flags["template"]:
            raise ValueError(f"--template {flags['template']!r} has no {{text}}: write where each text goes, e.g. "
                             '"Review: {text}\\nSentiment:"')
        if (flags["shots"] > 0) != (flags["shots_from"] is not None):
            raise ValueError("--shots K and --shots_from FILE go together: K examples drawn from the labeled file")
    task = "classify" if flags["classify"] else "choices" if flags["choices"] is not None else None
    if task:
        shots = task == "choices" and flags["shots"] > 0
        refuse([name for name in given if name in GENERATION_FLAGS and not (name == "seed" and shots)], ("is", "are"),
               f"for generating; --{task} reads the prompt only" + ("" if task == "classify" else
                                                                    " (--seed goes with --shots)"))


def split_choices(choices):
    """--choices "positive|negative" as ["positive", "negative"], each without spaces at its ends."""
    if not isinstance(choices, str):
        raise ValueError(f"--choices must be two or more choices separated by |, e.g. \"positive|negative\", "
                         f"not {choices!r}")
    parts = [part.strip() for part in choices.split("|")]
    if "" in parts or len(parts) < 2:
        raise ValueError(f"--choices {choices!r} has {'an empty choice' if '' in parts else 'one choice'}: give "
                         'two or more, each non-empty, separated by |, e.g. "positive|negative"')
    twice = [part for i, part in enumerate(parts) if part in parts[:i]]
    if twice:
        raise ValueError(f"--choices names {twice[0]!r} twice: give each choice once")
    return parts


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
# Tasks: --classify with a trained head, --choices by likelihood

def task_rows(flags, verb):
    """[(line, text, label or None)] of --prompt_file: a labeled file (tasks.read_labeled, the label column
    optional) or, with --each_line, each non-empty line a text. None when the prompt was given alone."""
    if flags["prompt_file"] is None:
        return None
    if not flags["each_line"]:
        return [(line, text, label or None)
                for line, text, label in tasks.read_labeled(flags["prompt_file"], "--prompt_file", need_labels=False)]
    rows = [(number, line, None) for number, line in lines_of(read_text(flags["prompt_file"], "--prompt_file"))
            if line.strip()]
    if not rows:
        raise ValueError(f"there is nothing to {verb}: every line of --prompt_file {flags['prompt_file']} is empty")
    return rows


def last_tokens(texts, n_ctx, lines=None):
    """Each text's last n_ctx token ids (a classifier trained with --seq_len reads the same end of a long text),
    saying on stderr how many were cut, and from which lines of the file."""
    cut = [(i, len(ids) - n_ctx) for i, ids in enumerate(texts) if len(ids) > n_ctx]
    if cut:
        s = "s" if len(cut) > 1 else ""
        where = "the text" if lines is None else (f"{len(cut)} text{s} (line{s} "
                                                  + ", ".join(str(lines[i]) for i, _ in cut[:5])
                                                  + (", ..." if len(cut) > 5 else "") + ")")
        print(f"{where}: longer than the model's context, so only the last {n_ctx} tokens are read "
              f"({'up to ' if len(cut) > 1 else ''}{max(n for _, n in cut)} cut from the start)", file=sys.stderr)
    return [ids[-n_ctx:] for ids in texts]


def print_classes(probs, classes):
    """A line per class, likeliest first: its label, a tab, its probability."""
    for i in np.argsort(-probs, kind="stable"):
        print(f"{classes[i]}\t{probs[i]:.4f}")
    return dict(zip(classes, probs.tolist()))


def print_classified(rows, probs, classes):
    """A row per text (line, predicted label, its probability); then, where the file has labels, tasks.report's
    accuracy and confusion matrix over the rows whose label is one of the head's classes."""
    predicted = probs.argmax(axis=1)
    for (line, _, _), i, p in zip(rows, predicted, probs):
        print(f"{line}\t{classes[i]}\t{p[i]:.4f}")
    labeled = [(row, label) for row, (_, _, label) in enumerate(rows) if label is not None]
    known = [(row, classes.index(label)) for row, label in labeled if label in classes]
    if len(known) < len(labeled):
        unknown = sorted({label for _, label in labeled if label not in classes})
        n = len(labeled) - len(known)
        print(f"{n} row{' has a label' if n == 1 else 's have labels'} the head does not know "
              f"({', '.join(map(repr, unknown))}; its classes: {', '.join(map(repr, classes))}): the scores count "
              f"the other {len(known)}", file=sys.stderr)
    if known:
        truth, guessed = np.array([t for _, t in known]), predicted[[r for r, _ in known]]
        print()
        print(tasks.report(tasks.confusion_matrix(truth, guessed, len(classes)), classes))
    return [classes[i] for i in predicted]


def classify_texts(flags, folder, rows):
    """gpt2.py --classify: the head read (before any download), the model loaded, each text's classes printed."""
    from utils import HEAD_FILE, fit_head, is_hf_folder, read_head

    w, classes = read_head(folder)  # a missing or damaged head is found before anything is downloaded
    encoder, hparams, params = load_model(flags)
    w = fit_head(w, hparams["n_embd"], os.path.join(folder, "model.safetensors" if is_hf_folder(folder) else HEAD_FILE))
    texts = [flags["prompt"]] if rows is None else [text for _, text, _ in rows]
    ids = last_tokens([encoder.encode(text) for text in texts], hparams["n_ctx"],
                      None if rows is None else [line for line, _, _ in rows])
    probs = gpt2.classify(ids, params, w, hparams["n_head"], progress=progress_bar("classifying", "batch", least=2))
    return print_classes(probs[0], classes) if rows is None else print_classified(rows, probs, classes)


def check_choice_labels(rows, choices, path):
    """A labeled --prompt_file's labels are the choices: a label that is no choice could never be chosen, and a
    choice that is no label is most likely mistyped."""
    labels = {label for _, _, label in rows if label is not None}
    check_labels_are_choices(rows, choices, "--prompt_file", path, "give the file's labels as the choices")
    missing = [choice for choice in choices if choice not in labels] if labels else []
    if missing:
        raise ValueError(f"--choices {missing[0]!r} is not a label of --prompt_file {path} (its labels: "
                         f"{'|'.join(sorted(labels))}): give the file's labels as the choices")


def check_labels_are_choices(rows, choices, flag, path, why):
    """Every label of a labeled file's rows (line, text, label or None) is one of the choices; else an error
    naming the row, ending in why."""
    for line, _, label in rows:
        if label is not None and label not in choices:
            raise ValueError(f"{flag} {path}, line {line}: the label {label!r} is not one of --choices "
                             f"({'|'.join(choices)}): {why}")


def read_shots(path, k, choices):
    """The (text, label) examples of --shots_from, k at least, each answered by one of the choices."""
    rows = tasks.read_labeled(path, "--shots_from")
    check_labels_are_choices(rows, choices, "--shots_from", path, "an example must answer with a choice")
    if len(rows) < k:
        raise ValueError(f"--shots {k} asks for more examples than --shots_from {path} holds ({len(rows)})")
    return [(text, label) for _, text, label in rows]


def choice_prompts(flags, rows, choices):
    """[(line or None, prompt, label or None)]: each text (or the prompt given alone) in --template, after --shots
    examples drawn for it from --shots_from (never the text itself), the draws seeded by --seed. \\n in --template,
    and in a prompt given alone, is a newline (a shell makes a real one awkward to type)."""
    template = (flags["template"] or "{text}").replace("\\n", "\n")
    shots = read_shots(flags["shots_from"], flags["shots"], choices) if flags["shots"] else []
    rng = np.random.default_rng(0 if flags["seed"] is None else flags["seed"])
    if rows is None:
        rows = [(None, flags["prompt"].replace("\\n", "\n"), None)]
    return [(line, tasks.few_shot_prompt(template, tasks.draw_shots(shots, flags["shots"], rng, text), text), label)
            for line, text, label in rows]


def choice_ids(prompts, choices, encoder, n_ctx, shots):
    """Each prompt's (context ids, [each choice's ids]) as tasks.continuation_ids tokenizes them; a prompt and a
    choice that do not fit the context together are an error naming the row."""
    ids = []
    for line, prompt, _ in prompts:
        context, continuations = tasks.continuation_ids(encoder, prompt, choices)
        for choice, continuation in zip(choices, continuations):
            if len(context) + len(continuation) - 1 > n_ctx:  # the model is fed all but the choice's last token
                where = "the prompt" if line is None else f"line {line}: the prompt"
                raise ValueError(f"{where} ({len(context)} tokens) and the choice {choice!r} ({len(continuation)}) do "
                                 f"not fit the model's context of {n_ctx} tokens: shorten the text or the template"
                                 + (" or give fewer --shots" if shots else ""))
        ids.append((context, continuations))
    return ids


def choice_scores(context, continuations, choices, params, n_head):  # -> totals, per_char: [n_choices] each
    """Each choice's total log-probability after the context, and that divided by the choice's length in
    characters (lm-evaluation-harness's acc_norm: a long choice is not penalized for its many tokens)."""
    totals = np.array([log_probs.sum() for log_probs in gpt2.score_choices(context, continuations, params, n_head)])
    return totals, totals / np.array([len(choice) for choice in choices])


def print_choices(totals, per_char, choices):
    """A line per choice, likeliest first: the choice, its total log-probability, its log-probability per
    character, tab-separated."""
    for i in np.argsort(-totals, kind="stable"):
        print(f"{choices[i]}\t{totals[i]:.4f}\t{per_char[i]:.4f}")
    return {choice: (float(total), float(norm)) for choice, total, norm in zip(choices, totals, per_char)}


def print_chosen(prompts, scores, choices):
    """A row per text (line, the choice by total, the choice by per-character log-probability); then, over the
    labeled rows, acc and acc_norm: how often each is the label."""
    chosen = [(int(np.argmax(totals)), int(np.argmax(per_char))) for totals, per_char in scores]
    for (line, _, _), (by_total, by_char) in zip(prompts, chosen):
        print(f"{line}\t{choices[by_total]}\t{choices[by_char]}")
    labeled = [(choices.index(label), pair) for (_, _, label), pair in zip(prompts, chosen) if label is not None]
    for name, k in (("acc", 0), ("acc_norm", 1)) if labeled else ():
        right = sum(truth == pair[k] for truth, pair in labeled)
        print(f"{name} {right / len(labeled):.4f} ({right} of {len(labeled)})")
    return [(choices[i], choices[j]) for i, j in chosen]


def answer_choices(flags, rows):
    """gpt2.py --choices: labels, template and shots checked, the model loaded, each row's choices scored in one
    batch after its prompt (gpt2.score_choices), and printed."""
    choices = split_choices(flags["choices"])
    if rows is not None:
        check_choice_labels(rows, choices, flags["prompt_file"])
    prompts = choice_prompts(flags, rows, choices)
    encoder, hparams, params = load_model(flags)
    ids = choice_ids(prompts, choices, encoder, hparams["n_ctx"], flags["shots"])
    scores = [choice_scores(context, continuations, choices, params, hparams["n_head"])
              for context, continuations in progress_bar("choosing", "text", least=2)(ids)]
    return print_choices(*scores[0], choices) if rows is None else print_chosen(prompts, scores, choices)


def run_task(flags):
    """gpt2.py --classify or --choices, its texts read and checked before the model is loaded."""
    rows = task_rows(flags, "classify" if flags["classify"] else "choose for")
    if not flags["classify"]:
        return answer_choices(flags, rows)
    if rows is None and not flags["prompt"]:
        raise ValueError("there is nothing to classify: give a text")
    return classify_texts(flags, head_folder(flags), rows)


def head_folder(flags):
    """Where --classify's head is: beside --adapters (a LoRA classifier run's folder, or its adapters.npz) when it
    is there, as that run saved it; else in the model's folder."""
    adapters = flags["adapters"]
    if adapters is not None:
        beside = adapters if os.path.isdir(adapters) else os.path.dirname(adapters)
        if os.path.isfile(os.path.join(beside, "head.npz")):
            return beside
    return flags["model_dir"] or os.path.join(flags["models_dir"], flags["model_size"])


# ---------------------------------------------------------------------------------------------
# The commands

def gpt2_main(prompt=None, n_tokens_to_generate=40, model_size="124M", models_dir="models", model_dir=None,
              temperature=0.0, top_k=None, top_p=None, seed=None, ignore_eos=False, score=False, stride=None,
              tokens=False, prompt_file=None, n_samples=None, each_line=False, classify=False, choices=None,
              template=None, shots=0, shots_from=None, adapters=None):
    """Print GPT-2's continuation of a prompt as it is generated, and return it.

    Downloads OpenAI's checkpoint into models_dir/model_size on first use, or uses the folder
    --model_dir as it is. With --score, print how likely the model finds the prompt instead
    (per token, total, perplexity). With --classify, print the class probabilities of the head that
    train.py --task classify trained; with --choices, the likeliest of a few answers (zero- or few-shot).
    With --prompt_file, those two take a labeled file (CSV or JSONL) and print a row per text, then
    the accuracy against its labels.

    Args:
        prompt: the text to continue, score, classify or answer, given first, in quotes; "" starts from <|endoftext|>
        n_tokens_to_generate: how many tokens to add (fewer if the model writes <|endoftext|>)
        model_size: 124M, 355M, 774M or 1558M
        models_dir: where model folders are kept, relative to the current directory
        model_dir: a model folder to use as it is, e.g. one train.py wrote; nothing is downloaded
        temperature: 0 is greedy; above 0, sample from softmax(logits / temperature)
        top_k: sample only among the k likeliest tokens
        top_p: then only among the fewest likeliest tokens whose probabilities sum to p
        seed: makes a sampled run repeatable; with --shots, which examples are drawn (none: 0)
        ignore_eos: keep going past <|endoftext|> instead of stopping there
        score: print how likely the model finds the prompt instead of continuing it
        stride: with --score: how far windows move on long texts (none: half the context)
        tokens: with --score: a line per token even for texts over 256 tokens
        prompt_file: read the prompt verbatim from this UTF-8 file instead (a labeled file for tasks); - reads stdin
        n_samples: print this many samples of the continuation, each under a header (needs a temperature)
        each_line: with --prompt_file and --score, --classify or --choices: each non-empty line a text, a row per line
        classify: print each class's probability from train.py --task classify's head.npz (beside --adapters first)
        choices: score these answers after the prompt, e.g. "positive|negative" (\\n in the prompt is then a newline)
        template: with --choices: the prompt around each text, e.g. "Review: {text}\\nSentiment:" (\\n is a newline)
        shots: with --choices: this many labeled examples before each prompt (few-shot), drawn from --shots_from
        shots_from: with --shots: the labeled file (CSV or JSONL) the examples are drawn from
        adapters: LoRA adapters to merge into the model at load: a train.py --lora_rank run's folder or adapters.npz
    """
    if not isinstance(classify, bool) and prompt is None and prompt_file is None:
        prompt, classify = str(classify), True  # `--classify "a text"`: fire hands the text to the switch
    check_gpt2_flags(dict(locals()))  # first: locals() is the flags alone
    if classify or choices is not None:
        return run_task(dict(locals()))
    text = prompt if prompt_file is None else read_text(prompt_file, "--prompt_file")
    if score and not text:
        raise ValueError("there is nothing to score: " + ("give a prompt" if prompt_file is None else
                                                           f"--prompt_file {prompt_file} is empty"))
    encoder, hparams, params = load_model(dict(locals()))
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
        progress = progress_bar(f"{n_samples} sample{'s' if n_samples > 1 else ''}", "token")
        return print_samples(gpt2.generate_many(inputs, params, n_head, n_tokens_to_generate, n_samples, **sampling,
                                                progress=progress), encoder)
    return print_stream(gpt2.stream(inputs, params, n_head, n_tokens_to_generate, **sampling), encoder)


def load_model(flags):
    """(encoder, hparams, params) of the model the flags name, with --adapters merged into its weights."""
    from utils import load_encoder_hparams_and_params, read_adapters, with_adapters  # requests etc. only now

    encoder, hparams, params = load_encoder_hparams_and_params(flags["model_size"], flags["models_dir"],
                                                               flags["model_dir"])
    if flags["adapters"] is not None:
        from train import merge_lora

        tensors, rank, alpha, _ = read_adapters(flags["adapters"])
        params = merge_lora(with_adapters(params, tensors, rank, alpha, flags["adapters"]))
    return encoder, hparams, params


def gpt2_command():
    run_command(gpt2_main, 'python gpt2.py "PROMPT" [--flag value ...]', GPT2_TEXT_FLAGS)


UTILS_TEXT_FLAGS = ("model_size", "models_dir", "model_dir", "adapters", "out", "to")


def utils_main(model_size="124M", models_dir="models", model_dir=None, adapters=None, out=None, to=None):
    """Print a model's hparams and every parameter's shape, or with --out and --to, convert its folder.

        python utils.py --model_size 124M
        python utils.py --model_dir models/124M --out gpt2-hf --to hf
        python utils.py --adapters models/124M-my_text --out my_text-peft --to hf

    Args:
        model_size: 124M, 355M, 774M or 1558M (downloaded on first use, as gpt2.py does)
        models_dir: where model folders are kept, relative to the current directory
        model_dir: a model folder to use as it is, in OpenAI's layout or Hugging Face's
        adapters: LoRA adapters instead of a model: a run's folder or its adapters.npz, or a PEFT adapter folder
        out: with --to: a new or empty folder to save the model (or the adapters) into
        to: with --out: the layout to save in: openai (TensorFlow's checkpoint) or hf (Hugging Face's safetensors)
    """
    flags = dict(locals())
    given = given_flags(utils_main, flags)
    if model_dir is not None:
        refuse([name for name in given if name in ("model_size", "models_dir")],
               ("does not go", "do not go"), "with --model_dir, which names the model folder itself")
    if adapters is not None:
        refuse([name for name in given if name in ("model_size", "models_dir", "model_dir")],
               ("does not go", "do not go"), "with --adapters, which converts the adapters alone")
    if (out is None) != (to is None):
        raise ValueError("--out and --to go together: --out FOLDER --to hf (or --to openai) converts the model")
    if adapters is not None:
        return convert_or_print_adapters(adapters, out, to)
    if out is not None:
        return convert_model(out, to, model_size, models_dir, model_dir)
    from utils import load_encoder_hparams_and_params, param_shapes

    _, hparams, params = load_encoder_hparams_and_params(model_size, models_dir, model_dir)
    shapes = param_shapes(params)
    print(json.dumps(hparams))
    for name, shape in shapes.items():
        print(f"{name:28} {shape}")
    print(f"{sum(int(np.prod(shape)) for shape in shapes.values()):,} parameters")


def convert_model(out, to, model_size, models_dir, model_dir):
    """utils.py --out --to: the model folder converted, and said so (with the way to a LoRA run's adapters)."""
    from utils import ADAPTERS_FILE, convert_model_folder

    convert_model_folder(out, to, model_size, models_dir, model_dir)
    print(f"saved {model_dir or os.path.join(models_dir, model_size)} to {out} in "
          f"{'Hugging Face' if to == 'hf' else 'OpenAI'}'s layout")
    if model_dir is not None and os.path.isfile(os.path.join(model_dir, ADAPTERS_FILE)):
        print(f"note: the model holds {model_dir}'s LoRA adapters merged; to keep them apart too: python utils.py "
              f"--adapters {model_dir} --out DIR --to {to}", file=sys.stderr)


def convert_or_print_adapters(adapters, out, to):
    """utils.py --adapters: convert them (--out, --to), or print their settings and every matrix's shape."""
    from utils import convert_adapters, read_adapters

    if out is not None:
        convert_adapters(adapters, out, to)
        return print(f"saved the adapters of {adapters} to {out} as " +
                     ("a PEFT adapter folder" if to == "hf" else "adapters.npz"))
    tensors, rank, alpha, targets = read_adapters(adapters)
    print(json.dumps({"rank": rank, "alpha": alpha, "targets": targets}))
    for name, array in sorted(tensors.items(), key=lambda item: [int(part) if part.isdigit() else part
                                                                  for part in item[0].split("/")]):
        print(f"{name:28} {list(array.shape)}")
    print(f"{sum(array.size for array in tensors.values()):,} parameters")


def utils_command():
    run_command(utils_main, "python utils.py [--model_size 124M | --model_dir DIR | --adapters PATH] "
                            "[--out DIR --to hf|openai]",
                UTILS_TEXT_FLAGS)


# ---------------------------------------------------------------------------------------------
# train.py: the command line of a fine-tuning run (finetune.py)

TRAIN_TEXT_FLAGS = ("data", "task", "model_size", "models_dir", "model_dir", "out", "save_format", "val_data",
                    "lr_schedule", "lora_targets")
LR_SCHEDULES, TASKS, SAVE_FORMATS = ("constant", "cosine"), ("lm", "classify"), ("openai", "hf")
LORA_TARGETS = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")  # train.LORA_TARGETS' names


def check_train_flags(flags):
    """Every flag of train_main that can be checked before anything is read."""
    check_switches(flags, ("keep_best", "model_only", "resume"))
    if flags["data"] is None:
        raise ValueError("give the text to learn: --data PATH (a UTF-8 file)")
    for name in ("steps", "batch_size", "seq_len", "accumulate"):
        gpt2.check_whole(flags[name], f"--{name}", 1)
    for name in ("warmup", "seed", "eval_every", "sample_every", "save_every"):
        gpt2.check_whole(flags[name], f"--{name}", 0)
    for name in ("lr", "min_lr", "weight_decay", "grad_clip", "lm_weight"):
        least = "above 0 (e.g. 1e-4)" if name == "lr" else ">= 0"
        if flags[name] is not None and not (gpt2.is_real(flags[name]) and flags[name] >= 0 and
                                            (flags[name] > 0 or name != "lr")):
            raise ValueError(f"--{name} must be a number {least}, not {flags[name]!r}")
    check_schedule(flags)
    given = given_flags(train_main, flags)
    check_training_less(flags, given)
    for name, values in (("task", TASKS), ("save_format", SAVE_FORMATS)):
        if flags[name] not in values:
            raise ValueError(f"--{name} must be {' or '.join(values)}, not {flags[name]!r}")
    if flags["task"] == "lm":
        refuse([name for name in given if name == "lm_weight"], ("goes", "go"), "with --task classify")
    if flags["model_dir"] is not None:
        refuse([name for name in given if name in ("model_size", "models_dir")],
               ("does", "do"), "not go with --model_dir, which names the starting model's folder itself")
    if flags["keep_best"]:
        refuse([name for name in given if name == "save_every"], ("does", "do"),
               "not go with --keep_best, which saves whenever the validation loss improves")


def check_training_less(flags, given):
    """--lora_rank, --lora_alpha, --lora_targets, --train_blocks."""
    gpt2.check_whole(flags["lora_rank"], "--lora_rank", 0)
    if flags["train_blocks"] is not None:
        gpt2.check_whole(flags["train_blocks"], "--train_blocks", 1)
    if not flags["lora_rank"]:
        refuse([name for name in given if name in ("lora_alpha", "lora_targets")], ("goes", "go"), "with --lora_rank")
    if flags["lora_alpha"] is not None and not (gpt2.is_real(flags["lora_alpha"]) and flags["lora_alpha"] > 0):
        raise ValueError(f"--lora_alpha must be a number above 0, not {flags['lora_alpha']!r}")
    targets = flags["lora_targets"].split(",")
    unknown = [target for target in targets if target not in LORA_TARGETS]
    if unknown or len(set(targets)) < len(targets):
        raise ValueError(f"--lora_targets must name each of {', '.join(LORA_TARGETS)} once at most, separated by "
                         f"commas, not {flags['lora_targets']!r}")


def check_schedule(flags):
    if flags["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"--lr_schedule must be {' or '.join(LR_SCHEDULES)}, not {flags['lr_schedule']!r}")
    if flags["lr_schedule"] == "constant":
        refuse([name for name in ("min_lr", "decay_steps") if flags[name] is not None], ("goes", "go"),
               "with --lr_schedule cosine")
    if flags["decay_steps"] is not None:
        gpt2.check_whole(flags["decay_steps"], "--decay_steps", flags["warmup"] + 1)


def train_main(data=None, task="lm", model_size="124M", models_dir="models", model_dir=None, out=None,
               save_format="openai", steps=200, batch_size=4, seq_len=256, lr=1e-4, warmup=20, lr_schedule="constant",
               min_lr=None, decay_steps=None, weight_decay=0.0, grad_clip=1.0, accumulate=1, seed=0, val_data=None,
               lm_weight=0.0, lora_rank=0, lora_alpha=None, lora_targets="c_attn", train_blocks=None, eval_every=25,
               sample_every=50, save_every=50, keep_best=False, model_only=False, resume=False):
    """Fine-tune GPT-2 on a text of your own, or to label texts, and save it in OpenAI's checkpoint format (or HF's).

    Starts from OpenAI's model (downloaded on first use, as gpt2.py does) or from a model folder,
    and saves into --out, which gpt2.py --model_dir then uses as it is.

    Args:
        data: the text to learn, a UTF-8 file (classify: a CSV file with text and label columns, or .jsonl)
        task: lm (learn the text) or classify (learn to label texts: a head on the last token, GPT-1's recipe)
        model_size: the starting model: 124M, 355M, 774M or 1558M
        models_dir: where model folders are kept, relative to the current directory
        model_dir: start from this model folder instead (e.g. an earlier run's --out)
        out: the folder to save to (none: beside the starting model, named after --data)
        save_format: openai (TensorFlow's checkpoint, as OpenAI's) or hf (Hugging Face's, as transformers saves)
        steps: steps in all (with --resume too): each learns from batch_size x accumulate windows
        batch_size: windows of the text per step; memory grows with batch_size x seq_len
        seq_len: tokens per window, at most the model's context (1024); the main lever for speed and memory
        lr: the learning rate after warmup (gpt-2-simple's; nanoGPT's 3e-5 is gentler, for longer runs)
        warmup: steps over which the rate rises linearly to lr, so the first steps do not jolt the model
        lr_schedule: constant (the rate stays lr) or cosine (falls to min_lr by decay_steps, as nanoGPT's)
        min_lr: with cosine: the rate it falls to (none: lr / 10, nanoGPT's)
        decay_steps: with cosine: the step it reaches min_lr at (none: --steps as the run begins; kept on --resume)
        weight_decay: AdamW's decay of the weight matrices (0: a short fine-tune needs no pull towards 0)
        grad_clip: largest global norm of the gradients, as nanoGPT (0: no clipping)
        accumulate: batches whose gradients add up to one step: a larger batch in the same memory
        seed: makes the run repeatable (which windows each step learns from)
        val_data: a UTF-8 file to measure the validation loss on (none: the last 10% of --data; of each class)
        lm_weight: classify: times the language-model loss added to the task's (0: Hugging Face's and rasbt's)
        lora_rank: train LoRA adapters of this rank instead of the weights (0: off; 8 is PEFT's default)
        lora_alpha: LoRA's update is scaled by lora_alpha / lora_rank (none: the rank, so 1, as PEFT and the paper)
        lora_targets: the linears LoRA adapts, comma-separated, of c_attn, attn.c_proj, c_fc, mlp.c_proj (c_attn: PEFT's)
        train_blocks: train only the last N blocks, ln_f and the head, not wte or wpe (none: every block)
        eval_every: steps between validation losses (also at step 0 and at the end)
        sample_every: lm: steps between short samples, to see the model change (also at the end; 0: only then)
        save_every: steps between saves (also at the end; 0: only at the end)
        keep_best: save only when the validation loss improves, so --out holds the best model seen
        model_only: at the end, delete train_state.npz (twice the model's size): the model stays, not resumable
        resume: go on with the run saved in --out, up to --steps in all
    """
    flags = dict(locals())
    check_train_flags(flags)
    from finetune import fine_tune  # the run loads tqdm, the loader and the training code only now

    fine_tune(flags, given_flags(train_main, flags))


def train_command():
    run_command(train_main, "python train.py --data TEXT_FILE [--flag value ...]", TRAIN_TEXT_FLAGS)
