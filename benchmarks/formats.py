"""Load time and peak memory of one GPT-2 in each layout: OpenAI's TensorFlow checkpoint, Hugging Face's
safetensors read by hf_format.py, and the same file read by the safetensors package's NumPy API.

    python benchmarks/formats.py                                  # 1558M's shape, in /tmp/bench-formats
    python benchmarks/formats.py --model_size 124M --models_dir /tmp/bench-formats

The two folders are written once with random weights of the real shape (utils.save_model_folder, then
utils.convert_model_folder: the same tensors in both); speed does not depend on the values. Each row is a fresh
process doing what gpt2.py does before and at its first token: load_encoder_hparams_and_params(model_dir=...), then
one forward pass of one token, which reads every weight. The rows take turns, --rounds times, and the medians are
printed: seconds to loaded and to the first token, the process's peak resident memory (ru_maxrss: pages of a mapped
file count once touched), and at the end its anonymous memory (RssAnon: copies the process owns; a mapped file's
pages are the operating system's cache, which it can drop and read again). The files are in the page cache (they
were just written or read): a cold disk adds the same read to every row that touches all the weights.

  openai, first run   the checkpoint's CRC32Cs are checked (no verified.json yet), as after a download
  openai              later runs
  hf (hf_format)      model.safetensors memory-mapped by hf_format.read_tensors: float32 tensors are views
  hf (safetensors)    the same loader with hf_format.read_tensors replaced by the safetensors package's
                      safe_open(framework="np").get_tensor, which copies each tensor into memory of its own
Then the install size of the safetensors package, which reading by hand does without.
"""
import argparse
import os
import subprocess
import sys
from importlib import metadata

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import SHAPES  # noqa: E402  (n_embd, n_head, n_layer) of each size

# One row's process: load as gpt2.py does (argv: ROOT, the folder, "project" or "safetensors"), one token, and
# the seconds and memory of each step on its last line.
CHILD = """import sys, time
start = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import gpt2, hf_format, utils
if sys.argv[3] == "safetensors":
    from safetensors import safe_open

    def read_tensors(path, entries):
        with safe_open(path, framework="np") as f:
            names = {name.removeprefix(hf_format.PREFIX): name for name in f.keys()}
            return {name: f.get_tensor(names[name]) for name in entries}

    hf_format.read_tensors = read_tensors
_, hparams, params = utils.load_encoder_hparams_and_params(model_dir=sys.argv[2])
loaded = time.perf_counter() - start
gpt2.gpt2([50256], **params, n_head=hparams["n_head"])
first = time.perf_counter() - start
with open("/proc/self/status") as f:
    status = dict(line.split(":", 1) for line in f)
print(loaded, first, int(status["RssAnon"].split()[0]) / 1024)"""

# Starts the row's process and adds its peak memory to its last line. On Linux a child's ru_maxrss starts from its
# parent's, so the parent is this small process, not the benchmark.
LAUNCHER = """import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
out = child.stdout.read()
_, status, usage = os.wait4(child.pid, 0)
print(out.strip().splitlines()[-1] if status == 0 else "failed", usage.ru_maxrss / 1024)"""


def make_folders(args):
    """The OpenAI and Hugging Face folders of args.model_size's shape under args.models_dir, written if absent."""
    from utils import convert_model_folder, save_model_folder

    openai, hf = (os.path.join(args.models_dir, f"{args.model_size}-{layout}") for layout in ("openai", "hf"))
    if not os.path.isfile(os.path.join(openai, "model.ckpt.index")):
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from vocab import vocab_dir

        n_embd, n_head, n_layer = SHAPES[args.model_size]
        hparams = dict(n_vocab=50257, n_ctx=1024, n_embd=n_embd, n_head=n_head, n_layer=n_layer)
        print(f"writing random {args.model_size}-shaped weights to {openai} and {hf} ...", file=sys.stderr)
        save_model_folder(openai, random_params(hparams), hparams, vocab_dir())
    if not os.path.isfile(os.path.join(hf, "model.safetensors")):
        convert_model_folder(hf, "hf", model_dir=openai)
    return openai, hf


def random_params(hparams):
    """A parameter tree of hparams' shapes, small random float32 values."""
    from utils import hf_names, unflatten

    rng = np.random.default_rng(0)
    return unflatten({name: rng.standard_normal(shape, np.float32) * np.float32(0.02)
                      for name, shape in hf_names(hparams).values()}, hparams["n_layer"])


def measure(folder, reader):
    """(seconds to loaded, to the first token, peak MB, anonymous MB at the end) of one fresh process."""
    out = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-c", CHILD, ROOT, folder, reader],
                         capture_output=True, text=True, check=True).stdout.split()
    if out[0] == "failed":
        sys.exit(f"loading {folder} with {reader} failed")
    loaded, first, anonymous, peak = map(float, out)
    return loaded, first, peak, anonymous


def rows(args, openai, hf):
    """Each row's medians over args.rounds rounds, the rows taking turns within a round."""
    from utils import VERIFIED_FILE

    def first_run():
        os.remove(os.path.join(openai, VERIFIED_FILE))
        return measure(openai, "project")

    measure(openai, "project")  # writes verified.json, and pages both files in alike
    measure(hf, "project")
    runs = {"openai, first run": first_run, "openai": lambda: measure(openai, "project"),
            "hf (hf_format)": lambda: measure(hf, "project"), "hf (safetensors)": lambda: measure(hf, "safetensors")}
    results = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            results[name].append(run())
    return {name: [float(np.median(column)) for column in zip(*values)] for name, values in results.items()}


def install_size(name):
    """Bytes of an installed distribution's files (its wheel, unpacked)."""
    files = metadata.distribution(name).files or []
    return sum(os.path.getsize(f.locate()) for f in files if os.path.isfile(f.locate()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_size", default="1558M", choices=list(SHAPES))
    parser.add_argument("--models_dir", default=os.path.join("/tmp", "bench-formats"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    openai, hf = make_folders(args)
    before = os.getloadavg()[0]
    results = rows(args, openai, hf)
    after = os.getloadavg()[0]
    weights = os.path.getsize(os.path.join(hf, "model.safetensors")) / 2**20
    print(f"\n{args.model_size}'s shape, weights {weights:,.0f} MB, median of {args.rounds}, numpy {np.__version__}, "
          f"{os.cpu_count()} cores, load average {before:.2f} before and {after:.2f} after\n")
    print(f"{'':20}  {'loaded':>8}  {'1st token':>9}  {'peak memory':>11}  {'anonymous':>10}")
    for name, (loaded, first, peak, anonymous) in results.items():
        print(f"{name:20}  {loaded:7.2f}s  {first:8.2f}s  {peak:8,.0f} MB  {anonymous:7,.0f} MB")
    print(f"\nsafetensors {metadata.version('safetensors')} installed: {install_size('safetensors') / 2**20:.1f} MB; "
          f"hf_format.py: {os.path.getsize(os.path.join(ROOT, 'hf_format.py')) / 1024:.0f} kB")
    if before > 0.5:  # (after: this benchmark's own load is in it)
        print("note: other work loaded the cores before the run; rerun on a quiet machine for figures to report",
              file=sys.stderr)


if __name__ == "__main__":
    main()
