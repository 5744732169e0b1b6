"""What the tests share, written once: the model shapes, the reference texts, the one way to run a command as a
user does, the one-line-error assertion, and the comparisons with the TensorFlow reference. No test file imports
another; they all import from here (and conftest.py holds the fixtures)."""
import math
import os
import signal
import socket
import subprocess
import sys
import time
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # gpt2.py, train.py, ... live here

# Real model shapes (OpenAI's hparams) cut down to few layers: the code paths and the matrix
# shapes are the real ones, the depth only repeats them.
SHAPES = {
    "tiny": dict(n_vocab=50257, n_ctx=64, n_embd=64, n_head=4, n_layer=2),
    "124M": dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=2),
    "355M": dict(n_vocab=50257, n_ctx=1024, n_embd=1024, n_head=16, n_layer=1),
    "774M": dict(n_vocab=50257, n_ctx=1024, n_embd=1280, n_head=20, n_layer=1),
    "1558M": dict(n_vocab=50257, n_ctx=1024, n_embd=1600, n_head=25, n_layer=1),
}

# ---------------------------------------------------------------------------------------------
# Reference texts

PROMPT = "Alan Turing theorized that computers would one day become"
# Texts whose token ids two tokenizers must agree on: spaces, tabs and newlines, accents, CJK, emoji, contractions.
TOKENIZER_TEXTS = [PROMPT, "Hello world", " leading space, \ttabs\n\nand newlines  ", "naïve café, 東京, emoji 🤖, don't",
                   "1234567 3.14159 $$$ ---> <html>"]
# Dickens, A Tale of Two Cities (1859), public domain; repeated, so that the tiny model can learn it in a few steps.
DICKENS = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
           "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
           "it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had "
           "everything before us, we had nothing before us, we were all going direct to Heaven, we were all going "
           "direct the other way.\n")


def model_seed(shape):
    """The seed of a shape's random weights, from its name alone: a test sees the same model in a
    full run and under -k."""
    return zlib.crc32(shape.encode())


def long_text(n_words, seed=0):
    """A text of n_words common English words in a seeded random order, ending with ".\\n"."""
    words = ["the", "river", "ran", "past", "old", "mills", "and", "quiet", "towns", "while", "birds", "sang"]
    rng = np.random.default_rng(seed)
    return " ".join(words[i] for i in rng.integers(0, len(words), n_words)) + ".\n"


# ---------------------------------------------------------------------------------------------
# Running a command as a user does

def closed_port_url():
    """The URL of a port on 127.0.0.1 that nothing listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def start(program, *args, base_url=None, env=None, cwd=None, text=True):
    """`python <program> ...` (gpt2.py, train.py, utils.py) started in the background as a user starts it, never
    reaching beyond 127.0.0.1 (GPT2_BASE_URL is base_url, or a closed port), from the folder cwd. SIGINT is at its default: a
    background process of a non-interactive shell would inherit it ignored, and Ctrl-C would not reach Python."""
    env = {**os.environ, **(env or {}), "GPT2_BASE_URL": base_url or closed_port_url()}
    restore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if os.name == "posix" else None
    return subprocess.Popen([sys.executable, os.path.join(ROOT, program), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text,
                            encoding="utf-8" if text else None, env=env, cwd=cwd, preexec_fn=restore_sigint)


def kill_while_saving(process, out):
    """SIGKILL a train.py process started with --save_every 1 into out in the middle of a save: after its first
    save, as soon as the next one's .saving folder exists."""
    from store import SAVING_DIR

    for line in process.stdout:  # in the loop that saves every step
        if "saved to" in line:
            break
    while not os.path.isdir(os.path.join(out, SAVING_DIR)) and process.poll() is None:
        time.sleep(0.001)
    assert process.poll() is None, "the run ended before it was killed: give it more steps"
    process.kill()
    process.communicate()


def run(program, *args, stdin=b"", base_url=None, env=None, cwd=None, timeout=300):
    """`python <program> ...` run to its end with `stdin` (bytes) piped in: a CompletedProcess whose stdout and
    stderr are text, exactly as printed."""
    process = start(program, *args, base_url=base_url, env=env, cwd=cwd, text=False)
    try:
        out, err = process.communicate(stdin, timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out.decode("utf-8"), err.decode("utf-8"))


def gpt2_cli(*args, **kwargs):
    return run("gpt2.py", *args, **kwargs)


def train_cli(*args, **kwargs):
    return run("train.py", *args, **kwargs)


def straight_and_resumed(start_args, data, folder, steps):
    """A run of `steps` steps in one go, into folder/straight, and the same run stopped at steps // 2 and taken on
    with --resume (given --data alone again), into folder/resumed: the three runs, each checked to pass.
    start_args: the run's flags but --data, --out and --steps (its starting model among them)."""
    half = str(steps // 2)
    runs = [train_cli("--data", data, *start_args, "--out", str(folder / "straight"), "--steps", str(steps)),
            train_cli("--data", data, *start_args, "--out", str(folder / "resumed"), "--steps", half),
            train_cli("--data", data, "--out", str(folder / "resumed"), "--steps", str(steps), "--resume")]
    for result in runs:
        assert result.returncode == 0, result.stderr
    return runs


def assert_one_line_error(result, *fragments, code=1):
    """Exit code 1, nothing on stdout, and a last stderr line "error: ..." holding each fragment."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in last, last


def log_rows(out):
    """The rows of a run's log.csv, as {column: text}."""
    with open(os.path.join(out, "log.csv"), encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    return [dict(zip(header.split(","), row.split(","))) for row in rows]


def data_bytes(out):
    """The bytes of the checkpoint's data file in a model folder."""
    with open(os.path.join(out, "model.ckpt.data-00000-of-00001"), "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------------------
# Against the references

def reference_greedy_text(model_dir, prompt, n):
    """What greedy decoding must print, from the TensorFlow reference, stopping at <|endoftext|>.
    An empty prompt starts from <|endoftext|> itself."""
    from checkpoints import reference_logits
    from encoder import get_encoder

    encoder = get_encoder(os.path.basename(model_dir), os.path.dirname(model_dir))
    return greedy_text(lambda ids: reference_logits(model_dir, ids), encoder, prompt, n)


def greedy_text(logits, encoder, prompt, n):
    """The greedy continuation of prompt by a model given as logits(ids) -> [len(ids), n_vocab], stopping at
    <|endoftext|>. An empty prompt starts from <|endoftext|> itself."""
    ids = encoder.encode(prompt) or [encoder.eot_id]
    start = len(ids)
    for _ in range(n):
        token = int(np.argmax(logits(ids)[-1]))
        if token == encoder.eot_id:
            break
        ids.append(token)
    return encoder.decode(ids[start:])


def reference_choice_log_probs(model_dir, prompt, choice):
    """Each token's log-probability of a choice (ids) after a prompt (ids), from one TensorFlow pass over prompt +
    choice but its last token and a float64 log-softmax."""
    from checkpoints import reference_logits

    logits = reference_logits(model_dir, list(prompt) + list(choice)[:-1])[len(prompt) - 1:].astype(np.float64)
    return logits[np.arange(len(choice)), choice] - np.logaddexp.reduce(logits, axis=-1)


def tensorflow_arrays(model_dir):
    """Every variable as tf.train.load_checkpoint reads it, under the params tree's names."""
    from checkpoints import tensorflow

    reader = tensorflow().train.load_checkpoint(os.path.join(model_dir, "model.ckpt"))
    arrays = {}
    for name in reader.get_variable_to_shape_map():
        key = name.removeprefix("model/")
        if key.startswith("h") and key[1].isdigit():
            layer, rest = key[1:].split("/", 1)
            key = f"blocks/{layer}/{rest}"
        array = reader.get_tensor(name)
        arrays[key] = array[0] if array.ndim == 3 else array
    return arrays


def expected_distribution(logits, temperature, top_k=None, top_p=None):
    """The filtered, renormalized softmax, written out plainly: {id: probability}."""
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))[:top_k]
    weights = [math.exp((logits[i] - logits[order[0]]) / temperature) for i in order]
    total = sum(weights)
    probs = [w / total for w in weights]
    if top_p is not None:
        total, keep = 0.0, 0
        while total < top_p and keep < len(probs):
            total, keep = total + probs[keep], keep + 1
        order, probs = order[:keep], [p / total for p in probs[:keep]]
    return dict(zip(order, probs))


GRADIENT_TOLERANCE = 1e-9  # float64 agrees to about 1e-15; a wrong formula is off by far more


def named_leaves(tree, prefix=""):
    """{"blocks.0.attn.c_attn.w": array, ...} for a tree shaped like params (or any nest of dicts and lists)."""
    if isinstance(tree, (dict, list)):
        branches = tree.items() if isinstance(tree, dict) else enumerate(tree)
        return {name: leaf for key, value in branches for name, leaf in named_leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def as_dtype(params, dtype):
    """A tree shaped like params with every array a new one of dtype (a number, such as a LoRA adapter's scale,
    stays as it is)."""
    if isinstance(params, dict):
        return {key: as_dtype(value, dtype) for key, value in params.items()}
    if isinstance(params, list):
        return [as_dtype(value, dtype) for value in params]
    return np.array(params, dtype) if isinstance(params, np.ndarray) else params


def dotted(name):
    """A flat name as train.py writes it ("blocks/0/attn/c_attn/A") as named_leaves writes it ("blocks.0.attn...")."""
    return name.replace("/", ".")


def picked_leaves(tree, names):
    """{dotted name: tensor} of the tensors of a tree shaped like params with these flat names (train.py's)."""
    leaves = named_leaves(tree)
    return {dotted(name): leaves[dotted(name)] for name in names}


def relative_error(ours, truth):
    """||ours - truth|| / ||truth|| over the whole tensor: independent of its scale, and not thrown by entries
    that are zero or nearly so, where an elementwise relative error means nothing."""
    return float(np.linalg.norm(np.asarray(ours) - truth) / np.linalg.norm(truth))


def assert_same_gradients(function, ours, theirs, tolerance=GRADIENT_TOLERANCE):
    """ours and theirs: trees of gradients; every tensor within tolerance, reported by name."""
    ours, theirs = named_leaves(ours), named_leaves(theirs)
    assert ours.keys() == theirs.keys(), f"{function}: gradients of {sorted(ours)}, expected {sorted(theirs)}"
    errors = {name: relative_error(ours[name], theirs[name]) for name in theirs}
    for name, error in errors.items():
        print(f"{function}: d{name or 'x'} relative error {error:.1e}")
        assert np.shape(ours[name]) == np.shape(theirs[name]), f"{function}: d{name} has the wrong shape"
    bad = {name: error for name, error in errors.items() if not error <= tolerance}
    assert not bad, f"{function}: " + ", ".join(f"d{name or 'x'} relative error {e:.1e} > {tolerance:.0e}"
                                                for name, e in bad.items())


# ---------------------------------------------------------------------------------------------
# Hugging Face's transformers, the reference for its format

def transformers():
    """transformers, imported never to reach Hugging Face's servers, quietly (no progress bars or warnings)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers as hf

    hf.utils.logging.disable_progress_bar()
    return hf


def peft():
    """Hugging Face's PEFT, the reference for its LoRA adapter folders, imported as transformers() is."""
    transformers()
    import peft as hf_peft

    return hf_peft


def torch_params(model):
    """The weights of a transformers GPT2LMHeadModel or GPT2Model as torch holds them, read through its modules
    (not through any file's names), as a float32 NumPy tree shaped like utils' params."""
    body = getattr(model, "transformer", model)

    def array(tensor):
        return tensor.detach().float().numpy().copy()

    def layer(module):
        return {"w": array(module.weight), "b": array(module.bias)}

    def norm(module):
        return {"g": array(module.weight), "b": array(module.bias)}

    blocks = [{"ln_1": norm(h.ln_1), "attn": {"c_attn": layer(h.attn.c_attn), "c_proj": layer(h.attn.c_proj)},
               "ln_2": norm(h.ln_2), "mlp": {"c_fc": layer(h.mlp.c_fc), "c_proj": layer(h.mlp.c_proj)}}
              for h in body.h]
    return {"wte": array(body.wte.weight), "wpe": array(body.wpe.weight), "blocks": blocks, "ln_f": norm(body.ln_f)}


def tensorflow_logits(params, ids, n_head):
    """GPT-2's logits [len(ids), n_vocab] (float32) on a params tree, by the TensorFlow model of tf_reference.py."""
    import tf_reference
    from checkpoints import tensorflow

    tensors, _ = tf_reference.to_tf(params, tensorflow().float32)
    return tf_reference.logits(np.asarray(ids), **tensors, n_head=n_head).numpy()
