"""The full-attention arm of the `tiny` study with and without repeated pretraining windows, read back from its run
folders (no report: the Infini arms of these seeds were not run): per seed, the pretraining's last validation and
copied-text losses, the first fine-tuning validation with the first digit's loss under 1.0 and with the validation
loss under 0.1, the last validation loss, and exact match at 1× on both haystacks.

    python reports/tiny-plateau/full_arm.py runs/tiny-plateau-full runs/tiny-plateau-full-r75 > full_arm.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from infini_llama.train import read_metrics


def read_arm(folder: Path, length: int = 256) -> dict:
    pretraining = read_metrics(folder / "pretrain" / "metrics.jsonl", "val")[-1]
    validations = read_metrics(folder / "finetune-lr=0.002" / "metrics.jsonl", "val")
    later = [v for v in validations if v["step"] > 0]
    exact = {}
    for haystack in ("repeat", "book"):
        summary = json.loads((folder / "eval" / f"passkey-{haystack}" / "summary.json").read_text())
        (at,) = [r for r in summary["results"]["by_length"] if r["length"] == length]
        exact[haystack] = at["exact"]["rate"]
    return {
        "pretrain_val_loss": round(pretraining["loss"], 4),
        "pretrain_copy_loss": round(pretraining["copy_loss"], 4),
        "first_digit_under_1_at": next((v["step"] for v in later if v["answer_token_losses"][1] < 1.0), None),
        "val_loss_under_0.1_at": next((v["step"] for v in later if v["loss"] < 0.1), None),
        "last_val_loss": round(validations[-1]["loss"], 5),
        "exact_at_1x": exact,
    }


def main() -> None:
    out = {}
    for study in map(Path, sys.argv[1:]):
        config = json.loads((study / "study.json").read_text())
        repeats = config.get("pretrain", {}).get("repeat_fraction", 0.0)
        out[f"repeat_fraction={repeats:g}"] = {
            seed.name: read_arm(seed / "full") for seed in sorted(study.glob("seed-*")) if (seed / "full").is_dir()
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
