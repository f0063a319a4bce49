"""The few lines a study prints when it ends: exact passkey accuracy per arm and length, one table per haystack.

Read from the study's results.json data (one seed: `seed_results`; several: `across_seeds`, whose means are shown);
REPORT.md holds everything else (intervals, depths, perplexity, gates).
"""

from __future__ import annotations

from typing import Any

HAYSTACK_NAMES = {"repeat": "classic filler", "book": "held-out text"}


def _rows_one_seed(results: dict) -> tuple[list[tuple[str, dict[str, dict[float, float]]]], int | None]:
    rows = []
    train_len = None
    for arm in results["arms"].values():
        train_len = arm.get("training_length", train_len)
        for task in arm.get("passkey", {}).values():
            cells: dict[str, dict[float, float]] = {}
            for haystack, data in task["haystacks"].items():
                length_of = arm["training_length"]
                cells[haystack] = {c["length"] / length_of: c["exact"]["rate"] for c in data["by_length"]}
            rows.append((task["label"], cells))
    return rows, train_len


def _rows_across_seeds(summary: dict) -> tuple[list[tuple[str, dict[str, dict[float, float]]]], int | None]:
    rows = []
    train_len = None
    for row in summary["rows"]:
        cells: dict[str, dict[float, float]] = {}
        for haystack, data in row["haystacks"].items():
            cells[haystack] = {c["multiple"]: c["exact"]["mean"] for c in data}
            for c in data:
                if c["multiple"] == 1:
                    train_len = c["length"]
        rows.append((row["label"], cells))
    return rows, train_len


def _multiple(m: float) -> str:
    return f"{m:g}×"


def summary_table(results: dict[str, Any]) -> str:
    """The end-of-study table, or one line saying where the numbers are if `results` has no passkey rows."""
    try:
        across = "rows" in results
        rows, train_len = _rows_across_seeds(results) if across else _rows_one_seed(results)
    except (KeyError, TypeError, ZeroDivisionError):
        return "[study] (no passkey summary: see REPORT.md)"
    if not rows:
        return "[study] (no passkey summary: see REPORT.md)"
    seeds = results.get("seeds") or []
    what = f"mean over {len(seeds)} seeds" if across else f"seed {results.get('seed', 0)}"
    width = max(len(label) for label, _ in rows) + 2
    lines = []
    haystacks = list(dict.fromkeys(h for _, cells in rows for h in cells))
    for haystack in haystacks:
        multiples = sorted({m for _, cells in rows for m in cells.get(haystack, {})})
        name = HAYSTACK_NAMES.get(haystack, haystack)
        length = f"; 1× = {train_len:,} tokens" if train_len else ""
        lines.append(f"[study] exact passkey accuracy (%), {name}, {what}{length}")
        lines.append("  " + "arm".ljust(width) + "".join(_multiple(m).rjust(7) for m in multiples))
        for label, cells in rows:
            if haystack not in cells:
                continue
            values = "".join(
                (f"{100 * cells[haystack][m]:.0f}" if m in cells[haystack] else "-").rjust(7) for m in multiples
            )
            lines.append("  " + label.ljust(width) + values)
    return "\n".join(lines)
