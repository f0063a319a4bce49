"""The gate screen's numbers, per seed and arm, from a study folder brought back without weights.

Per (seed, arm): exact accuracy by length on the validation grids (memory on and off), by length and kind of key,
each key missed at 0.5x-2x (how often, and the commonest wrong answer), the gates at the start and end of
fine-tuning (and how many sit exactly at 0 or 1, where the hard sigmoid has no gradient), the fine-tuning answer
loss per 100 steps, and the stage times. Every haystack's grids are read (the classic filler, and held-out text where
it ran). With --first-keys N, each length also gives the exact rate over its first N keys (samples 0..N-1): the
prompts of a grid with N samples per cell, to compare with a screen that ran that many.
Usage: python extract.py STUDY [--first-keys N] > results.json
"""

import argparse
import json
from pathlib import Path

from infini_llama.study.results import by_key_kind, missed_keys


def rounded(value):
    return round(value, 4) if isinstance(value, float) else value


def first_keys(folder: Path, length: int, keys: int) -> dict:
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line]
    hits = [s["exact"] for s in samples if s["length"] == length and s["sample"] < keys]
    return {"successes": sum(hits), "n": len(hits), "rate": rounded(sum(hits) / len(hits))}


def grid(folder: Path) -> dict:
    results = json.loads((folder / "summary.json").read_text())["results"]
    lengths = [r["length"] for r in results["by_length"]]
    return {
        "by_length": [{"length": r["length"], "exact": rounded(r["exact"]["rate"])} for r in results["by_length"]],
        **({f"first_{args.first_keys}_keys": [{"length": n, **first_keys(folder, n, args.first_keys)} for n in lengths]}
           if args.first_keys else {}),
        "by_length_and_key_kind": [
            {"length": r["length"], "key_kind": r["key_kind"],
             **{k: rounded(v) for k, v in r["exact"].items() if k != "key_totals"}}
            for r in by_key_kind(folder)
        ],
    }  # fmt: skip


def at_bounds(gates: list[list[float]]) -> int:
    return sum(g in (0.0, 1.0) for layer in gates for g in layer)


def arm_entry(arm: Path) -> dict:
    (finetune,) = sorted(p for p in arm.glob("finetune-lr=*") if p.is_dir())
    records = [json.loads(line) for line in (finetune / "metrics.jsonl").read_text().splitlines() if line]
    vals = [r for r in records if r["kind"] == "val"]
    train = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}  # a resumed run repeats steps
    per_100 = []
    for end in range(100, max(train, default=0) + 1, 100):
        losses = [loss for step, loss in train.items() if end - 100 < step <= end]
        per_100.append({"steps": f"{end - 99}-{end}", "answer_loss": rounded(sum(losses) / len(losses))})
    gates_end = json.loads((arm / "eval" / "gates" / "summary.json").read_text())["results"]["gates"]
    gates_start = vals[0]["gates"]
    pretrain = json.loads((arm / "pretrain.done").read_text())
    done = json.loads((arm / f"{finetune.name}.done").read_text())
    grids = sorted(p for p in (arm / "eval").glob("passkey-*") if (p / "summary.json").exists())
    book = arm / "eval" / "passkey-book"
    return {
        "grids": {p.name.removeprefix("passkey-"): grid(p) for p in grids},
        "keys_missed_to_2x": missed_keys(arm / "eval" / "passkey-repeat", 2 * TRAINING_LENGTH)["missed"],
        **({"keys_missed_to_2x_book": missed_keys(book, 2 * TRAINING_LENGTH)["missed"]} if book in grids else {}),
        "gates_after_pretraining": [[round(g, 3) for g in layer] for layer in gates_start],
        "gates_after_finetuning": [[round(g, 3) for g in layer] for layer in gates_end],
        "gates_at_0_or_1": {"after_pretraining": at_bounds(gates_start), "after_finetuning": at_bounds(gates_end),
                            "of": sum(len(layer) for layer in gates_end)},
        "finetune_val_loss": [{"step": r["step"], "loss": rounded(r["loss"])} for r in vals],
        "finetune_answer_loss_per_100_steps": per_100,
        "seconds": {"pretrain": round(pretrain["seconds"]), "finetune": round(done["seconds"])},
        "pretrain_val_loss": rounded(pretrain.get("val_loss")),
    }  # fmt: skip


TRAINING_LENGTH = 1024
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("study", type=Path)
parser.add_argument("--first-keys", type=int, default=0, help="also score each length's first N keys")
args = parser.parse_args()
out = {}
for seed_dir in sorted(args.study.glob("seed-*")):
    out[seed_dir.name] = {
        arm.name: arm_entry(arm) for arm in sorted(seed_dir.iterdir()) if (arm / "gates.done").exists()
    }
print(json.dumps(out, indent=1))
