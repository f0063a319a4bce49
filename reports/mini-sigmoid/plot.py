"""The screen's fine-tuning answer loss per 100 steps, one panel per arm, a line per seed (from results.json)."""

import json
import sys
from pathlib import Path

here = Path(__file__).parent
sys.path.insert(0, str(here.parent))
from answer_loss import plot  # noqa: E402

results = json.loads((here / "results.json").read_text())
preset = "preset (hard sigmoid, β = 2)"
titles = {arm: arm.replace("infini-", "").replace("infini", preset) for arm in next(iter(results.values()))}
panels = {title: {seed: arms[arm] for seed, arms in results.items()} for arm, title in titles.items()}
plot(panels, here / "finetune_loss.png")
