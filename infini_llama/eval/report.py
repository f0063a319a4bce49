"""`infini-llama report RUN_DIR… --out DIR`: a Markdown report that puts evaluation runs side by side.

Reads the `summary.json` of every run folder given (or found below a folder given), and writes `report.md`,
`report.json` and PNG figures into the output folder: passkey accuracy[depth × length] tables with sample counts
and Wilson 95% intervals, one heatmap per run (fixed 0–100% scale), accuracy against length and against the
number of memory updates, multi-needle scores, perplexity against position with the training length marked, and
the memory gates of each model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from infini_llama.eval import plots
from infini_llama.eval.diagnostics import bucket_order, plot_trajectory
from infini_llama.eval.records import SUMMARY, write_json

HEADLINE_DEPTHS = (0.0, 0.5, 1.0)  # accuracy-vs-length plots: needle farthest from, midway to, next to the question
RUN_COLUMNS = (
    "run",
    "task",
    "status",
    "model",
    "attention",
    "parameters",
    "checkpoint",
    "weights hash",
    "date",
    "folder",
)


def find_runs(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """The summaries of the run folders given, or of every run folder below a folder that is not one itself."""
    summaries = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"run folder {str(path)!r} does not exist")
        files = [path / SUMMARY] if (path / SUMMARY).is_file() else sorted(path.rglob(SUMMARY))
        if not files:
            raise FileNotFoundError(f"no {SUMMARY} in or below {path}: pass folders written by `infini-llama eval`")
        for file in files:
            summary = json.loads(file.read_text())
            summary["run_dir"] = str(file.parent)
            summaries.append(summary)
    seen: dict[tuple[str, str], int] = {}
    for summary in summaries:  # labels must be unique within a task: they name columns and lines
        label = summary.get("label") or Path(summary["run_dir"]).name
        key = (summary.get("task", "?"), label)
        seen[key] = seen.get(key, 0) + 1
        summary["label"] = label if seen[key] == 1 else f"{label} #{seen[key]}"
    return summaries


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def _pct(p: dict) -> str:
    return f"{100 * p['rate']:.0f}% ({p['successes']}/{p['n']}) [{100 * p['ci_low']:.0f}–{100 * p['ci_high']:.0f}]"


def _pct_or_dash(scores: dict | None) -> str:
    return _pct(scores["exact"]) if scores is not None else "–"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _image(name: str, alt: str) -> list[str]:
    return [f"![{alt}]({name})", ""]


def build_report(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write report.md (with its figures) and report.json into `out_dir`; returns the path of report.md."""
    runs = find_runs(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    md = ["# Evaluation report", "", f"Built {now} from {len(runs)} run(s).", ""]
    md += _runs_section(runs)
    by_task = {task: [r for r in runs if r.get("task") == task] for task in ("passkey", "multineedle", "perplexity")}
    figures: list[str] = []
    if by_task["passkey"]:
        md += _passkey_section(by_task["passkey"], out, figures)
    if by_task["multineedle"]:
        md += _multineedle_section(by_task["multineedle"])
    if by_task["perplexity"]:
        md += _perplexity_section(by_task["perplexity"], out, figures)
    gate_runs = [r for r in runs if r.get("task") == "gates"]
    if gate_runs:
        md += _gates_section(gate_runs, out, figures)
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    write_json(out / "report.json", {"built": now, "runs": [r["run_dir"] for r in runs], "figures": figures})
    return path


def _runs_section(runs: list[dict]) -> list[str]:
    rows = []
    for r in runs:
        model = r.get("model", {})
        rows.append(
            [
                r["label"],
                r.get("task", "?"),
                r.get("status", "?"),
                str(model.get("class")),
                str(model.get("attention")),
                f"{model.get('parameters', 0):,}",
                str(model.get("checkpoint")),
                str(model.get("fingerprint")),
                str(r.get("environment", {}).get("date")),
                r["run_dir"],
            ]
        )
    return ["## Runs", ""] + _table(RUN_COLUMNS, rows) + [""]


def _passkey_section(runs: list[dict], out: Path, figures: list[str]) -> list[str]:
    complete = [r for r in runs if r.get("status") == "complete"]
    md = ["## Passkey retrieval", ""]
    md += [
        "Score: `exact` (the first integer of the greedy answer equals the key). Cells: accuracy (correct/samples) "
        "[Wilson 95% interval]. Lengths are in tokens unless a run says otherwise.",
        "",
    ]
    if len(complete) < len(runs):
        md += [f"Runs still running (not shown): {', '.join(r['label'] for r in runs if r not in complete)}", ""]
    if not complete:
        return md
    lengths = sorted({c["length"] for r in complete for c in r["results"]["by_length"]})
    md += ["### Accuracy by length, all depths", ""]
    by_length = {r["label"]: {c["length"]: c for c in r["results"]["by_length"]} for r in complete}
    rows = [[str(n)] + [_pct_or_dash(by_length[r["label"]].get(n)) for r in complete] for n in lengths]
    md += _table(["length"] + [r["label"] for r in complete], rows) + [""]
    if any(c["depth"] == 0.0 for r in complete for c in r["results"]["cells"]):
        md += ["### Depth 0 (needle farthest from the question: the study's headline cell)", ""]
        at_zero = {r["label"]: {c["length"]: c for c in r["results"]["cells"] if c["depth"] == 0.0} for r in complete}
        rows = [[str(n)] + [_pct_or_dash(at_zero[r["label"]].get(n)) for r in complete] for n in lengths]
        md += _table(["length"] + [r["label"] for r in complete], rows) + [""]
    for r in complete:
        md += _passkey_run(r, out, figures)
    md += _passkey_lines(complete, out, figures)
    return md


def _passkey_run(run: dict, out: Path, figures: list[str]) -> list[str]:
    settings, results = run["settings"], run["results"]
    lengths = sorted({c["length"] for c in results["cells"]})
    depths = sorted({c["depth"] for c in results["cells"]})
    cell = {(c["length"], c["depth"]): c for c in results["cells"]}
    md = [f"### {run['label']}", ""]
    memory = "OFF (ablation)" if settings.get("memory_off") else "on"
    md += [
        f"{settings['samples']} samples per cell, {settings['key_digits']}-digit keys, haystack "
        f"`{settings['haystack']}`, lengths in {settings['unit']}, seed {settings['seed']}, memory {memory}, "
        f"segment length for counting memory updates: {settings.get('segment_len')}.",
        "",
    ]
    rows = [[f"{d:g}"] + [_pct_or_dash(cell.get((n, d))) for n in lengths] for d in depths]
    md += _table(["depth \\ length"] + [str(n) for n in lengths], rows) + [""]
    name = f"passkey_heatmap_{_slug(run['label'])}.png"
    plots.heatmap(
        [[100 * cell[n, d]["exact"]["rate"] if (n, d) in cell else None for n in lengths] for d in depths],
        [f"{d:g}" for d in depths],
        [str(n) for n in lengths],
        out / name,
        title=f"passkey accuracy (%): {run['label']}",
        xlabel=f"length ({settings['unit']})",
        ylabel="depth",
    )
    figures.append(name)
    md += _image(name, f"passkey heatmap of {run['label']}")
    md += ["All scores by length (`digit_acc` = share of answer tokens right under teacher forcing):", ""]
    md += _table(
        ["length", "exact", "token_exact", "contains", "digit_acc"],
        [
            [
                str(c["length"]),
                _pct(c["exact"]),
                _pct(c["token_exact"]),
                _pct(c["contains"]),
                f"{100 * c['digit_acc']['mean']:.1f}% ± {100 * c['digit_acc']['stderr']:.1f}",
            ]
            for c in results["by_length"]
        ],
    ) + [""]
    return md


def _passkey_lines(runs: list[dict], out: Path, figures: list[str]) -> list[str]:
    md = ["### Accuracy against length", ""]
    for depth in HEADLINE_DEPTHS:
        series = {}
        for r in runs:
            cells = sorted((c for c in r["results"]["cells"] if c["depth"] == depth), key=lambda c: c["length"])
            if cells:
                series[r["label"]] = ([c["length"] for c in cells], [100 * c["exact"]["rate"] for c in cells])
        if series:
            name = f"passkey_vs_length_depth{depth:g}.png"
            plots.lines(
                series,
                out / name,
                title=f"passkey accuracy at depth {depth:g}",
                xlabel="length",
                ylabel="accuracy (%)",
                xlog=True,
            )
            figures.append(name)
            md += _image(name, f"accuracy vs length at depth {depth:g}")
    buckets = sorted({b["memory_updates"] for r in runs for b in r["results"]["by_memory_updates"]}, key=bucket_order)
    if buckets == ["n/a"]:
        return md
    md += [
        "### Accuracy against the number of memory updates between the key and the question",
        "",
        "Segment boundaries between the segment holding the last token of the key's last copy in the needle and "
        "the question's segment (0: that copy ends in the question's own segment, within local attention's reach).",
        "",
    ]
    table = {r["label"]: {b["memory_updates"]: b for b in r["results"]["by_memory_updates"]} for r in runs}
    md += _table(
        ["memory updates"] + [r["label"] for r in runs],
        [[b] + [_pct(table[r["label"]][b]["exact"]) if b in table[r["label"]] else "–" for r in runs] for b in buckets],
    ) + [""]
    series = {
        r["label"]: (
            [buckets.index(b) for b in buckets if b in table[r["label"]]],
            [100 * table[r["label"]][b]["exact"]["rate"] for b in buckets if b in table[r["label"]]],
        )
        for r in runs
    }
    name = "passkey_vs_memory_updates.png"
    plots.lines(
        series,
        out / name,
        title="passkey accuracy against repeated compressions",
        xlabel="memory updates between the key and the question",
        ylabel="accuracy (%)",
        categorical_x=buckets,
    )
    figures.append(name)
    return md + _image(name, "accuracy vs memory updates")


def _multineedle_section(runs: list[dict]) -> list[str]:
    complete = [r for r in runs if r.get("status") == "complete"]
    md = ["## Multi-needle retrieval", ""]
    md += [
        "Score: mean fraction of the expected values found in the greedy answer (± standard error); in brackets "
        "the samples with every value found.",
        "",
    ]
    keys = sorted({(c["task"], c["length"]) for r in complete for c in r["results"]["cells"]})
    cells = {r["label"]: {(c["task"], c["length"]): c for c in r["results"]["cells"]} for r in complete}

    def show(c: dict) -> str:
        s, a = c["score"], c["all_found"]
        return f"{100 * s['mean']:.0f}% ± {100 * s['stderr']:.0f} ({a['successes']}/{a['n']})"

    md += _table(
        ["task", "length"] + [r["label"] for r in complete],
        [
            [t, str(n)] + [show(cells[r["label"]][t, n]) if (t, n) in cells[r["label"]] else "–" for r in complete]
            for t, n in keys
        ],
    ) + [""]
    return md


def _perplexity_section(runs: list[dict], out: Path, figures: list[str]) -> list[str]:
    complete = [r for r in runs if r.get("status") == "complete"]
    md = ["## Perplexity by position", ""]
    if not complete:
        return md
    sources = sorted({str(r["settings"].get("source")) for r in complete})
    md += [
        f"Text: {', '.join(sources)}. Each window is run once through the streaming path; a cell is the "
        "perplexity of the tokens at those positions, over all windows.",
        "",
    ]
    spans = sorted({(b["start"], b["end"]) for r in complete for b in r["results"]["buckets"]})
    table = {r["label"]: {(b["start"], b["end"]): b for b in r["results"]["buckets"]} for r in complete}
    md += _table(
        ["positions"] + [r["label"] for r in complete],
        [
            [f"{s}–{e}"]
            + [f"{table[r['label']][s, e]['perplexity']:.2f}" if (s, e) in table[r["label"]] else "–" for r in complete]
            for s, e in spans
        ],
    ) + [""]
    train_lens = {r["results"].get("train_len") for r in complete} - {None}
    series = {
        r["label"]: (
            [(b["start"] + b["end"]) / 2 for b in r["results"]["buckets"]],
            [b["mean_loss"] for b in r["results"]["buckets"]],
        )
        for r in complete
    }
    name = "perplexity_vs_position.png"
    train_len = train_lens.pop() if len(train_lens) == 1 else None
    plots.lines(
        series,
        out / name,
        title="loss by position",
        xlabel="position (tokens)",
        ylabel="mean loss (nats)",
        ylim=None,
        vline=train_len,
        vline_label=f"training length {train_len}" if train_len else None,
    )
    figures.append(name)
    return md + _image(name, "loss vs position")


def _gates_section(runs: list[dict], out: Path, figures: list[str]) -> list[str]:
    md = [
        "## Memory gates",
        "",
        "g = act(β) per layer and head, through the activation each model was trained "
        "with: 1 = memory only, 0 = local attention only.",
        "",
    ]
    for r in runs:
        g = r["results"]
        md += [f"### {r['label']}", "", f"activation `{g['activation']}`, mean g = {g['mean']:.3f}", ""]
        md += _table(
            ["layer"] + [f"head {h}" for h in range(g["heads"])] + ["mean"],
            [[str(i)] + [f"{v:.3f}" for v in row] + [f"{g['layer_mean'][i]:.3f}"] for i, row in enumerate(g["gates"])],
        ) + [""]
        slug = _slug(r["label"])
        plots.heatmap(
            g["gates"],
            [str(i) for i in range(g["layers"])],
            [str(h) for h in range(g["heads"])],
            out / f"gates_{slug}.png",
            title=f"memory gates g: {r['label']}",
            xlabel="head",
            ylabel="layer",
            vmin=0.0,
            vmax=1.0,
            fmt="{:.2f}",
        )
        plots.histogram(
            [v for row in g["gates"] for v in row],
            out / f"gates_hist_{slug}.png",
            title=f"gate values: {r['label']}",
            xlabel="g",
        )
        figures += [f"gates_{slug}.png", f"gates_hist_{slug}.png"]
        if g.get("trajectory"):
            plot_trajectory(g["trajectory"], out / f"gates_trajectory_{slug}.png", title=r["label"])
            figures.append(f"gates_trajectory_{slug}.png")
            md += _image(f"gates_trajectory_{slug}.png", "gates during training")
        md += _image(f"gates_{slug}.png", f"gates of {r['label']}") + _image(f"gates_hist_{slug}.png", "histogram")
    return md


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="Markdown report comparing evaluation runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", help="run folders of `infini-llama eval` (or folders holding them)")
    parser.add_argument("--out", required=True, help="folder for report.md, report.json and the figures")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        path = build_report(args.runs, args.out)
    except FileNotFoundError as exc:
        print(f"infini-llama report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
