"""Draw the validation losses of several train.py runs on one plot, from their log.csv files.

    python benchmarks/plot_runs.py models/124M-full models/124M-lora --labels full "LoRA r 8" --out runs.png

Each run is a line of its validation loss by step, named by --labels (default: the folders' names); the
training losses are drawn thin beneath them.
"""
import argparse
import csv
import os

from matplotlib.figure import Figure


def losses(folder, column):
    """[(step, loss)] of a run's log.csv where the column has a value."""
    with open(os.path.join(folder, "log.csv"), encoding="utf-8") as f:
        return [(int(row["step"]), float(row[column])) for row in csv.DictReader(f) if row.get(column)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="train.py's --out folders")
    parser.add_argument("--labels", nargs="+", help="a name for each run (default: the folder's)")
    parser.add_argument("--out", default="runs.png", help="the picture to write")
    args = parser.parse_args()
    labels = args.labels or [os.path.basename(os.path.normpath(run)) for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(args.runs)} runs and {len(labels)} labels: give one label per run")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, (run, label) in enumerate(zip(args.runs, labels)):
        color = f"C{i % 10}"  # matplotlib's ten default colors
        ax.plot(*zip(*losses(run, "train_loss")), color=color, linewidth=0.6, alpha=0.5)
        ax.plot(*zip(*losses(run, "val_loss")), color=color, marker="o", label=f"{label}, validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
