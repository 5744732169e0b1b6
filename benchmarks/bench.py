"""How fast gpt2.py generates, measured against baselines taken in the same run.

    python benchmarks/bench.py --model_size 124M --models_dir models            # real weights
    python benchmarks/bench.py --model_size 124M --models_dir /tmp/bench --random

With --random, a folder without a model gets random weights of the real shape, written by the
helper the tests use (tests/checkpoints.py, needs TensorFlow); speed does not depend on the
values. Without it, the model is loaded (and downloaded if need be) as gpt2.py does.

Each figure is printed next to its baseline, since timings on a shared machine drift:
  decode        ms per new token (16-token prompt, 64 new) / one row times every weight matrix
  long decode   the same with a 768-token prompt and 128 new / the floor plus one read of the KV
                cache (one row times every layer's cached keys and values, at the median length)
  no cache      the same 64 tokens recomputing the whole sequence each step (picoGPT's way)
  prefill       512- and 1024-token prompts: achieved GFLOP/s / sgemm GFLOP/s on the same shapes
  score         a 4096-token text at the default stride, tokens/s / the 1024-token prefill's tokens/s;
                windows overlap, so the ideal is the share of fed positions that are new (about half)
  other sizes   decode / floor for the sizes given with --decode_sizes (355M by default)
  samples       8 samples of one prompt (16 + 64 tokens, sampled at temperature 1, top_k 40), ms
                per step / one sample's ms per token at the same settings (a loop would be 8x)
  score_many    1,000 lines of 8 to 16 tokens (random ids) scored in batches / one by one with score
  cold start    process start to first token: the first run after a download (which checks the
                checksums) against the second
  peak memory   of a process generating 64 tokens, first run and later / size of the weights
  train         forward + backward (train.loss_and_grads) on [4, 256] tokens: tokens/s and GFLOP/s (the matrix
                products of forward and backward, 3x the forward's, attention's included) / sgemm GFLOP/s on the
                same weight-matrix products alone, taking turns; the peak memory of a process doing forward +
                backward alone, and of one doing two AdamW steps on a writable copy of the weights, / the
                weights; one AdamW step's time / the forward + backward's (--train_only: these rows alone)
  train less    a whole step (forward + backward + AdamW) with LoRA (rank 8 on c_attn) and with train_blocks=2 /
                a full step's, taking turns; with --torch_python, PyTorch's full step and PEFT's LoRA step (rank 8
                on c_attn, its default for GPT-2) / this project's, taking turns with them; the peak memory of two
                full steps, of two LoRA steps and of two train_blocks=2 steps, each process alone, / the weights,
                with the second step's seconds (--less_only: these rows alone; --less_peak_only: LoRA's and
                train_blocks=2's memory rows alone, for 1558M)
"""
import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import gpt2  # noqa: E402
import train  # noqa: E402
from utils import DATA_FILE, FILENAMES, VERIFIED_FILE, load_encoder_hparams_and_params  # noqa: E402

SHAPES = {"124M": (768, 12, 12), "355M": (1024, 16, 24), "774M": (1280, 20, 36), "1558M": (1600, 25, 48)}


def timed(f, repeat):
    """Seconds taken by each of `repeat` calls of f."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return times


def best_of(f, repeat):
    """The fastest call: the one least disturbed by the rest of the machine."""
    return min(timed(f, repeat))


def weight_matrices(params):
    """Every matrix a new token is multiplied with, the output projection wte^T included."""
    mats = [m for block in params["blocks"] for m in
            (block["attn"]["c_attn"]["w"], block["attn"]["c_proj"]["w"], block["mlp"]["c_fc"]["w"], block["mlp"]["c_proj"]["w"])]
    return mats + [params["wte"].T]


def decode_floor(params):
    """One row times every weight matrix: the least work decoding a token can do (median of 64,
    the same statistic as decode's)."""
    mats = weight_matrices(params)  # listed once, outside the timed calls
    rows = [np.ones((1, m.shape[0]), np.float32) for m in mats]
    return float(np.median(timed(lambda: [row @ m for row, m in zip(rows, mats)], 64)))


def cache_read(params, n_head, n_positions):
    """One row times every layer's cached keys and values, as attention does for one new token:
    the least extra work a longer context asks for (median of 64, as for the floor)."""
    d_head = params["wte"].shape[1] // n_head
    caches = [(np.ones((n_head, n_positions, d_head), np.float32), np.ones((n_head, n_positions, d_head), np.float32))
              for _ in params["blocks"]]  # one pair per layer, as in the model: together they outgrow the CPU caches
    q, w = np.ones((n_head, 1, d_head), np.float32), np.ones((n_head, 1, n_positions), np.float32)
    return float(np.median(timed(lambda: [(q @ k.transpose(0, 2, 1), w @ v) for k, v in caches], 64)))


def decode(params, n_head, prompt, n_new):
    """(seconds to the first token, seconds per token after it) with the KV cache."""
    times, start = [], time.perf_counter()
    for _ in gpt2.stream(prompt, params, n_head, n_new, stop_id=None):
        times.append(time.perf_counter() - start)
    steps = np.diff(times)
    return times[0], float(np.median(steps))


def decode_against(baseline, params, n_head, prompt, n_new, n_rounds):
    """Decode and its baseline (a function giving seconds) take turns for n_rounds, so that both
    see the machine in the same state. Medians of (baseline, first token, per token seconds) and
    of per token / baseline."""
    rounds = [(baseline(), *decode(params, n_head, prompt, n_new)) for _ in range(n_rounds)]
    base, first, per_token = (float(np.median(column)) for column in zip(*rounds))
    return base, first, per_token, float(np.median([step / b for b, _, step in rounds]))


def no_cache(params, n_head, prompt, n_new):
    """Seconds for n_new tokens, rerunning the whole sequence each time (all positions projected)."""
    ids, start = list(prompt), time.perf_counter()
    for _ in range(n_new):
        ids.append(int(np.argmax(gpt2.gpt2(ids, **params, n_head=n_head)[-1])))
    return time.perf_counter() - start


def prefill_flops(hparams, n):
    """Multiply-adds x2 of a prompt of n tokens: the blocks' matrices, attention, one output row."""
    e, layers = hparams["n_embd"], hparams["n_layer"]
    per_layer = 2 * n * (e * 3 * e + e * e + 2 * e * 4 * e) + 2 * 2 * n * n * e
    return layers * per_layer + 2 * e * hparams["n_vocab"]


def sgemm_rate(params, n):
    """GFLOP/s of the blocks' matrix products alone, for n rows."""
    mats = weight_matrices(params)[:4]  # the first block's
    xs = [np.ones((n, m.shape[0]), np.float32) for m in mats]
    seconds = best_of(lambda: [x @ m for x, m in zip(xs, mats)], 5)
    return sum(2 * n * m.shape[0] * m.shape[1] for m in mats) / seconds / 1e9


# Starts the command and reports its wall time, peak memory and exit status. On Linux a child's
# peak memory (ru_maxrss) starts from its parent's, so the parent must be this small process,
# not the benchmark, which holds the weights itself.
LAUNCHER = """import os, subprocess, sys, time
start = time.perf_counter()
_, status, usage = os.wait4(subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL).pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss, status)"""


def run_peak(cmd):
    """(wall seconds, peak resident MB) of the command cmd, through LAUNCHER."""
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a full pipe would stall the child
        report = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], stdout=subprocess.PIPE, stderr=stderr, text=True)
        seconds, peak_kb, status = report.stdout.split()
        if status != "0":
            stderr.seek(0)
            sys.exit(f"{cmd[1]} failed: {stderr.read().decode(errors='replace')}")
    return float(seconds), int(peak_kb) / 1024  # Linux reports kB


def run_cli(args, n_tokens):
    """(wall seconds, peak resident MB) of `python gpt2.py` generating n_tokens."""
    return run_peak([sys.executable, os.path.join(ROOT, "gpt2.py"), "The quick brown fox", "--n_tokens_to_generate",
                     str(n_tokens), "--ignore_eos", "--model_size", args.model_size, "--models_dir", args.models_dir])


def ensure_model(args):
    model_dir = os.path.join(args.models_dir, args.model_size)
    if args.random and not all(os.path.exists(os.path.join(model_dir, f)) for f in FILENAMES):
        if os.path.isdir(model_dir) and os.listdir(model_dir):
            sys.exit(f"{model_dir} holds part of a model: --random only writes into an empty or new folder")
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from checkpoints import write_model

        n_embd, n_head, n_layer = SHAPES[args.model_size]
        print(f"writing random {args.model_size}-shaped weights to {model_dir} ...", file=sys.stderr)
        write_model(model_dir, dict(n_vocab=50257, n_ctx=1024, n_embd=n_embd, n_head=n_head, n_layer=n_layer))
    return model_dir


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_size", default="124M", choices=list(SHAPES))
    parser.add_argument("--models_dir", default="models")
    parser.add_argument("--random", action="store_true", help="write random weights of the real shape if absent")
    parser.add_argument("--startup_only", action="store_true", help="only the cold start and memory rows (quick for big sizes)")
    parser.add_argument("--decode_sizes", nargs="*", default=["355M"], choices=list(SHAPES),
                        help="other sizes to measure decode / floor for (each loaded, or written with --random)")
    parser.add_argument("--batch_only", action="store_true", help="only the samples and score_many rows")
    parser.add_argument("--train_only", action="store_true", help="only the forward + backward and AdamW rows")
    parser.add_argument("--less_only", action="store_true", help="only the LoRA and train_blocks=2 steps against a "
                        "full step, and the peak memory of each of the three")
    parser.add_argument("--less_peak_only", action="store_true", help="only the peak memory of LoRA and "
                        "train_blocks=2 steps (for 1558M, whose full step does not fit)")
    parser.add_argument("--torch_python", help="a Python with torch and transformers (and peft, for --less_only): "
                        "adds PyTorch's forward + backward, or whole steps, taking turns with train.py's (see "
                        "benchmarks/pytorch_baseline.py)")
    return parser.parse_args()


def main():
    args = parse_args()
    model_dir = ensure_model(args)
    load_encoder_hparams_and_params(args.model_size, args.models_dir)  # any download happens here, untimed
    if args.train_only:
        return print_rows(args, train_rows(args))
    if args.less_only or args.less_peak_only:
        return print_rows(args, less_rows(args))
    if args.batch_only:
        _, hparams, params = load_encoder_hparams_and_params(args.model_size, args.models_dir)
        return print_rows(args, batch_rows(params, hparams["n_head"]))
    rows = startup_rows(args, model_dir)
    if args.startup_only:
        return print_rows(args, rows)
    _, hparams, params = load_encoder_hparams_and_params(args.model_size, args.models_dir)
    rows += batch_rows(params, hparams["n_head"])
    rows += train_rows(args)
    rows += decode_rows(params, hparams["n_head"])
    prefills, prefill = prefill_rows(params, hparams)
    rows += [*prefills, score_row(params, hparams, prefill)]
    del params
    rows += other_size_rows(args)
    print_rows(args, rows)


PROMPT = list(range(1000, 1016))  # the 16-token prompt of the decode rows


def decode_rows(params, n_head):
    """Decode at 16 + 64 against the floor, the same without a cache, and at 768 + 128 against the floor plus
    one read of the cache."""
    decode(params, n_head, PROMPT, 4)  # warm up: page the weights in
    floor, first, per_token, ratio = decode_against(lambda: decode_floor(params), params, n_head, PROMPT, 64, 5)
    rows = [("decode (16 + 64 tokens)", f"{per_token * 1e3:.1f} ms/token", f"floor {floor * 1e3:.1f} ms",
             f"{ratio:.2f}x floor")]
    total = first + 63 * per_token
    slow = no_cache(params, n_head, PROMPT, 64)
    rows.append(("no cache, all logits", f"{slow:.1f} s for 64", f"cached {total:.2f} s",
                 f"{slow / total:.1f}x speedup (at most {slow / (first + 63 * floor):.1f}x at the floor)"))
    # A long context: the cache read grows with it, the rest should not. Its baseline is the floor
    # plus one read of the cache at the median length of the 128 steps (768 + 64 positions).
    long_prompt = list(range(2000, 2768))
    floor_read, _, per_token, ratio = decode_against(
        lambda: decode_floor(params) + cache_read(params, n_head, 768 + 64), params, n_head, long_prompt, 128, 3)
    rows.append(("decode (768 + 128 tokens)", f"{per_token * 1e3:.1f} ms/token",
                 f"floor + cache read {floor_read * 1e3:.1f} ms", f"{ratio:.2f}x (floor + cache read)"))
    return rows


def prefill_rows(params, hparams):
    """512- and 1024-token prompts against the sgemm rate of the same products; also the 1024-token
    prompt's tokens/s, score's baseline."""
    rows, n_head = [], hparams["n_head"]
    for n in (512, 1024):
        prompt_n = list(range(2000, 2000 + n))
        seconds = best_of(lambda: gpt2.gpt2(prompt_n, **params, n_head=n_head, cache=gpt2.kv_cache(params, n_head, n),
                                            last_only=True), 3)
        achieved, sgemm = prefill_flops(hparams, n) / seconds / 1e9, sgemm_rate(params, n)
        rows.append((f"prefill ({n} tokens)", f"{n / seconds:.0f} tokens/s, {achieved:.0f} GFLOP/s",
                     f"sgemm {sgemm:.0f} GFLOP/s", f"{achieved / sgemm:.0%} of sgemm"))
    return rows, 1024 / seconds


def score_row(params, hparams, prefill):
    """A 4096-token text at score's default stride against the 1024-token prefill's tokens/s."""
    n_ctx, text = hparams["n_ctx"], list(range(3000, 3000 + 4096))
    stride = n_ctx // 2  # score's default
    starts = range(0, len(text) - n_ctx + stride, stride)
    fed = sum(min(start + n_ctx, len(text)) - start for start in starts)  # positions the windows run
    scoring = best_of(lambda: gpt2.score(text, params, hparams["n_head"]), 2)
    return (f"score ({len(text)} tokens, stride {stride})", f"{len(text) / scoring:.0f} tokens/s, "
            f"{len(starts)} windows", f"prefill {prefill:.0f} tokens/s",
            f"{len(text) / scoring / prefill:.0%} of prefill (ideal {len(text) / fed:.0%})")


def other_size_rows(args):
    """Decode alone against the floor for the bigger shapes' weight matrices (--decode_sizes)."""
    rows = []
    for size in args.decode_sizes:
        ensure_model(argparse.Namespace(**{**vars(args), "model_size": size}))
        _, hparams, params = load_encoder_hparams_and_params(size, args.models_dir)
        decode(params, hparams["n_head"], PROMPT, 4)
        floor, _, per_token, ratio = decode_against(functools.partial(decode_floor, params), params,
                                                    hparams["n_head"], PROMPT, 64, 3)
        rows.append((f"decode {size} (16 + 64)", f"{per_token * 1e3:.1f} ms/token", f"floor {floor * 1e3:.1f} ms",
                     f"{ratio:.2f}x floor"))
        del params
    return rows


def step_seconds(params, n_head, prompt, n_new, n_samples):
    """Median seconds per step after the first token, sampling at temperature 1 with top_k 40:
    one sample through `stream`, or n_samples side by side through `generate_many`."""
    times = []

    def clock(steps):
        for step in steps:
            times.append(time.perf_counter())
            yield step

    settings = dict(temperature=1.0, top_k=40, seed=0, stop_id=None)
    if n_samples is None:
        for _ in clock(gpt2.stream(prompt, params, n_head, n_new, **settings)):
            pass
    else:
        gpt2.generate_many(prompt, params, n_head, n_new, n_samples, **settings, progress=clock)
    return float(np.median(np.diff(times)))


def batch_rows(params, n_head):
    """8 samples per step against one sample's, and score_many against scoring line by line."""
    step_seconds(params, n_head, PROMPT, 4, 8)  # warm up: page the weights in
    rounds = [(step_seconds(params, n_head, PROMPT, 64, None), step_seconds(params, n_head, PROMPT, 64, 8))
              for _ in range(3)]  # taking turns, so that both see the machine in the same state
    one, eight = (float(np.median(column)) for column in zip(*rounds))
    ratio = float(np.median([b / a for a, b in rounds]))
    rows = [("8 samples (16 + 64 tokens)", f"{eight * 1e3:.1f} ms/step", f"one sample {one * 1e3:.1f} ms/token",
             f"{ratio:.2f}x one sample's step (a loop: 8x)")]

    rng = np.random.default_rng(0)
    lines = [rng.integers(0, 50257, n).tolist() for n in rng.integers(8, 17, 1000)]
    many = timed(lambda: gpt2.score_many(lines, params, n_head), 1)[0]
    alone = timed(lambda: [gpt2.score(line, params, n_head) for line in lines], 1)[0]
    n_tokens = sum(map(len, lines))
    rows.append((f"score_many ({len(lines)} lines, {n_tokens} tokens)", f"{many:.1f} s, {n_tokens / many:.0f} tokens/s",
                 f"one by one {alone:.1f} s", f"{alone / many:.1f}x faster"))
    return rows


TRAIN_SHAPE = (4, 256)  # [n_batch, n_seq] of the training rows

# Training in a process of its own, for its peak memory: forward + backward alone on the loader's weights
# ("fwd+bwd"), or two steps as train.py takes them (step_of: AdamW on writable copies of what trains, the gradients
# dropped before the next step), every tensor trained ("full": weights + gradients + two moments), LoRA ("lora":
# rank 8 on every c_attn, the weights the loader's, the adapters alone copied and updated) or the last two blocks
# and ln_f ("blocks", the others the loader's); the second step's seconds go to the file argv[7], if given.
TRAIN_CHILD = """import sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/benchmarks"]
import numpy as np, train
from bench import step_of
from utils import load_encoder_hparams_and_params
_, hparams, params = load_encoder_hparams_and_params(sys.argv[2], sys.argv[3])
ids = np.random.default_rng(0).integers(0, hparams["n_vocab"], (int(sys.argv[5]), int(sys.argv[6]) + 1))
if sys.argv[4] == "fwd+bwd":
    train.loss_and_grads(ids[:, :-1], ids[:, 1:], params, hparams["n_head"])
else:
    if sys.argv[4] == "lora":
        params = train.add_lora(params, 8, 16, rng=0)
    step = step_of(params, train.trained_names(params, 2 if sys.argv[4] == "blocks" else None), ids, hparams["n_head"])
    for _ in range(2):
        start = time.perf_counter()
        step()
    if len(sys.argv) > 7:
        with open(sys.argv[7], "w") as f:
            f.write(str(time.perf_counter() - start))"""


def train_flops(hparams, n_batch, n_seq, block=gpt2.QUERY_BLOCK):
    """Multiply-adds x2 of forward + backward (3x the forward's): (weight-matrix products, attention's products
    over the query blocks causal_attention computes)."""
    e, layers, rows = hparams["n_embd"], hparams["n_layer"], n_batch * n_seq
    dense = 3 * 2 * rows * (layers * (e * 3 * e + e * e + 2 * e * 4 * e) + e * hparams["n_vocab"])
    pairs = sum(min(start + block, n_seq) * (min(start + block, n_seq) - start) for start in range(0, n_seq, block))
    return dense, 3 * layers * 2 * 2 * n_batch * pairs * e  # q k^T and w v: 2 products of d_head per pair and head


def train_products(params, rows):
    """A function doing forward + backward's weight-matrix products alone, as train.py does them: x w, dy w^T and
    x^T dy for every linear of the blocks, and the tied output projection's a wte^T, dy wte and dy^T a. Each
    result is dropped at once, so its memory is reused: the rate of the products themselves."""
    mats = weight_matrices(params)[:-1]
    xs = [np.ones((rows, m.shape[0]), np.float32) for m in mats]
    dys = [np.ones((rows, m.shape[1]), np.float32) for m in mats]
    wte = params["wte"]
    a, dlogits = np.ones((rows, wte.shape[1]), np.float32), np.ones((rows, wte.shape[0]), np.float32)

    def products():
        for x, m, dy in zip(xs, mats, dys):
            for product in (lambda: x @ m, lambda: dy @ m.T, lambda: x.T @ dy):
                product()
        for product in (lambda: a @ wte.T, lambda: dlogits @ wte, lambda: dlogits.T @ a):
            product()

    return products


def train_rows(args):
    """Forward + backward against the same products alone (and PyTorch's, with --torch_python), taking turns; the
    peak memory of forward + backward and of AdamW steps; one AdamW step's time."""
    _, hparams, params = load_encoder_hparams_and_params(args.model_size, args.models_dir)
    n_batch, n_seq = TRAIN_SHAPE
    ids = np.random.default_rng(0).integers(0, hparams["n_vocab"], (n_batch, n_seq + 1))
    step = lambda: train.loss_and_grads(ids[:, :-1], ids[:, 1:], params, hparams["n_head"])  # noqa: E731
    products, torch_step = train_products(params, n_batch * n_seq), pytorch_server(args)
    step(), products()  # warm up: page the weights in
    rounds = [tuple(settled(f) for f in (products, step, torch_step)) for _ in range(3)]
    alone, both, torch = (float(np.median(column)) for column in zip(*rounds))
    dense, attention = train_flops(hparams, n_batch, n_seq)
    ratio = float(np.median([(dense + attention) / b / (dense / a) for a, b, _ in rounds]))
    tokens = n_batch * n_seq
    rows = [(f"train fwd+bwd {n_batch}x{n_seq}", f"{tokens / both:.0f} tokens/s, {both:.2f} s, "
             f"{(dense + attention) / both / 1e9:.0f} GFLOP/s", f"sgemm {dense / alone / 1e9:.0f} GFLOP/s",
             f"{ratio:.0%} of sgemm")]
    if args.torch_python:
        rows.append((f"PyTorch fwd+bwd {n_batch}x{n_seq}", f"{tokens / torch:.0f} tokens/s, {torch:.2f} s",
                     f"numpy {both:.2f} s", f"numpy {float(np.median([t / b for _, b, t in rounds])):.2f}x as fast"))
    rows += train_memory_rows(args, sum(p.nbytes for p in train.leaves(params)) / 2**20)

    writable, (_, grads) = train.writable_copy(params), step()
    state = train.adamw_state(writable)
    seconds = best_of(lambda: train.adamw(writable, grads, state, lr=1e-4, weight_decay=0.1, max_norm=1.0), 3)
    rows.append(("AdamW step", f"{seconds:.2f} s", f"fwd+bwd {both:.2f} s", f"{seconds / both:.0%} of fwd+bwd"))
    return rows


def less_rows(args):
    """A whole fine-tuning step (forward + backward + AdamW on what trains) with LoRA (rank 8 on every c_attn) and
    with the last two blocks (train_blocks=2), each against a full step, taking turns; the peak memory of two
    full, LoRA and train_blocks=2 steps, each in a process of its own, with its second step's seconds (LoRA's and
    train_blocks=2's alone with --less_peak_only, for a size whose full step does not fit: 1558M). With --torch_python,
    PyTorch's full step and PEFT's LoRA step take their turns too, each against this project's."""
    _, hparams, params = load_encoder_hparams_and_params(args.model_size, args.models_dir)
    n_batch, n_seq = TRAIN_SHAPE
    rows, weights = [], sum(p.nbytes for p in train.leaves(params)) / 2**20
    if not args.less_peak_only:
        ids = np.random.default_rng(0).integers(0, hparams["n_vocab"], (n_batch, n_seq + 1))
        lora = train.add_lora(params, 8, 16, rng=0)
        steps = {"full": step_of(params, train.trained_names(params), ids, hparams["n_head"]),
                 "LoRA (rank 8, c_attn)": step_of(lora, train.trained_names(lora), ids, hparams["n_head"]),
                 "train_blocks=2": step_of(params, train.trained_names(params, 2), ids, hparams["n_head"])}
        theirs = {"PyTorch full": ("full", "--adamw"), "PEFT LoRA (rank 8, c_attn)": ("LoRA (rank 8, c_attn)",
                                                                                       "--adamw", "--lora", "8")}
        if args.torch_python:
            steps.update({name: pytorch_server(args, *flags) for name, (_, *flags) in theirs.items()})
        rounds = [{name: settled(step) for name, step in steps.items()} for _ in range(3)]
        rows += [step_row(rounds, name, theirs[name][0], pytorch=True) if name in theirs else
                 step_row(rounds, name, "full") for name in list(steps)[1:]]
        del steps, lora  # their copies and moments (12 GB at 774M) must not sit beside the children's below
    modes = [("lora", "LoRA"), ("blocks", "train_blocks=2")]
    for mode, name in modes if args.less_peak_only else [("full", "full"), *modes]:
        with tempfile.TemporaryDirectory() as folder:
            seconds = os.path.join(folder, "seconds")
            _, peak = run_peak([sys.executable, "-c", TRAIN_CHILD, ROOT, args.model_size, args.models_dir, mode,
                                str(n_batch), str(n_seq), seconds])
            with open(seconds) as f:
                second = float(f.read())
        rows.append((f"peak memory, 2 {name} steps {n_batch}x{n_seq}", f"{peak:.0f} MB", f"weights {weights:.0f} MB",
                     f"weights + {peak - weights:.0f} MB; the second step {second:.2f} s"))
    return rows


def step_row(rounds, name, against, pytorch=False):
    """A row of less_rows: the median seconds of the step `name` and of the step `against`, and how many times as
    fast `name` is (for PyTorch's steps, how many times as fast this project's `against` is, as train_rows says)."""
    def median(f):
        return float(np.median([f(r) for r in rounds]))

    n_batch, n_seq = TRAIN_SHAPE
    numpy = "numpy " if pytorch else ""
    ratio = median(lambda r: r[name] / r[against] if pytorch else r[against] / r[name])
    return (f"{name} step {n_batch}x{n_seq}", f"{median(lambda r: r[name]):.2f} s",
            f"{numpy}{against} step {median(lambda r: r[against]):.2f} s", f"{numpy}{ratio:.2f}x as fast")


def step_of(params, names, ids, n_head):
    """A function doing one fine-tuning step of the named tensors: forward + backward, then AdamW on writable
    copies of them alone (the full step's: all of them)."""
    tree, trained = train.writable_trained(params, names)
    state = train.adamw_state(trained)

    def step():
        _, grads = train.loss_and_grads(ids[:, :-1], ids[:, 1:], tree, n_head, names)
        train.adamw(trained, grads, state, lr=1e-4, weight_decay=0.1, max_norm=1.0)

    return step


def settled(f):
    """Seconds of the second of two calls of f in a row: the first lets the threads of whatever ran before
    (OpenBLAS's, PyTorch's) stop spinning, and takes back the memory the machine reclaimed meanwhile, as
    happens here after a pause of half a second. A training loop runs its steps back to back like this."""
    f()
    return best_of(f, 1)


def pytorch_server(args, *flags):
    """A function that has pytorch_baseline.py --serve, in args.torch_python, do one forward + backward, or one
    whole step with flags such as --adamw (or nothing, without --torch_python)."""
    if not args.torch_python:
        return lambda: None
    server = subprocess.Popen([args.torch_python, os.path.join(ROOT, "benchmarks", "pytorch_baseline.py"), "--serve",
                               *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if server.stdout.readline().strip() != "ready":
        sys.exit("pytorch_baseline.py --serve did not start")

    def torch_step():
        server.stdin.write("step\n")
        server.stdin.flush()
        server.stdout.readline()

    return torch_step


def train_memory_rows(args, weights):
    """Peak memory of forward + backward, of two AdamW steps, and of PyTorch's forward + backward if asked."""
    n_batch, n_seq = TRAIN_SHAPE
    rows, peaks = [], {}
    for mode, label in (("fwd+bwd", "fwd+bwd"), ("full", "2 AdamW steps")):
        _, peaks[mode] = run_peak([sys.executable, "-c", TRAIN_CHILD, ROOT, args.model_size, args.models_dir, mode,
                                   str(n_batch), str(n_seq)])
        rows.append((f"peak memory, {label} {n_batch}x{n_seq}", f"{peaks[mode]:.0f} MB", f"weights {weights:.0f} MB",
                     f"{peaks[mode] / weights:.2f}x weights"))
    if args.torch_python:
        _, torch = run_peak([args.torch_python, os.path.join(ROOT, "benchmarks", "pytorch_baseline.py"), "--child"])
        rows.append((f"PyTorch peak memory, fwd+bwd {n_batch}x{n_seq}", f"{torch:.0f} MB",
                     f"numpy {peaks['fwd+bwd']:.0f} MB", f"numpy {peaks['fwd+bwd'] / torch:.0%} of PyTorch's"))
    return rows


def startup_rows(args, model_dir):
    """Fresh processes: the first run after a download (no record yet that the checksums passed,
    so they are checked), the second, and the peak memory of each."""
    weights = os.path.getsize(os.path.join(model_dir, DATA_FILE)) / 2**20
    os.remove(os.path.join(model_dir, VERIFIED_FILE))
    cold_first, peak_first = run_cli(args, 1)
    cold_second, _ = run_cli(args, 1)
    _, peak = run_cli(args, 64)
    return [("cold start to first token", f"{cold_first:.2f} s first run", f"{cold_second:.2f} s second run",
             f"first = second + {(cold_first - cold_second) / (weights / 1024):.2f} s/GB"),
            ("peak memory (64 tokens)", f"{peak:.0f} MB, first run {peak_first:.0f} MB", f"weights {weights:.0f} MB",
             f"weights + {peak - weights:.0f} MB, first + {peak_first - weights:.0f} MB")]


def print_rows(args, rows):
    print(f"\n{args.model_size}, numpy {np.__version__}, {os.cpu_count()} cores\n")
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()
