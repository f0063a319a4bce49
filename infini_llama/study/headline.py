"""The README's headline tables, made from the reports' results.json, so that the numbers cannot drift.

A headline block in a Markdown file is the table between a line `<!-- headline: REPORT_FOLDER -->` and a line
`<!-- /headline -->`; its numbers are the across-seed means of REPORT_FOLDER/results.json. The test suite checks
every block against its JSON; `python -m infini_llama.study.headline README.md` rewrites them.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from infini_llama.eval.markdown import table

BLOCK = re.compile(r"(<!-- headline: (?P<folder>[^ ]+) -->\n)(?P<table>.*?)(<!-- /headline -->)", re.DOTALL)
MULTIPLES = (1.0, 2.0, 4.0, 8.0)
# Row labels of a study's results -> how the headline names them, in this order.
ROWS = {
    "infini": "Infini",
    "full": "full attention",
    "full (RoPE dynamic NTK)": "full attention + dynamic NTK RoPE",
    "infini (memory off)": "Infini, memory off",
}


def headline_table(results: dict, haystack: str = "repeat") -> str:
    """Exact match % on `haystack`, mean over the seeds, at 1×, 2×, 4× and 8× the training length."""
    by_label = {row["label"]: row for row in results["rows"]}
    lines = []
    for label, name in ROWS.items():
        lengths = {x["multiple"]: x for x in by_label[label]["haystacks"][haystack]}
        lines.append([name] + [f"{100 * lengths[m]['exact']['mean']:.0f}" for m in MULTIPLES])
    return "\n".join(table(["arm"] + [f"{m:g}×" for m in MULTIPLES], lines)) + "\n"


def render(text: str, root: Path) -> str:
    """`text` with every headline block's table made anew from its folder's results.json (under `root`)."""

    def fill(match: re.Match) -> str:
        results = json.loads((root / match["folder"] / "results.json").read_text())
        return match.group(1) + headline_table(results) + match.group(4)

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)] or [Path("README.md")]
    for path in paths:
        path.write_text(render(path.read_text(), path.parent))
        print(f"headline tables of {path} made from their results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
