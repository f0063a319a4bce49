"""Key-kind tables of the Infini arm's validation grids: the tiny preset against hard-sigmoid gates started open."""

import json
import sys
from pathlib import Path

from infini_llama.study.results import by_key_kind

out = {}
for run in ("base", "hs2"):
    runs = {}
    for seed_dir in sorted(Path(f"runs/{run}").glob("seed-*")):
        arm = seed_dir / "infini"
        if not (arm / "passkey-book.done").exists():
            continue
        entry = {"grids": {}}
        for h in ("repeat", "book"):
            g = arm / "eval" / f"passkey-{h}"
            summ = json.loads((g / "summary.json").read_text())["results"]
            entry["grids"][h] = {
                "by_length": [
                    {"length": r["length"], "exact": round(r["exact"]["rate"], 4)} for r in summ["by_length"]
                ],
                "by_length_and_key_kind": [
                    {
                        "length": r["length"],
                        "key_kind": r["key_kind"],
                        **{
                            k: (round(v, 4) if isinstance(v, float) else v)
                            for k, v in r["exact"].items()
                            if k != "key_totals"
                        },
                    }
                    for r in by_key_kind(g)
                ],
            }
        gates = json.loads((arm / "eval" / "gates" / "summary.json").read_text())["results"]["gates"]
        entry["gates_per_head"] = [[round(x, 3) for x in layer] for layer in gates]
        ft = json.loads((arm / "finetune-lr=0.002.done").read_text())
        entry["finetune"] = {k: ft[k] for k in ("seconds", "val_loss", "steps")}
        runs[seed_dir.name] = entry
    out[run] = runs
json.dump(out, sys.stdout, indent=1)
