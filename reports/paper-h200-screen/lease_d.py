"""Lease D read back: exact answers by whether a segment boundary cuts the needle, per arm and length, from the
grids' samples (every other table is in lease-D/REPORT.md). Writes lease-D.json next to this file.

    python reports/paper-h200-screen/lease_d.py
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
LEASE = HERE / "lease-D"
SEGMENT = 1024  # the paper-h200 model's


def needle_cut(row: dict) -> bool:
    """Whether a segment boundary falls inside the needle's tokens [needle_position, needle_end)."""
    return row["needle_position"] // SEGMENT != (row["needle_end"] - 1) // SEGMENT


def main() -> None:
    result = {}
    for arm, task in (
        ("infini", "passkey-repeat"),
        ("infini", "passkey-memory-off-repeat"),
        ("full", "passkey-repeat"),
    ):
        rows = [json.loads(line) for line in (LEASE / arm / "eval" / task / "samples.jsonl").open()]
        table = {}
        for length in sorted({r["length"] for r in rows}):
            for cut in (False, True):
                group = [r for r in rows if r["length"] == length and needle_cut(r) == cut]
                if group:
                    table.setdefault(str(length), {})["cut" if cut else "whole"] = {
                        "prompts": len(group),
                        "exact": sum(r["exact"] for r in group),
                        "depths": sorted({r["depth"] for r in group}),
                        "wrong": [f"{r['key']} -> {r['prediction'].strip()}" for r in group if not r["exact"]][:6],
                    }
        result[f"{arm}/{task}"] = table
    (HERE / "lease-D.json").write_text(json.dumps(result, indent=1) + "\n")
    for name, table in result.items():
        for length, parts in table.items():
            print(name, length, {k: (v["exact"], v["prompts"], v["depths"]) for k, v in parts.items()})


if __name__ == "__main__":
    main()
