"""The passkey part of `infini-llama report`: one subsection per haystack (classic filler, held-out text, ...),
each with accuracy by length, the headline depth-0 cells, a depth × length table and heatmap per run, and
accuracy against length and against the number of memory updates."""

from __future__ import annotations

from pathlib import Path

from infini_llama.eval import plots
from infini_llama.eval.diagnostics import bucket_order
from infini_llama.eval.markdown import image, pct, pct_or_dash, slug, table
from infini_llama.eval.prompts import HAYSTACK_LABELS, HAYSTACKS
from infini_llama.eval.records import memory_off_text

HEADLINE_DEPTHS = (0.0, 0.5, 1.0)  # accuracy-vs-length plots: needle farthest from, midway to, next to the question


def haystack_of(run: dict) -> str:
    return run.get("settings", {}).get("haystack", "repeat")


def passkey_section(runs: list[dict], out: Path, figures: list[str]) -> list[str]:
    complete = [r for r in runs if r.get("status") == "complete"]
    md = ["## Passkey retrieval", ""]
    md += [
        "Score: `exact` (the first integer of the greedy answer equals the key). Cells: accuracy (correct/samples) "
        "[95% interval at the level of the key: Wilson at the keys' effective sample size, since a sample index has "
        "the same key in every cell; within one cell, the plain Wilson interval]. Lengths are in tokens unless a run "
        "says otherwise. One subsection per haystack: "
        "the classic filler, and held-out text (a document used in neither pretraining nor fine-tuning).",
        "",
    ]
    if len(complete) < len(runs):
        md += [f"Runs still running (not shown): {', '.join(r['label'] for r in runs if r not in complete)}", ""]
    for haystack in HAYSTACKS:
        group = [r for r in complete if haystack_of(r) == haystack]
        if group:
            md += _haystack_section(group, haystack, out, figures)
    return md


def _haystack_section(runs: list[dict], haystack: str, out: Path, figures: list[str]) -> list[str]:
    md = [f"### Haystack: {HAYSTACK_LABELS[haystack]} (`{haystack}`)", ""]
    lengths = sorted({c["length"] for r in runs for c in r["results"]["by_length"]})
    md += ["#### Accuracy by length, all depths", ""]
    by_length = {r["label"]: {c["length"]: c for c in r["results"]["by_length"]} for r in runs}
    rows = [[str(n)] + [pct_or_dash(by_length[r["label"]].get(n)) for r in runs] for n in lengths]
    md += table(["length"] + [r["label"] for r in runs], rows) + [""]
    if any(c["depth"] == 0.0 for r in runs for c in r["results"]["cells"]):
        md += ["#### Depth 0 (needle farthest from the question: the study's headline cell)", ""]
        at_zero = {r["label"]: {c["length"]: c for c in r["results"]["cells"] if c["depth"] == 0.0} for r in runs}
        rows = [[str(n)] + [pct_or_dash(at_zero[r["label"]].get(n)) for r in runs] for n in lengths]
        md += table(["length"] + [r["label"] for r in runs], rows) + [""]
    for r in runs:
        md += _passkey_run(r, haystack, out, figures)
    return md + _passkey_lines(runs, haystack, out, figures)


def _passkey_run(run: dict, haystack: str, out: Path, figures: list[str]) -> list[str]:
    settings, results = run["settings"], run["results"]
    lengths = sorted({c["length"] for c in results["cells"]})
    depths = sorted({c["depth"] for c in results["cells"]})
    cell = {(c["length"], c["depth"]): c for c in results["cells"]}
    md = [f"#### {run['label']}", ""]
    memory = f"OFF (ablation: {memory_off_text(settings['memory_off'])})" if settings.get("memory_off") else "on"
    scaling = settings.get("rope_scaling")
    md += [
        f"{settings['samples']} samples per cell, {settings['key_digits']}-digit keys, haystack "
        f"`{settings['haystack']}`, lengths in {settings['unit']}, seed {settings['seed']}, memory {memory}, "
        f"segment length for counting memory updates: {settings.get('segment_len')}"
        + (f", RoPE scaling {scaling}." if scaling else "."),
        "",
    ]
    rows = [[f"{d:g}"] + [pct_or_dash(cell.get((n, d))) for n in lengths] for d in depths]
    md += table(["depth \\ length"] + [str(n) for n in lengths], rows) + [""]
    name = f"passkey_heatmap_{slug(run['label'])}_{haystack}.png"
    plots.heatmap(
        [[100 * cell[n, d]["exact"]["rate"] if (n, d) in cell else None for n in lengths] for d in depths],
        [f"{d:g}" for d in depths],
        [str(n) for n in lengths],
        out / name,
        title=f"passkey accuracy (%): {run['label']}, {HAYSTACK_LABELS[haystack]}",
        xlabel=f"length ({settings['unit']})",
        ylabel="depth",
    )
    figures.append(name)
    md += image(name, f"passkey heatmap of {run['label']}")
    md += ["All scores by length (`digit_acc` = share of answer tokens right under teacher forcing):", ""]
    md += table(
        ["length", "exact", "token_exact", "contains", "digit_acc"],
        [
            [
                str(c["length"]),
                pct(c["exact"]),
                pct(c["token_exact"]),
                pct(c["contains"]),
                f"{100 * c['digit_acc']['mean']:.1f}% ± {100 * c['digit_acc']['stderr']:.1f}",
            ]
            for c in results["by_length"]
        ],
    ) + [""]
    return md + updates_by_length_lines(results.get("by_length_and_memory_updates", []), settings["unit"])


UPDATES_BY_LENGTH = (
    "Exact match by the number of memory updates between the key and the question (rows) at each length (columns): "
    "a longer prompt brings both more updates after the key and more text into the memory, so read down a column "
    "for the updates alone and along a row for the length alone."
)


def updates_by_length_lines(groups: list[dict], unit: str = "tokens") -> list[str]:
    """`UPDATES_BY_LENGTH`'s table from a summary's `by_length_and_memory_updates`; nothing for a model without a
    memory (no groups)."""
    if not groups:
        return []
    return [UPDATES_BY_LENGTH.replace("(columns)", f"(columns, {unit})"), ""] + updates_by_length_table(groups)


def updates_by_length_table(groups: list[dict]) -> list[str]:
    """Rows: memory-update buckets; columns: lengths; cells: exact match with counts and Wilson interval."""
    lengths = sorted({g["length"] for g in groups})
    buckets = sorted({g["memory_updates"] for g in groups}, key=bucket_order)
    by_key = {(g["length"], g["memory_updates"]): g for g in groups}
    rows = [[b] + [pct_or_dash(by_key.get((n, b))) for n in lengths] for b in buckets]
    return table(["updates \\ length"] + [str(n) for n in lengths], rows) + [""]


def _passkey_lines(runs: list[dict], haystack: str, out: Path, figures: list[str]) -> list[str]:
    md = ["#### Accuracy against length", ""]
    for depth in HEADLINE_DEPTHS:
        series = {}
        for r in runs:
            cells = sorted((c for c in r["results"]["cells"] if c["depth"] == depth), key=lambda c: c["length"])
            if cells:
                series[r["label"]] = ([c["length"] for c in cells], [100 * c["exact"]["rate"] for c in cells])
        if series:
            name = f"passkey_vs_length_depth{depth:g}_{haystack}.png"
            plots.lines(
                series,
                out / name,
                title=f"passkey accuracy at depth {depth:g}, {HAYSTACK_LABELS[haystack]}",
                xlabel="length",
                ylabel="accuracy (%)",
                xlog=True,
            )
            figures.append(name)
            md += image(name, f"accuracy vs length at depth {depth:g}")
    buckets = sorted({b["memory_updates"] for r in runs for b in r["results"]["by_memory_updates"]}, key=bucket_order)
    if buckets == ["n/a"]:
        return md
    md += [
        "#### Accuracy against the number of memory updates between the key and the question",
        "",
        "Segment boundaries between the segment holding the last token of the key's last copy in the needle and "
        "the question's segment (0: that copy ends in the question's own segment, within local attention's reach).",
        "",
    ]
    by_bucket = {r["label"]: {b["memory_updates"]: b for b in r["results"]["by_memory_updates"]} for r in runs}
    md += table(
        ["memory updates"] + [r["label"] for r in runs],
        [[b] + [pct(by_bucket[r["label"]][b]["exact"]) if b in by_bucket[r["label"]] else "–" for r in runs]
         for b in buckets],
    ) + [""]  # fmt: skip
    series = {
        r["label"]: (
            [buckets.index(b) for b in buckets if b in by_bucket[r["label"]]],
            [100 * by_bucket[r["label"]][b]["exact"]["rate"] for b in buckets if b in by_bucket[r["label"]]],
        )
        for r in runs
    }
    name = f"passkey_vs_memory_updates_{haystack}.png"
    plots.lines(
        series,
        out / name,
        title=f"passkey accuracy against repeated compressions, {HAYSTACK_LABELS[haystack]}",
        xlabel="memory updates between the key and the question",
        ylabel="accuracy (%)",
        categorical_x=buckets,
    )
    figures.append(name)
    return md + image(name, "accuracy vs memory updates")
