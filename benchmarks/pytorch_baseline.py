"""PyTorch's forward + backward of GPT-2 124M on the CPU, the baseline train.py is compared with (issue 17).

Not a dependency of the project: run it with a virtual environment of its own, e.g.
    python -m venv /tmp/venv-torch && /tmp/venv-torch/bin/pip install torch transformers
    /tmp/venv-torch/bin/python benchmarks/pytorch_baseline.py

Hugging Face's GPT2LMHeadModel(GPT2Config()), randomly initialised, dropout 0, float32, torch.set_num_threads(2),
the same work as train.loss_and_grads: logits for [4, 256] token ids, mean cross-entropy over every position,
backward. Prints seconds per call (median of --repeat after one warm-up), tokens/s, and the peak resident memory
of a child process that does one call (as bench.py's LAUNCHER measures train.py's).

bench.py --torch_python PATH uses it to take turns with train.py in one run: --serve reads a line per step from
stdin and answers each with the step's seconds; --child does one step and prints its peak memory in kB.

--adamw makes a step a whole fine-tuning step, as bench.py's train less rows time train.py's: forward, backward,
gradients clipped to a global norm of 1, then torch.optim.AdamW (lr 1e-4, weight decay 0.1) on what trains.
--lora R trains Hugging Face PEFT's LoRA adapters of rank R instead of the weights (get_peft_model with
LoraConfig(r=R): PEFT's own defaults for GPT-2, c_attn adapted, no dropout), which needs peft installed too.
"""
import argparse
import os
import resource
import subprocess
import sys
import time


def step(model, inputs, targets, optimizer=None):
    """Forward and backward; with an optimizer, then the gradients clipped and one AdamW step."""
    import torch
    import torch.nn.functional as F

    model.zero_grad(set_to_none=True)
    logits = model(inputs).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    if optimizer is not None:
        torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], 1.0)
        optimizer.step()
    return loss.item()


def setup(n_batch, n_seq, threads, adamw=False, lora=0):
    """(model, inputs, targets, AdamW over what trains or None): GPT-2 124M, PEFT's LoRA of rank `lora` if not 0."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).float()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora, task_type="CAUSAL_LM", fan_in_fan_out=True))
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4, weight_decay=0.1) if adamw else None
    ids = torch.randint(0, model.config.vocab_size, (n_batch, n_seq + 1))
    return model, ids[:, :-1], ids[:, 1:], optimizer


def serve(model, inputs, targets, optimizer):
    step(model, inputs, targets, optimizer)  # warm up (and AdamW's moments made)
    print("ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        step(model, inputs, targets, optimizer)
        print(time.perf_counter() - start, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", action="store_true", help="one call, then print this process's peak memory")
    parser.add_argument("--serve", action="store_true", help="a step per line read from stdin, answering seconds")
    parser.add_argument("--adamw", action="store_true", help="a whole step: clipping and AdamW after the backward")
    parser.add_argument("--lora", type=int, default=0, help="train PEFT's LoRA adapters of this rank on c_attn")
    args = parser.parse_args()
    if (args.adamw or args.lora) and not args.serve:
        parser.error("--adamw and --lora go with --serve: the timed and --child runs are a forward + backward")
    if args.serve:
        return serve(*setup(args.batch, args.seq, args.threads, args.adamw, args.lora))
    if not args.child:  # first, while this process is small: a child's peak memory starts from its parent's
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--batch", str(args.batch),
                                "--seq", str(args.seq), "--threads", str(args.threads)], capture_output=True, text=True)
        peak_mb = int(child.stdout.split()[-1]) / 1024  # Linux reports kB
    model, inputs, targets, _ = setup(args.batch, args.seq, args.threads)
    if args.child:
        step(model, inputs, targets)
        return print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    import torch

    print(f"torch {torch.__version__}, attention: {model.config._attn_implementation}, {args.threads} threads")
    step(model, inputs, targets)  # warm up
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        step(model, inputs, targets)
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    print(f"fwd+bwd {args.batch}x{args.seq}: {seconds:.2f} s ({', '.join(f'{t:.2f}' for t in times)}), "
          f"{args.batch * args.seq / seconds:.0f} tokens/s, peak memory {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
