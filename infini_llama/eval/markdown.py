"""Markdown pieces every report shares: tables, images, percentages with their intervals, file-name slugs."""

from __future__ import annotations

import re
from collections.abc import Sequence


def slug(text: str) -> str:
    """A file-name piece for a run's label: runs of characters other than letters, digits and ``._=+-`` become one
    "-". The kept characters tell apart labels that differ only in them (``gate_init=-2`` and ``gate_init=2``)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-").lower() or "run"


def pct(p: dict) -> str:
    return f"{100 * p['rate']:.0f}% ({p['successes']}/{p['n']}) [{100 * p['ci_low']:.0f}–{100 * p['ci_high']:.0f}]"


def pct_or_dash(scores: dict | None) -> str:
    return pct(scores["exact"]) if scores is not None else "–"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def image(name: str, alt: str) -> list[str]:
    return [f"![{alt}]({name})", ""]
