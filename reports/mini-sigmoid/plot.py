"""The screen's fine-tuning answer loss per 100 steps, one panel per arm, a line per seed (from results.json)."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(__file__).parent
results = json.loads((here / "results.json").read_text())
arms = list(next(iter(results.values())))
fig, axes = plt.subplots(1, len(arms), figsize=(4 * len(arms), 3.2), sharey=True)
for ax, arm in zip(axes, arms, strict=True):
    for seed, entry in results.items():
        curve = entry[arm]["finetune_answer_loss_per_100_steps"]
        ax.plot([100 * (i + 1) for i in range(len(curve))], [c["answer_loss"] for c in curve], label=seed)
    ax.set(
        title=arm.replace("infini-", "").replace("infini", "preset (hard sigmoid, β = 2)"), xlabel="step", yscale="log"
    )
    ax.axvline(400, color="grey", lw=0.5, ls=":")  # the end of the curriculum
axes[0].set_ylabel("answer loss (mean over 100 steps)")
axes[0].legend()
fig.tight_layout()
fig.savefig(here / "finetune_loss.png", dpi=110)
