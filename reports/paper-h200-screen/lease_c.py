"""Lease C read back: the fine-tuning validation curves of its two arms against the first screen's, by tokens
(lease C's steps hold 8 sequences, the first screen's 16), and what the Infini arm's grid answers hold digit by
digit. Writes lease-C.json and lease-C.png next to this file.

    python reports/paper-h200-screen/lease_c.py
"""

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
LEASE = HERE / "lease-C"
TOKENS_PER_STEP = {"lease C": 8 * 4096, "first screen": 16 * 4096}


def validations(metrics: Path) -> list[dict]:
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [r for r in records if r["kind"] == "val"]


def curves() -> dict[str, dict]:
    """Validation loss (and the loss per answer token, where logged) by fine-tuning step, per run."""
    runs = {}
    for arm in ("infini", "full"):
        vals = validations(LEASE / arm / "finetune-lr=0.0001" / "metrics.jsonl")
        runs[f"lease C: {arm}, LR 1e-4 held"] = {
            "tokens_per_step": TOKENS_PER_STEP["lease C"],
            "val": [[r["step"], round(r["loss"], 5)] for r in vals],
            "answer_tokens": [[r["step"], [round(x, 4) for x in r["answer_token_losses"]]] for r in vals],
        }
    first = json.loads((HERE / "results.json").read_text())["arms"]
    for name, label in (("infini-finetune.lr=0.0001", "infini"), ("full-finetune.lr=0.0001", "full")):
        curve = first[name]["finetune_curves"][0]
        runs[f"first screen: {label}, LR 1e-4 cosine"] = {
            "tokens_per_step": TOKENS_PER_STEP["first screen"],
            "val": curve["val"],
        }
    return runs


def answers() -> dict[str, dict]:
    """Per grid length: exact answers, first digit right, and the second digit equal to the key's second or
    to its last digit (the Infini arm writes the key's first digit and then, mostly, its last)."""
    out = {}
    for task in ("passkey-repeat", "passkey-memory-off-repeat"):
        rows = [json.loads(line) for line in (LEASE / "infini" / "eval" / task / "samples.jsonl").open()]
        by_length = defaultdict(list)
        for r in rows:
            by_length[r["length"]].append(r)
        table = {}
        for length, group in sorted(by_length.items()):
            said = [(r["key"], r["prediction"].strip()) for r in group]
            n = len(said)
            table[str(length)] = {
                "prompts": n,
                "exact": sum(r["exact"] for r in group),
                "first_digit_right": sum(p[:1] == k[:1] for k, p in said),
                "second_digit_right": sum(p[1:2] == k[1:2] for k, p in said),
                "second_digit_is_the_last": sum(p[1:2] == k[-1:] for k, p in said),
                "digit_accuracy_teacher_forced": round(sum(r["digit_acc"] for r in group) / n, 4),
                "examples": [f"{k} -> {p}" for k, p in said[:6]],
            }
        out[task] = table
    return out


def selection() -> dict:
    done = json.loads((LEASE / "infini" / "select.done").read_text())
    (candidate,) = done["candidates"]
    return {
        "length": done["length"],
        "prompts": done["samples"],
        "exact": candidate["exact"]["successes"],
        "digit_accuracy": round(candidate["digit_acc"]["mean"], 4),
        "val_loss": round(candidate["val_loss"], 4),
    }


def plot(runs: dict[str, dict], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, run in runs.items():
        steps, losses = zip(*run["val"], strict=True)
        style = "-" if name.startswith("lease C") else "--"
        ax.plot([s * run["tokens_per_step"] / 1e6 for s in steps], losses, style, marker=".", label=name)
    ax.axhline(1.84, color="grey", lw=0.5, ls=":")
    ax.text(1, 2.05, "guessing each digit", color="grey", fontsize=7)
    ax.set(xlabel="fine-tuning tokens (M)", ylabel="validation loss on the answer", yscale="log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    runs = curves()
    result = {"curves": runs, "answers": answers(), "selection": selection()}
    (HERE / "lease-C.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(runs, HERE / "lease-C.png")
    for task, table in result["answers"].items():
        for length, row in table.items():
            print(task, length, {k: v for k, v in row.items() if k != "examples"})
    print("selection", result["selection"])


if __name__ == "__main__":
    main()
