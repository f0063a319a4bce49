"""Parser of `infini-llama report` (what it runs: `infini_llama.eval.report`)."""

from __future__ import annotations

import argparse

DESCRIPTION = """A Markdown report that puts evaluation runs side by side.

Reads the summary.json of every run folder given (or found below a folder given), and writes report.md,
report.json and PNG figures into --out: passkey accuracy [depth × length] tables with sample counts and Wilson 95%
intervals, one heatmap per run (fixed 0-100% scale), accuracy against length and against the number of memory
updates, multi-needle scores, perplexity against position with the training length marked, and the memory gates."""
EXAMPLES = """examples:
  infini-llama report ev/ --out ev/report                       # every run folder below ev/
  infini-llama report ev/pk ev/pk-off ev/gates --out ev/report  # these runs only
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="Markdown report comparing evaluation runs",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", help="run folders of `infini-llama eval` (or folders holding them)")
    parser.add_argument("--out", required=True, help="folder for report.md, report.json and the figures")
    parser.set_defaults(func="infini_llama.eval.report:run")
