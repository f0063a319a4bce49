"""The `mini` screens' fine-tuning answer-loss figure: one panel per arm, a line per seed, from the
`finetune_answer_loss_per_100_steps` of reports/mini-sigmoid/extract.py's results.json."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURRICULUM_STEPS = 400  # the `mini` preset's curriculum over needle distance, marked on every panel


def plot(panels: dict[str, dict[str, dict]], out: Path, xmax: int | None = None, width: float = 4.0) -> None:
    """`panels`: title -> {seed: that seed's results.json entry for the arm}."""
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.2), sharey=True)
    for ax, (title, runs) in zip(axes, panels.items(), strict=True):
        for seed, entry in runs.items():
            curve = entry["finetune_answer_loss_per_100_steps"]
            ax.plot([100 * (i + 1) for i in range(len(curve))], [c["answer_loss"] for c in curve], label=seed)
        ax.set(title=title, xlabel="step", yscale="log")
        if xmax:
            ax.set_xlim(0, xmax)
        ax.axvline(CURRICULUM_STEPS, color="grey", lw=0.5, ls=":")
    axes[0].set_ylabel("answer loss (mean over 100 steps)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
