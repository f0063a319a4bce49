"""Infini's test grids against the baseline with YaRN at evaluation, key by key: reads the study folder's grids
(`runs/study`, the tiny-cpu run) and the YaRN grids written by the commands in README.md (`runs/yarn`), writes
comparison.json. The differences, intervals and verdicts are the study's own (`scoring.paired_difference`, a
bootstrap over keys)."""

import json
import sys
from pathlib import Path

from infini_llama.eval.scoring import paired_difference
from infini_llama.study.results import grid_samples

study, yarn, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
# The study's row and YaRN at fixed factors: "best" is the one of these with Infini's smallest lead; YaRN with its
# factor following each prompt's length (`--rope-factor length`) is compared on its own.
FIXED = {"dynamic NTK": "full/eval/passkey-rope-{h}", **{f"YaRN ×{f}": f"yarn{f}-{{h}}" for f in (2, 4, 8)}}
ROWS = {**FIXED, "YaRN ×length": "yarnlength-{h}"}
found = []
for seed in range(5):
    for haystack in ("repeat", "book"):
        ours = grid_samples(study / f"seed-{seed}" / "infini" / "eval" / f"passkey-{haystack}")
        rows = {}
        for name, folder in ROWS.items():
            where = study / f"seed-{seed}" if name == "dynamic NTK" else yarn / f"seed-{seed}"
            rows[name] = grid_samples(where / folder.format(h=haystack))
        for length in sorted({key[0] for key in ours}):
            cells = sorted(key for key in ours if key[0] == length)
            entry = {
                "seed": seed,
                "haystack": haystack,
                "length": length,
                "infini": sum(ours[c] for c in cells) / len(cells),
                "rows": {},
            }
            for name, theirs in rows.items():
                entry["rows"][name] = {
                    "exact": sum(theirs[c] for c in cells) / len(cells),
                    **paired_difference([ours[c] for c in cells], [theirs[c] for c in cells], [c[2] for c in cells]),
                }
            entry["best"] = min(FIXED, key=lambda n: entry["rows"][n]["difference"])
            found.append(entry)
out.write_text(json.dumps(found, indent=1) + "\n")
print(f"wrote {out}: {len(found)} (seed, haystack, length) entries")
