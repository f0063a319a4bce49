"""Lease D read back: exact answers by where a segment boundary cuts the needle (`needle_cut_bucket`: whole, or
after how many of its tokens), per arm and length, from the grids' samples. The study report has this table since
(made after the lease, so lease-D/REPORT.md has not); every other table is there. Writes lease-D.json next to
this file.

    python reports/paper-h200-screen/lease_d.py
"""

import json
from pathlib import Path

from infini_llama.eval.diagnostics import needle_cut_bucket, needle_cut_order

HERE = Path(__file__).parent
LEASE = HERE / "lease-D"
SEGMENT = 1024  # the paper-h200 model's


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
            at = [r for r in rows if r["length"] == length]
            placed = [(needle_cut_bucket(r["needle_position"], r["needle_end"], SEGMENT), r) for r in at]
            for cut in sorted({place for place, _ in placed}, key=needle_cut_order):
                group = [r for place, r in placed if place == cut]
                if group:
                    table.setdefault(str(length), {})[cut] = {
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
