"""The screen's fine-tuning answer loss per 100 steps, one panel per arm, a line per seed: the preset's 1,500 steps
(from ../mini-sigmoid/results.json, the same seeds, pretraining and prompts) beside this screen's arms."""

import json
import sys
from pathlib import Path

here = Path(__file__).parent
sys.path.insert(0, str(here.parent))
from answer_loss import plot  # noqa: E402

preset = json.loads((here.parent / "mini-sigmoid" / "results.json").read_text())
screen = json.loads((here / "results.json").read_text())
panels = {"preset (1,500 steps)": {seed: arms["infini"] for seed, arms in preset.items()}}
for arm in next(iter(screen.values())):
    title = arm.removeprefix("infini-").replace("finetune.steps=3000", "3,000 steps").replace("-", ", ")
    panels[title] = {seed: arms[arm] for seed, arms in screen.items()}
plot(panels, here / "finetune_loss.png", xmax=3000)
