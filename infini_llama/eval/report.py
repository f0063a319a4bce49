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
from collections.abc import Sequence
from pathlib import Path

from infini_llama.eval import plots
from infini_llama.eval.diagnostics import plot_trajectory, saturated_gates
from infini_llama.eval.markdown import image, slug, table
from infini_llama.eval.records import SUMMARY, write_json
from infini_llama.eval.report_passkey import haystack_of, passkey_section

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
    seen: dict[tuple[str, str, str], int] = {}
    for summary in summaries:  # labels must be unique within a task and haystack: they name columns and lines
        label = summary.get("label") or Path(summary["run_dir"]).name
        key = (summary.get("task", "?"), haystack_of(summary), label)
        seen[key] = seen.get(key, 0) + 1
        summary["label"] = label if seen[key] == 1 else f"{label} #{seen[key]}"
    return summaries


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
        md += passkey_section(by_task["passkey"], out, figures)
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
    return ["## Runs", ""] + table(RUN_COLUMNS, rows) + [""]


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

    md += table(
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
    ppl = {r["label"]: {(b["start"], b["end"]): b for b in r["results"]["buckets"]} for r in complete}
    md += table(
        ["positions"] + [r["label"] for r in complete],
        [
            [f"{s}–{e}"]
            + [f"{ppl[r['label']][s, e]['perplexity']:.2f}" if (s, e) in ppl[r["label"]] else "–" for r in complete]
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
    return md + image(name, "loss vs position")


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
        sat = g.get("saturated") or saturated_gates(g["gates"])
        md += [
            f"### {r['label']}",
            "",
            f"activation `{g['activation']}`, mean g = {g['mean']:.3f}; saturated heads (g < {sat['margin']:g} or "
            f"g > {1 - sat['margin']:g}): {sat['saturated']}/{sat['heads']} ({sat['closed']} closed, {sat['open']} "
            "open)",
            "",
        ]
        md += table(
            ["layer"] + [f"head {h}" for h in range(g["heads"])] + ["mean"],
            [[str(i)] + [f"{v:.3f}" for v in row] + [f"{g['layer_mean'][i]:.3f}"] for i, row in enumerate(g["gates"])],
        ) + [""]
        name = slug(r["label"])
        plots.heatmap(
            g["gates"],
            [str(i) for i in range(g["layers"])],
            [str(h) for h in range(g["heads"])],
            out / f"gates_{name}.png",
            title=f"memory gates g: {r['label']}",
            xlabel="head",
            ylabel="layer",
            vmin=0.0,
            vmax=1.0,
            fmt="{:.2f}",
        )
        plots.histogram(
            [v for row in g["gates"] for v in row],
            out / f"gates_hist_{name}.png",
            title=f"gate values: {r['label']}",
            xlabel="g",
        )
        figures += [f"gates_{name}.png", f"gates_hist_{name}.png"]
        if g.get("trajectory"):
            plot_trajectory(g["trajectory"], out / f"gates_trajectory_{name}.png", title=r["label"])
            figures.append(f"gates_trajectory_{name}.png")
            md += image(f"gates_trajectory_{name}.png", "gates during training")
        md += image(f"gates_{name}.png", f"gates of {r['label']}") + image(f"gates_hist_{name}.png", "histogram")
    return md


def run(args: argparse.Namespace) -> int:
    """`infini-llama report` (its parser: `infini_llama.cli.report`)."""
    path = build_report(args.runs, args.out)
    print(f"wrote {path}")
    return 0
