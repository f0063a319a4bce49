"""The screen's fine-tuning answer loss per 100 steps, one panel per arm, a line per seed: the preset's 1,500 steps
(from ../mini-sigmoid/results.json, the same seeds, pretraining and prompts) beside this screen's arms."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(__file__).parent
preset = json.loads((here.parent / "mini-sigmoid" / "results.json").read_text())
screen = json.loads((here / "results.json").read_text())
panels = {"preset (1,500 steps)": {seed: arms["infini"] for seed, arms in preset.items()}}
for arm in next(iter(screen.values())):
    title = arm.removeprefix("infini-").replace("finetune.steps=3000", "3,000 steps").replace("-", ", ")
    panels[title] = {seed: arms[arm] for seed, arms in screen.items()}
fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), sharey=True)
for ax, (title, runs) in zip(axes, panels.items(), strict=True):
    for seed, entry in runs.items():
        curve = entry["finetune_answer_loss_per_100_steps"]
        ax.plot([100 * (i + 1) for i in range(len(curve))], [c["answer_loss"] for c in curve], label=seed)
    ax.set(title=title, xlabel="step", yscale="log", xlim=(0, 3000))
    ax.axvline(400, color="grey", lw=0.5, ls=":")  # the end of the curriculum
axes[0].set_ylabel("answer loss (mean over 100 steps)")
axes[0].legend()
fig.tight_layout()
fig.savefig(here / "finetune_loss.png", dpi=110)
