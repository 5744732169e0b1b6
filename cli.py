"""The command lines of gpt2.py and utils.py: flags checked once, prompt files read, results printed, errors shown as one line.

Each check is a small function used wherever it applies; the model's own checks (gpt2.check_*)
are called with flag="--" so that their messages name the flags. run() gives every command the
same ending: an `error: ...` line and exit code 1 for a ValueError or OSError, 130 for Ctrl-C.
"""
import codecs
import inspect
import sys

import numpy as np

import gpt2
from gpt2 import EOT

GPT2_TEXT_FLAGS = ("prompt", "model_size", "models_dir", "model_dir", "prompt_file")  # taken verbatim, never as numbers
TOKEN_LINES = 256  # --score prints a line per token up to this many tokens, and beyond it only with --tokens
GENERATION_FLAGS = ("n_tokens_to_generate", "temperature", "top_k", "top_p", "seed", "ignore_eos", "n_samples")


def run(main, text_flags=()):
    """Run main(**flags) as this process's command line, with fire.

    text_flags: the flags to take verbatim (fire would turn "1e3" into a number). A lone "-" after a flag is that flag's value (stdin), not fire's separator. Results are
    printed by main itself, so fire prints nothing more."""
    import fire

    argv = []
    for arg in sys.argv[1:]:
        if arg == "-" and argv and argv[-1].startswith("--") and "=" not in argv[-1]:
            argv[-1] += "=-"
        else:
            argv.append(arg)
    try:
        fire.Fire(fire.decorators.SetParseFns(**dict.fromkeys(text_flags, str))(main), command=argv, serialize=lambda result: None)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `python gpt2.py ... | head` closed the pipe: not an error
        sys.stdout = None
        sys.exit(0)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


# ---------------------------------------------------------------------------------------------
# Checks of flags, each written once

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
    run(gpt2_main, GPT2_TEXT_FLAGS)


def print_params(model_size="124M", models_dir="models"):
    """Print hparams and every parameter's shape: python utils.py --model_size 124M"""
    check_texts(dict(locals()), ("model_size", "models_dir"))
    import json

    from utils import load_encoder_hparams_and_params, param_shapes

    _, hparams, params = load_encoder_hparams_and_params(model_size, models_dir)
    shapes = param_shapes(params)
    print(json.dumps(hparams))
    for name, shape in shapes.items():
        print(f"{name:28} {shape}")
    print(f"{sum(int(np.prod(shape)) for shape in shapes.values()):,} parameters")


def utils_command():
    run(print_params, ("model_size", "models_dir"))
