"""The screen's fine-tuning answer loss per 100 steps, a line per seed: the 3,000-step arm of ../mini-steps/ (the
same seeds, recipe and fine-tuning draws) beside this screen's 6,000 steps."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(__file__).parent
runs = {
    "3,000 steps (../mini-steps/)": (here.parent / "mini-steps" / "results.json", "infini-finetune.steps=3000"),
    "6,000 steps": (here / "results.json", "infini-finetune.steps=6000"),
}
fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.2), sharey=True)
for ax, (title, (path, arm)) in zip(axes, runs.items(), strict=True):
    for seed, arms in json.loads(path.read_text()).items():
        curve = arms[arm]["finetune_answer_loss_per_100_steps"]
        ax.plot([100 * (i + 1) for i in range(len(curve))], [c["answer_loss"] for c in curve], label=seed)
    ax.set(title=title, xlabel="step", yscale="log", xlim=(0, 6000))
    ax.axvline(400, color="grey", lw=0.5, ls=":")  # the end of the curriculum
axes[0].set_ylabel("answer loss (mean over 100 steps)")
axes[0].legend()
fig.tight_layout()
fig.savefig(here / "finetune_loss.png", dpi=110)
