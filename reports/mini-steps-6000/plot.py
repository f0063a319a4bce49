"""The screen's fine-tuning answer loss per 100 steps, a line per seed: the 3,000-step arm of ../mini-steps/ (the
same seeds, recipe and fine-tuning draws) beside this screen's 6,000 steps."""

import json
import sys
from pathlib import Path

here = Path(__file__).parent
sys.path.insert(0, str(here.parent))
from answer_loss import plot  # noqa: E402

runs = {
    "3,000 steps (../mini-steps/)": (here.parent / "mini-steps" / "results.json", "infini-finetune.steps=3000"),
    "6,000 steps": (here / "results.json", "infini-finetune.steps=6000"),
}
panels = {title: {s: e[arm] for s, e in json.loads(path.read_text()).items()} for title, (path, arm) in runs.items()}
plot(panels, here / "finetune_loss.png", xmax=6000, width=5)
