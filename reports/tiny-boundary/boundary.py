"""The `tiny` model with segments of 256: its answers after prompts of whole segments, with and without fine-tuning
prompts moved so that the answer starts a segment. Reads the study folder and the offset grids, writes
boundary.json and boundary.png next to this file.

    python reports/tiny-boundary/boundary.py runs/tiny-boundary runs/tiny-boundary-offset
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
ARMS = {"infini": "no prompt moved", "infini-passkey.boundary_share=0.5": "half the movable prompts moved"}


def validations(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "val"]


def grid(folder: Path) -> dict[str, dict]:
    """Exact answers per length, with the first two digits' hit counts."""
    by_length = defaultdict(list)
    for line in (folder / "samples.jsonl").open():
        r = json.loads(line)
        by_length[r["length"]].append(r)
    table = {}
    for length, rows in sorted(by_length.items()):
        said = [(r["key"], r["prediction"].strip()) for r in rows]
        table[str(length)] = {
            "prompts": len(rows),
            "exact": sum(r["exact"] for r in rows),
            "first_digit_right": sum(p[:1] == k[:1] for k, p in said),
            "second_digit_right": sum(p[1:2] == k[1:2] for k, p in said),
            "wrong_answers": [f"{k} -> {p}" for k, p in said if k != p][:4],
        }
    return table


def main(study: Path, offset: Path) -> None:
    result = {}
    for arm, label in ARMS.items():
        run = study / arm / "finetune-lr=0.002"
        vals = validations(run)
        result[arm] = {
            "label": label,
            "boundary_share": json.loads((run / "run.json").read_text())["data"].get("boundary_share", 0.0),
            "validation": [[r["step"], round(r["loss"], 5), round(r["boundary_loss"], 5)] for r in vals],
            "grid_whole_segments": grid(study / arm / "eval" / "passkey-repeat"),
            "grid_held_out_text": grid(study / arm / "eval" / "passkey-book"),
            "grid_offset": grid(offset / arm) if (offset / arm).is_dir() else None,
        }
    (HERE / "boundary.json").write_text(json.dumps(result, indent=1) + "\n")
    fig, axes = plt.subplots(1, len(result), figsize=(5.2 * len(result), 3.4), sharey=True)
    for ax, entry in zip(axes, result.values(), strict=True):
        steps, loss, boundary = zip(*entry["validation"], strict=True)
        ax.plot(steps, loss, marker=".", label="answers where packing put them")
        ax.plot(steps, boundary, marker=".", label="answers at a segment boundary")
        ax.set(title=entry["label"], xlabel="fine-tuning step", yscale="log")
    axes[0].set_ylabel("validation loss on the answer")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "boundary.png", dpi=110)
    for arm, entry in result.items():
        for name in ("grid_whole_segments", "grid_held_out_text", "grid_offset"):
            if entry[name]:
                print(arm, name, {length: row["exact"] for length, row in entry[name].items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
