"""Exact passkey accuracy by where the needle starts, read back from passkey grids whose depths were chosen so that
each falls on its own filler sentence (one grid per model and length).

    python reports/tiny-depth/positions.py LABEL=GRID [LABEL=GRID ...]   # GRID: an eval folder (samples.jsonl)
        [--near 128] [--out positions.json] [--figure positions.png]

For each grid: per needle start (token), the exact matches over its prompts with the interval at the level of the
key, the number of memory updates between the key and the question, and whether a segment boundary cuts either of
the needle's two copies of the key (its prompt rebuilt with the grid's settings and `--vocab-size`'s built-in
tokenizer); and the totals for needles starting within the first `--near` tokens and after them, with and without
a cut copy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

from infini_llama.data.tokenizer import load_tokenizer
from infini_llama.eval.passkey import make_passkey_sample
from infini_llama.eval.passkey_grid import GRID_SPLITS
from infini_llama.eval.scoring import clustered_proportion, key_totals

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent


def exact(rows: list[dict]) -> dict:
    return clustered_proportion(key_totals([r["exact"] for r in rows], [r["sample"] for r in rows]))


def copies_cut(tokenizer, settings: dict, row: dict) -> list[bool]:
    """Whether a segment boundary falls inside each copy of the key in the row's needle (the prompt rebuilt)."""
    sample = make_passkey_sample(
        tokenizer, row["length"], row["depth"], seed=settings["seed"], index=row["sample"],
        stream=GRID_SPLITS[settings["split"]], key_digits=settings["key_digits"], haystack=settings["haystack"],
        unit=settings["unit"], bos=settings["bos"],
    )  # fmt: skip
    ids, digits, size = sample.input_ids, row["answer_ids"][1:], settings["segment_len"]
    starts = [i for i in range(sample.needle_start, sample.needle_end) if ids[i : i + len(digits)] == digits]
    if len(starts) != 2 or starts[-1] + len(digits) - 1 != row["key_last_token"]:
        raise SystemExit(f"could not find the key's two copies in the rebuilt prompt of {row['cell']}")
    return [i // size != (i + len(digits) - 1) // size for i in starts]


def read_grid(label: str, folder: Path, near: int, tokenizer) -> dict:
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
    lengths = {r["length"] for r in rows}
    if len(lengths) != 1:
        raise SystemExit(f"{folder}: one length per grid, found {sorted(lengths)}")
    starts: dict[int, list[dict]] = {}
    for r in rows:
        starts.setdefault(r["needle_position"], []).append(r)
    summary = json.loads((folder / "summary.json").read_text())
    cut = {s: any(copies_cut(tokenizer, summary["settings"], group[0])) for s, group in starts.items()}
    return {
        "label": label,
        "folder": str(folder),
        "length": lengths.pop(),
        "segment_len": summary["settings"].get("segment_len"),
        "near": near,
        "by_start": [
            {
                "start": s,
                "depth": group[0]["depth"],
                "memory_updates": group[0]["memory_updates"],
                "key_copy_cut": cut[s],
                "exact": exact(group),
            }
            for s, group in sorted(starts.items())
        ],  # fmt: skip
        "within_near": exact([r for r in rows if r["needle_position"] < near]),
        "beyond_near": exact([r for r in rows if r["needle_position"] >= near]),
        "by_place": {
            f"{'near' if is_near else 'far'}, {'cut' if is_cut else 'whole'}": exact(group)
            for is_near in (True, False)
            for is_cut in (True, False)
            if (
                group := [
                    r for r in rows if (r["needle_position"] < near) == is_near and cut[r["needle_position"]] == is_cut
                ]
            )
        },  # fmt: skip
    }


def plot(grids: list[dict], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for g in grids:
        xs = [r["start"] for r in g["by_start"]]
        ax.plot(xs, [100 * r["exact"]["rate"] for r in g["by_start"]], marker=".", label=f"{g['label']}")
    ax.set_xscale("log")
    ax.set(xlabel="token where the needle starts (log scale)", ylabel="exact match (%)", ylim=(-3, 103))
    ax.set_title("passkey accuracy by the needle's position in the prompt")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grids", nargs="+", help="LABEL=FOLDER")
    parser.add_argument("--near", type=int, default=128, help="needles starting before this token count as near")
    parser.add_argument("--vocab-size", type=int, default=2048, help="the built-in tokenizer's vocabulary")
    parser.add_argument("--out", type=Path, default=HERE / "positions.json")
    parser.add_argument("--figure", type=Path, default=HERE / "positions.png")
    args = parser.parse_args()
    tokenizer = load_tokenizer(None, vocab_size=args.vocab_size)
    grids = []
    for item in args.grids:
        label, _, folder = item.partition("=")
        grids.append(read_grid(label, Path(folder), args.near, tokenizer))
    args.out.write_text(json.dumps(grids, indent=1) + "\n")
    plot(grids, args.figure)
    places = ["near, whole", "near, cut", "far, whole", "far, cut"]
    print(f"| grid | length | needle before token {args.near} | after | " + " | ".join(places) + " |")
    print("|---|---|---|---|" + "---|" * len(places))
    for g in grids:
        cells = [g["within_near"], g["beyond_near"], *(g["by_place"].get(p) for p in places)]
        print(f"| {g['label']} | {g['length']:,} | " + " | ".join(_cell(c) for c in cells) + " |")


def _cell(p: dict | None) -> str:
    return "–" if p is None else f"{100 * p['rate']:.0f}% ({p['successes']}/{p['n']})"


if __name__ == "__main__":
    main()
