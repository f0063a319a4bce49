"""Lease P's pretraining runs, read back from their `metrics.jsonl`: the validation loss per token and per
character (through `corpus_stats.json`'s characters per token of the run's vocabulary), the loss on copied text,
the step where the validation loss is lowest, and a figure of both losses against the step.

    python reports/paper-h200-screen/pretraining.py RUN [RUN ...]      # run folders (run.json, metrics.jsonl)
        [--out pretraining.json] [--figure pretraining.png]

A run's label is its attention, vocabulary size and share of repeated windows, from its run.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

from infini_llama.train import read_metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent


def chars_per_token(stats: dict) -> dict[int, float]:
    return {v["vocab_size"]: v["validation_chars_per_token"] for v in stats["vocabularies"]}


def read_run(folder: Path, per_char: dict[int, float]) -> dict:
    """One run's validations (step, loss, loss per character, copy loss), its best step and its tokens/s."""
    run = json.loads((folder / "run.json").read_text())
    vocab, attention = run["model"]["vocab_size"], run["model"]["attention"]
    repeats = run["train"].get("repeat_fraction", 0.0)
    ratio = per_char.get(vocab)
    rows = [
        {"step": r["step"], "loss": round(r["loss"], 4), "copy_loss": r.get("copy_loss") and round(r["copy_loss"], 4),
         "loss_per_char": ratio and round(r["loss"] / ratio, 4)}
        for r in read_metrics(folder / "metrics.jsonl", "val")
    ]  # fmt: skip
    rates = [r["tokens_per_s"] for r in read_metrics(folder / "metrics.jsonl", "train")[1:] if r.get("tokens_per_s")]
    best = min(rows, key=lambda r: r["loss"]) if rows else None
    return {
        "label": f"{attention}, vocabulary {vocab:,}" + (f", {repeats:.0%} of windows repeated" if repeats else ""),
        "folder": folder.name,
        "attention": attention,
        "vocab_size": vocab,
        "repeat_fraction": repeats,
        "chars_per_token": ratio,
        "lowest_validation": best,
        "tokens_per_s": round(sorted(rates)[len(rates) // 2]) if rates else None,
        "validations": rows,
    }


def plot(runs: list[dict], out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for run in runs:
        steps = [r["step"] for r in run["validations"]]
        (line,) = axes[0].plot(steps, [r["loss_per_char"] for r in run["validations"]], label=run["label"])
        axes[1].plot(steps, [r["copy_loss"] for r in run["validations"]], color=line.get_color(), label=run["label"])
        axes[1].plot(steps, [r["loss"] for r in run["validations"]], color=line.get_color(), ls=":", lw=0.8)
    lowest = min(r["loss_per_char"] for run in runs for r in run["validations"])
    axes[0].set_ylim(lowest - 0.02, lowest + 0.3)  # the first validations lie far above: the runs differ near the end
    axes[0].set(title="validation loss", xlabel="step", ylabel="nats per character")
    axes[1].set(title="on copied text (dotted: validation loss)", xlabel="step", ylabel="nats per token")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--stats", type=Path, default=HERE / "corpus_stats.json")
    parser.add_argument("--out", type=Path, default=HERE / "pretraining.json")
    parser.add_argument("--figure", type=Path, default=HERE / "pretraining.png")
    args = parser.parse_args()
    per_char = chars_per_token(json.loads(args.stats.read_text()))
    runs = [read_run(folder, per_char) for folder in args.runs]
    args.out.write_text(json.dumps(runs, indent=1) + "\n")
    plot(runs, args.figure)
    print("| run | lowest validation loss (step) | per character | on copied text there | last: loss / copied |")
    print("|---|---|---|---|---|")
    num = lambda value: "–" if value is None else f"{value:.3f}"  # noqa: E731
    for run in runs:
        best, last = run["lowest_validation"], run["validations"][-1]
        print(f"| {run['label']} | {best['loss']:.3f} ({best['step']}) | {num(best['loss_per_char'])} "
              f"| {num(best['copy_loss'])} | {last['loss']:.3f} / {num(last['copy_loss'])} "
              f"(step {last['step']}) |")  # fmt: skip


if __name__ == "__main__":
    main()
