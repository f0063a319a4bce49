"""REPORT.md of a study: per seed (every table of that seed's arms), and across seeds (mean and spread per row, the
lead of Infini over the baseline seed by seed, the LR each arm got, every seed's table)."""

from __future__ import annotations

import math
from pathlib import Path

from infini_llama.data.corpus import HELD_OUT_BOOK
from infini_llama.eval import plots
from infini_llama.eval.diagnostics import NEEDLE_WHOLE, SATURATION, bucket_order, needle_cut_order
from infini_llama.eval.markdown import table
from infini_llama.eval.passkey import DEFAULT_KEY_DIGITS
from infini_llama.eval.prompts import HAYSTACK_LABELS
from infini_llama.eval.report_passkey import UPDATES_BY_LENGTH, updates_by_length_table
from infini_llama.eval.scoring import KEY_KINDS, which_digits_loss
from infini_llama.study.config import StudyConfig
from infini_llama.study.estimate import duration
from infini_llama.study.results import LEARNED, TREND_TARGETS, passkey_rows, sequences_per_step, spread
from infini_llama.study.stages import STAGE_GROUPS, stage_group
from infini_llama.train import recipe
from infini_llama.train.loop import TIME_PARTS
from infini_llama.train.passkey import FINETUNE_HAYSTACKS

# How every "ahead", "level" and "behind" of a report is decided (see eval.scoring).
KEY_LEVEL = (
    "by a bootstrap over keys (a sample index has the same key at every depth: the samples of a key are resampled "
    "together)"
)


def describe_study(cfg: StudyConfig) -> str:
    """One paragraph: what both arms share and how they are evaluated (the study's recipe before sweeps and the LR
    grid; what each arm got is in the arm table)."""
    pre, fin = recipe(cfg.model_preset, **cfg.pretrain), recipe(cfg.model_preset, **cfg.finetune)
    data = ", ".join(pre.data) if pre.data else (pre.dataset or "the embedded corpus")
    lrs = ", ".join(f"{lr:g}" for lr in cfg.finetune_lr_grid)
    lr_text = (
        f"each arm at LRs {lrs}, the LR chosen per arm on {cfg.selection_samples} held-apart fine-tuning prompts at "
        "the training length"
        if cfg.finetune_lr_grid
        else f"LR {fin.lr:g}"
    )
    if fin.decay_steps is not None:
        lr_text += f", held, then a cosine to {fin.min_lr / fin.lr:g} of it over the last {fin.decay_steps} steps"
    haystacks = ", ".join(f"{HAYSTACK_LABELS[h]} (`{h}`)" for h in cfg.eval_haystacks)
    control = (
        "The local control is the Infini arm's segment-local attention (the same segments, RoPE restarting in each) "
        "with no memory and no gate. "
        if cfg.control_arm
        else ""
    )
    return (
        control
        + f"{'All' if cfg.control_arm else 'Both'} arms share the data, tokens, seeds and recipe: pretraining on "
        f"{data} ({pre.steps} steps of "
        f"{sequences_per_step(pre)} × {pre.seq_len} tokens, LR {pre.lr:g}), then passkey fine-tuning ({fin.steps} "
        f"steps of {sequences_per_step(fin)} × {fin.seq_len} tokens, {lr_text}; loss on "
        f"{cfg.passkey.get('loss', 'all')} tokens; haystacks drawn per prompt: "
        f"{', '.join(cfg.passkey.get('haystacks', FINETUNE_HAYSTACKS))}), then the "
        f"evaluations below. The training length is the pretraining length, {pre.seq_len} tokens; passkey prompts "
        f"are {', '.join(f'{m:g}×' for m in cfg.eval_multiples)} that, {cfg.eval_samples} samples per (length, "
        f"depth) cell at depths {', '.join(f'{d:g}' for d in cfg.eval_depths)}, greedy exact match, 95% intervals in "
        "brackets at the level of the key (a sample index has the same key in every cell: Wilson intervals at the "
        f"keys' effective sample size), on each haystack: {haystacks}. The held-out text is `{HELD_OUT_BOOK}` of the "
        "embedded corpus, which neither the tokenizer, pretraining nor fine-tuning reads."
        + (
            f" Evaluated with eval_precision={cfg.eval_precision}: "
            + (
                "in float32 with TF32 matmuls on a GPU (float32 on a CPU)."
                if cfg.eval_precision == "tf32"
                else "in bf16 autocast where it resolves to bf16 (as trained), else in float32."
            )
            if cfg.eval_precision != "fp32"
            else ""
        )
        + (
            " These are the grids of the validation split (other samples than the test grids), for choosing a "
            "recipe; they are not the study's result."
            if cfg.eval_split == "validation"
            else ""
        )
    )


def _pct(p: dict) -> str:
    return f"{100 * p['rate']:.0f}% [{100 * p['ci_low']:.0f}–{100 * p['ci_high']:.0f}]"


def _mean(p: dict) -> str:
    return f"{p['mean']:.2f} ± {p['stderr']:.2f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _header(cfg: StudyConfig, lengths: list[int]) -> list[str]:
    return ["row"] + [f"{m:g}× ({n})" for m, n in zip(cfg.eval_multiples, lengths, strict=True)]


def _left_out(names: list[str] | None) -> list[str]:
    """The arms of the study a report of some arms (`--report-only --arms`) leaves out: none of its tables has them,
    nor any comparison with them."""
    if not names:
        return []
    return [f"**A report of some arms only:** it leaves out {', '.join(names)} (not run or not chosen); no table or "
            "comparison here has them.", ""]  # fmt: skip


def environment_lines(environments: list[dict], prefix: str = "Environment") -> list[str]:
    """One line per distinct environment the evaluations ran in: library versions, device and commit."""
    lines = []
    for env in environments:
        versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items() if name != "platform")
        commit = f"; commit {env['git_revision'][:7]}" if env.get("git_revision") else ""
        lines += [f"{prefix}: {versions}; {env.get('device_name') or 'unknown device'}{commit}.", ""]
    return lines


def write_seed_report(cfg: StudyConfig, out: Path, results: dict, command: str | None) -> Path:
    """REPORT.md of the single-seed study in `out`."""
    entries = results["arms"]
    lengths = next(iter(results["lengths"].values()))
    lines = [f"# Study report: Infini-attention vs full attention ({cfg.preset}), seed {cfg.seed}", ""]
    lines += [describe_study(cfg), "", *([f"Command: `{command}`", ""] if command else [])]
    lines += _left_out(results.get("left_out"))
    lines += environment_lines(results["environments"])
    lines += _arm_table(cfg, entries)
    for haystack in cfg.eval_haystacks:
        rows = [(label, grids[haystack]) for label, _, _, grids in passkey_rows(entries) if haystack in grids]
        lines += [f"## Passkey accuracy by length: {HAYSTACK_LABELS[haystack]}", ""]
        exact = [[label] + [_pct(r["exact"]) for r in grid["by_length"]] for label, grid in rows]
        digits = [[label] + [_mean(r["digit_acc"]) for r in grid["by_length"]] for label, grid in rows]
        lines += table(_header(cfg, lengths), exact)
        lines += [
            "",
            "Digit accuracy (share of answer tokens right under teacher forcing, mean ± standard error): partial "
            "retrieval that exact match does not show.",
            "",
        ]
        lines += table(_header(cfg, lengths), digits)
        lines += [""] + _compression_table(entries, haystack)
    lines += _learned_table({cfg.seed: results.get("learned", {})}, [cfg.seed])
    lines += _leads_table(results["leads"])
    lines += _comparisons_table(cfg, results.get("comparisons", []))
    lines += _best_rope_table(cfg, results.get("best_rope", []))
    by_row = {
        label: {h: g.get("by_length_and_key_kind", []) for h, g in grids.items()}
        for label, _, _, grids in passkey_rows(entries)
    }
    lines += _key_kinds(cfg, by_row, pooled=False)
    cuts = {
        label: {h: g.get("by_length_and_needle_cut", []) for h, g in grids.items()}
        for label, _, _, grids in passkey_rows(entries)
    }
    lines += _needle_cuts(cfg, cuts, pooled=False)
    depths = {
        label: {h: g.get("by_depth_beyond_training", []) for h, g in grids.items()}
        for label, _, _, grids in passkey_rows(entries)
    }
    lines += _depths(cfg, depths, pooled=False)
    lines += _missed_keys(cfg, entries)
    answers = {
        label: {h: g.get("answers_by_length", []) for h, g in grids.items()}
        for label, _, _, grids in passkey_rows(entries)
    }
    lines += _answers(cfg, answers, pooled=False)
    lines += _gates_table(entries)
    lines += _layers_off_table(entries)
    training = []
    for name, entry in entries.items():
        pre, chosen = entry.get("pretrain") or {}, _chosen(entry)
        training.append(
            [name, _num(pre.get("val_loss")), _num(pre.get("copy_loss")), _num(entry.get("pretrain_reads"), 2),
             _num(pre.get("tokens_per_s"), 0), _num(chosen.get("val_loss"))]
        )  # fmt: skip
    lines += ["## Training", ""]
    lines += [
        "Each arm's pretraining validation loss; its loss on copied text (the same validation windows with their "
        "first half twice, scored on the copied tokens: far below the validation loss once the model looks back "
        "half a window and copies, about the same while it does not); how many times its pretraining read the "
        "training split (a large model memorises a small corpus read many times: its validation loss turns "
        "upward); its pretraining speed; the chosen fine-tuning's validation loss.",
        "",
    ]
    header = ["arm", "pretrain val loss", "on copied text", "training split read (times)", "pretrain tok/s",
              "fine-tune val loss (chosen LR)"]  # fmt: skip
    lines += table(header, training)
    lines += _finetune_losses(entries, out)
    lines += _stage_times(entries)
    lines += ["", "## Details", "", "Tables and figures of every evaluation, from `report/report.md`:", ""]
    detail = (out / "report" / "report.md").read_text().splitlines()
    lines += [_relink(line) for line in detail[1:]]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


CURVE_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)


def _grouped_seconds(entry: dict) -> dict[str, float]:
    """An arm's finished stages' wall seconds by STAGE_GROUPS, and their total."""
    groups = dict.fromkeys(STAGE_GROUPS, 0.0)
    for name, seconds in entry.get("stage_seconds", {}).items():
        groups[stage_group(name)] += seconds
    return {**groups, "total": sum(groups.values())}


def _stage_times(entries: dict) -> list[str]:
    """Each arm's wall time per group of stages (arms that ran side by side shared the host or GPU), and where each
    training stage's time went."""
    rows, split = [], []
    for name, entry in entries.items():
        groups = _grouped_seconds(entry)
        copied = (entry.get("pretrain") or {}).get("shared_from")
        cells = [duration(groups[g]) + (f" (copied from {copied})" if g == "pretraining" and copied else "")
                 for g in STAGE_GROUPS]  # fmt: skip
        rows.append([name, *cells, duration(groups["total"])])
        finetunes = [m for m in entry.get("finetune") or [] if m]
        stages = [("pretraining", entry.get("pretrain") or {})] + [
            (f"fine-tuning, LR {m['lr']:g}" if len(finetunes) > 1 else "fine-tuning", m) for m in finetunes
        ]
        for stage, marker in stages:
            parts = marker.get("split_seconds") if not marker.get("shared_from") else None
            if parts:
                split.append([f"{name}, {stage}", *(duration(parts.get(part, 0.0)) for part in TIME_PARTS)])
    lines = [
        "",
        "## Stage times",
        "",
        "Wall time of each arm's finished stages (evaluation: the LR selection and everything after it). Arms that ran "
        "at once shared the host or GPU, so a stage took what it took beside them, not what it takes alone.",
        "",
        *table(["arm", *STAGE_GROUPS, "total"], rows),
    ]
    if split:
        lines += [
            "",
            "Where each training stage's time went (the first step holds any compilation and the wait for the first "
            "batch; setup is the model, optimizer and batch workers before it):",
            "",
            *table(["stage", *TIME_PARTS.values()], split),
        ]
    return lines


def _finetune_runs(entries: dict) -> dict[str, tuple[dict, dict]]:
    """{label: (loss curve, arm entry)} of every fine-tuning run with a logged curve ("arm, LR x" with an LR grid)."""
    runs = {}
    for name, entry in entries.items():
        several = len(entry.get("finetune_curves", [])) > 1
        for curve in entry.get("finetune_curves", []):
            if curve.get("train"):
                runs[f"{name}, LR {curve['lr']:g}" if several else name] = (curve, entry)
    return runs


def _loss_at(curve: dict, fraction: float, steps: int) -> float | None:
    """The window mean of the first window that ends at or after `fraction` of `steps`."""
    return next((loss for end, loss in curve["train"] if end >= fraction * steps), None)


def _curriculum_end(runs: dict[str, tuple[dict, dict]]) -> float | None:
    """The step where the curriculum over needle distance ends, if every run has the same one inside its steps."""
    ends = {entry["recipe"]["passkey_data"].get("curriculum_steps") or 0 for _, entry in runs.values()}
    longest = max(entry["recipe"]["finetune"]["steps"] for _, entry in runs.values())
    end = ends.pop() if len(ends) == 1 else 0
    return end if 0 < end < longest else None


def _finetune_losses(entries: dict, out: Path) -> list[str]:
    """Each fine-tuning run's training loss (the answer loss where the loss is on the answer) at a few points of its
    steps, its last validation loss, and the curves in finetune_loss.png: where a run sits on its plateau and when
    it leaves it."""
    runs = _finetune_runs(entries)
    if not runs:
        return []
    rows = []
    for label, (curve, entry) in runs.items():
        steps = entry["recipe"]["finetune"]["steps"]
        at = [_loss_at(curve, f, steps) for f in CURVE_FRACTIONS]
        val = curve["val"][-1][1] if curve["val"] else None
        curriculum = entry["recipe"]["passkey_data"].get("curriculum_steps") or 0
        rows.append([label, *(_num(a) for a in at), _num(val), str(curriculum)])
    end = _curriculum_end(runs)
    plots.lines(
        {label: tuple(zip(*curve["train"], strict=True)) for label, (curve, _) in runs.items()},
        out / "finetune_loss.png", title="Fine-tuning loss", xlabel="step", ylabel="training loss (window mean)",
        ylim=None, ylog=True, vline=end, vline_label="end of the curriculum" if end else None,
    )  # fmt: skip
    header = ["run", *(f"loss at {f:.0%} of steps" for f in CURVE_FRACTIONS), "last val loss", "curriculum steps"]
    return [
        "",
        "## Fine-tuning loss",
        "",
        "The training loss (with `loss=answer`, the loss on the answer's tokens) averaged over the window of steps "
        "that ends at each point, and the last validation loss. A run on its plateau stays near the loss of "
        "guessing each digit; the curves: [`finetune_loss.png`](finetune_loss.png).",
        "",
        *table(header, rows),
        "",
        "![fine-tuning loss](finetune_loss.png)",
        *_trends(runs),
        *_answer_tokens(runs, out),
    ]


# The validations on prompts moved to a segment boundary, as columns after the answer tokens' (where logged):
# the curve's key, the column's name, and what it is.
ALIGNED_COLUMNS = {
    "val_boundary": (
        "answer at a segment boundary",
        "the loss on whole answers whose question ends on a segment's last token, as every prompt of a grid of "
        "whole segments does, so that the Infini arm writes them in a new segment",
    ),
    "val_needle_boundary": (
        "needle cut by a segment boundary",
        "the loss on whole answers to needles that a segment boundary cuts, the key's sentence split across a "
        "memory update, as a grid of whole segments does at some depths",
    ),
}


def _answer_tokens(runs: dict[str, tuple[dict, dict]], out: Path) -> list[str]:
    """Each run's validation loss on each answer token at each validation (`val_by_token` of its curve), with the
    losses on the validation prompts moved to a segment boundary where logged (`ALIGNED_COLUMNS`), and the curves
    in answer_token_loss.png (a panel per run, a line per token and per such loss)."""
    rows, digits, curves = [], set(), {}
    aligned = [key for key in ALIGNED_COLUMNS if any(curve.get(key) for curve, _ in runs.values())]
    for label, (curve, entry) in runs.items():
        logged = curve.get("val_by_token", [])
        if not logged:
            continue
        digits.add(entry["recipe"]["passkey_data"].get("key_digits", DEFAULT_KEY_DIGITS))
        losses_at = {key: dict(curve.get(key, [])) for key in aligned}
        for step, losses in logged:
            extra = [f"{losses_at[key][step]:.2f}" if step in losses_at[key] else "–" for key in aligned]
            rows.append([label, f"{step:,}", *("–" if x is None else f"{x:.2f}" for x in losses), *extra])
        names = ["space", *(f"digit {i}" for i in range(1, len(logged[0][1])))]
        curves[label] = {
            name: ([step for step, _ in logged], [losses[i] for _, losses in logged]) for i, name in enumerate(names)
        }  # fmt: skip
        for key in aligned:
            if losses_at[key]:
                curves[label][ALIGNED_COLUMNS[key][0]] = (list(losses_at[key]), list(losses_at[key].values()))
    if not rows:
        return []
    width = max(len(row) for row in rows) - 2 - len(aligned)
    levels = {"guessing a digit": math.log(10)}
    if len(digits) == 1:
        levels["which digits, not their order"] = which_digits_loss(next(iter(digits)))
    # Up to a loss of 3: the first validation's (up to about 7, an untrained answer) is left off the chart.
    chart = out / "answer_token_loss.png"
    plots.panels(curves, chart, xlabel="step", ylabel="validation loss", hlines=levels, ylim=(0.0, 3.0))
    said = ", ".join(f"{which_digits_loss(d):.2f} for keys of {d} digits" for d in sorted(digits))
    columns = [ALIGNED_COLUMNS[key][0] for key in aligned]
    explained = "; ".join(f"{name}: {ALIGNED_COLUMNS[key][1]}" for key, name in zip(aligned, columns, strict=True))
    return [
        "",
        "The validation loss on each token of the answer, at each validation: the space before the key, then its "
        "digits in order (each a token of its own with the package's tokenizer). Guessing a digit scores ln 10 = "
        "2.30; knowing which digits the key holds but not their order, and weighing them alike, scores the mean "
        f"log of how many distinct digits a key has ({said}). A first digit far below that level with the later "
        "ones near it is a run that finds the key and cannot yet copy it in order. "
        + (
            "The last columns score the validation sequences with their prompts moved to a segment boundary, on "
            f"those answers alone ({explained}). "
            if aligned
            else ""
        )
        + "The curves (up to a loss of 3): "
        "[`answer_token_loss.png`](answer_token_loss.png).",
        "",
        *table(["run", "step", "space", *(f"digit {i}" for i in range(1, width)), *columns], rows),
        "",
        "![validation loss by answer token](answer_token_loss.png)",
    ]


def _trends(runs: dict[str, tuple[dict, dict]]) -> list[str]:
    """Where each run's answer loss was heading (`results.loss_trend`): a projection, labelled as one."""
    rows = []
    for label, (curve, _) in runs.items():
        trend = curve.get("trend")
        if not trend:
            continue
        reach = {p["loss"]: p for p in trend["projections"]}
        cells = []
        for target in TREND_TARGETS:
            p = reach.get(target)
            if p is None:
                cells.append("reached" if trend["fitted_loss"] <= target else "not falling")
                continue
            millions = (p.get("tokens") or 0) / 1e6
            size = f", {millions:,.0f}M tokens" if millions >= 10 else f", {millions:.2g}M tokens" if millions else ""
            time = f", {duration(p['seconds'])}" if p.get("seconds") else ""
            cells.append(f"step {p['step']:,}{size}{time}")
        span = f"{trend['from_step']:,}–{trend['to_step']:,}"
        rows.append([label, span, f"× {trend['kept_per_1000_steps']:.2f}", _num(trend["fitted_loss"]), *cells])
    if not rows:
        return []
    header = ["run", "steps fitted", "loss kept per 1,000 steps", "fitted loss at the end"]
    header += [f"reaches {t:g} at" for t in TREND_TARGETS]
    return [
        "",
        "Where each run's answer loss was heading: a straight line through the log of its window means over the "
        "second half of its steps (after the curriculum), the share of the loss it kept per 1,000 steps, and the "
        "step at which the line would reach each loss, with the tokens and the time at the rate the run trained at "
        "(beside other arms, where it shared the GPU). **A projection, not a result**: the schedule (a cosine at its "
        "floor), a plateau or a sudden drop can change it; it says what budget a recipe would need if its trend held.",
        "",
        *table(header, rows),
    ]


def _chosen(entry: dict) -> dict:
    lr = (entry.get("selection") or {}).get("chosen_lr")
    return next((c for c in entry["selection"]["candidates"] if c["lr"] == lr), {}) if lr is not None else {}


def _arm_table(cfg: StudyConfig, entries: dict) -> list[str]:
    """What each arm got: its seed, its pretraining and fine-tuning recipes, the LRs tried and their scores on the
    held-apart fine-tuning prompts at the length the selection used, and the LR chosen."""
    lines = [
        "## What each arm got",
        "",
        "Fine-tuning LRs were tried with the same budget; each model answered the same held-apart fine-tuning "
        "prompts at the length given (the fine-tuning length, never beyond the training length; studies run before "
        "2026-12-06 used the training length), and the LR with the most exact answers was evaluated (target: ≥ 95%). "
        "Scores: exact [Wilson 95%] / digit accuracy.",
        "",
        "| arm | seed | pretraining LR (gate LR) | fine-tuning: steps × sequences × tokens, gate LR | LR: score | "
        "chosen LR |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in entries.items():
        pre, fin = entry["recipe"]["pretrain"], entry["recipe"]["finetune"]
        selection = entry.get("selection") or {"candidates": []}
        scores = "; ".join(
            f"{c['lr']:g}: {_pct(c['exact'])} / {c['digit_acc']['mean']:.2f}" for c in selection["candidates"]
        ) + (f" (at {selection['length']:,})" if selection.get("length") else "")
        lines.append(
            f"| {name} | {entry['seed']} | {pre['lr']:g} ({_gate_lr(entry, pre)}) | {fin['steps']} × "
            f"{fin['sequences_per_step']} × {fin['seq_len']}, {_gate_lr(entry, fin)} | "
            f"{scores or '–'} | {_lr(selection.get('chosen_lr'))}{_edge(selection)} |"
        )
    if any(_edge(entry.get("selection") or {}) for entry in entries.values()):
        lines += [
            "",
            "An LR chosen at an edge of a grid of three or more may be beaten by one beyond it: widen the grid "
            "(`--set finetune_lr_grid=...`, for every arm alike).",
        ]
    return lines + [""]


def _edge(selection: dict) -> str:
    """The note after the chosen LR: "(largest tried)" or "(smallest tried)" at an edge of a grid of three or more."""
    lrs = sorted(c["lr"] for c in selection.get("candidates", []))
    chosen = selection.get("chosen_lr")
    if len(lrs) < 3 or chosen not in (lrs[0], lrs[-1]):
        return ""
    return " (largest tried)" if chosen == lrs[-1] else " (smallest tried)"


def _lr(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _gate_lr(entry: dict, stage: dict) -> str:
    """The gate LR of a stage: none for the arms without gates, "frozen" for frozen gates."""
    if entry["attention"] != "infini":
        return "–"
    if entry.get("gate_trainable") is False:
        return "frozen"
    return _lr(stage["gate_lr"])


def _compression_table(entries: dict, haystack: str) -> list[str]:
    """Exact accuracy of the Infini rows (and the local control's) by the number of memory updates (compressions)
    between the key and the question, over every length and depth, then within each length."""
    grids = {
        g["label"]: g["haystacks"][haystack]
        for entry in entries.values()
        if entry["attention"] in ("infini", "local")
        for task, g in entry["passkey"].items()
        if task == "passkey" and haystack in g["haystacks"]
    }
    rows = {label: {r["memory_updates"]: r["exact"] for r in g["by_memory_updates"]} for label, g in grids.items()}
    labels = sorted({label for row in rows.values() for label in row} - {"n/a"}, key=bucket_order)
    if not labels:
        return []
    lines = [
        f"Accuracy by number of memory compressions ({HAYSTACK_LABELS[haystack]}): segment boundaries between the "
        "segment holding the last token of the key's last copy in the needle and the question's segment (0: that "
        "copy ends in the question's own segment, within local attention's reach), over every length and depth; "
        "exact match [95%, at the level of the key].",
        "",
    ]
    lines += table(
        ["row"] + labels, [[name] + [_pct(row[b]) if b in row else "–" for b in labels] for name, row in rows.items()]
    )
    by_length = {label: g.get("by_length_and_memory_updates", []) for label, g in grids.items()}
    return lines + [""] + _updates_by_length(by_length)


def _updates_by_length(groups: dict[str, list[dict]]) -> list[str]:
    """For each row (label: its `by_length_and_memory_updates`), exact match by memory updates within each length."""
    groups = {label: g for label, g in groups.items() if g}
    if not groups:
        return []
    lines = [UPDATES_BY_LENGTH, ""]
    for label, g in groups.items():
        lines += [f"{label}:", ""] + updates_by_length_table(g)
    return lines


def _learned_table(by_seed: dict, seeds: list) -> list[str]:
    """Whether each arm learned the task, seed by seed: its own grid at its fine-tuning length (`results.learned`)."""
    keyed: dict[tuple[str, str], dict] = {}
    for seed in seeds:
        for arm, by_haystack in by_seed.get(seed, {}).items():
            for haystack, at in by_haystack.items():
                keyed.setdefault((arm, haystack), {})[seed] = at

    def cell(at: dict | None) -> str:
        if at is None:
            return "–"
        return f"{_pct(at)} at {at['length']:,}" + ("" if at["learned"] else ", **not learned**")

    if not keyed:
        return []
    rows = [
        [arm, HAYSTACK_LABELS[haystack]] + [cell(found.get(s)) for s in seeds]
        for (arm, haystack), found in keyed.items()
    ]
    missed = [
        f"seed {seed}: {', '.join(arms)}"
        for seed in seeds
        if (arms := [a for a, by_h in by_seed.get(seed, {}).items() if not all(at["learned"] for at in by_h.values())])
    ]
    verdict = (
        f"Not learned ({'; '.join(missed)}). Beyond the fine-tuning length, a comparison with an arm that did not "
        "learn the task in that seed says that it did not, not how far its attention reaches."
        if missed
        else "Every arm learned the task" + (" in every seed." if len(seeds) > 1 else ".")
    )
    lines = [
        "## Did each arm learn the task?",
        "",
        "Each arm's own grid (memory on, no RoPE scaling) at its fine-tuning length, or the longest grid length within "
        f"it: exact match [95%, at the level of the key]. An arm has learned the task where it answers at least "
        f"{LEARNED:.0%} there on every haystack.",
        "",
    ]
    return lines + table(["arm", "haystack"] + [f"seed {s}" for s in seeds], rows) + ["", verdict, ""]


def _leads_table(leads: list[dict]) -> list[str]:
    if not leads:
        return []
    lines = [
        "## Infini's lead beyond the training length",
        "",
        "Mean over the lengths beyond the training length of (Infini's exact accuracy − the other row's), in "
        f"points, and at how many of those lengths Infini is ahead (or behind) {KEY_LEVEL}.",
        "",
    ]
    rows = [
        [d["infini"], d["baseline"], HAYSTACK_LABELS[d["haystack"]], f"{d['mean_lead']:+.0f}"]
        + [f"{d['ahead']}/{d['lengths']}", f"{d.get('behind', 0)}/{d['lengths']}"]
        for d in leads
    ]
    lines += table(["Infini arm", "compared with", "haystack", "mean lead", "lengths ahead", "behind"], rows)
    return lines + [""]


def _comparisons_table(cfg: StudyConfig, compared: list[dict]) -> list[str]:
    """Infini minus each other row at every length, with its key-level interval and verdict."""
    if not compared:
        return []
    keyed: dict[tuple, dict] = {}
    for c in compared:
        keyed.setdefault((c["infini"], c["baseline"], c["haystack"]), {})[c["multiple"]] = c
    rows = [
        [infini, baseline, HAYSTACK_LABELS[haystack]] + [_difference(by.get(m)) for m in cfg.eval_multiples]
        for (infini, baseline, haystack), by in keyed.items()
    ]
    lines = [
        "## Infini against each row, length by length",
        "",
        f"Infini's exact accuracy minus the row's on the same samples, in points, with its 95% interval {KEY_LEVEL}, "
        "and the verdict: ahead (the interval above 0), behind (below 0) or level.",
        "",
    ]
    header = ["Infini arm", "compared with", "haystack"] + [f"{m:g}×" for m in cfg.eval_multiples]
    return lines + table(header, rows) + [""]


BEST_ROPE = (
    "Of the baseline's RoPE-scaled rows, the one most often right at each length (on the same samples; named in "
    "parentheses), and Infini's exact accuracy minus it, in points"
)


def _best_rope_table(cfg: StudyConfig, best: list[dict]) -> list[str]:
    """Infini against the best RoPE-scaled row at each length (`results.best_rope`)."""
    if not best:
        return []
    keyed: dict[tuple, dict] = {}
    for c in best:
        keyed.setdefault((c["infini"], c["haystack"]), {})[c["multiple"]] = c
    rows = [
        [infini, HAYSTACK_LABELS[haystack]]
        + [_difference(by.get(m)) + _row_name(by.get(m)) for m in cfg.eval_multiples]
        for (infini, haystack), by in keyed.items()
    ]
    lines = [
        "## Infini against the best RoPE-scaled row, length by length",
        "",
        f"{BEST_ROPE}, with its 95% interval {KEY_LEVEL} and the verdict. Choosing the row after the fact favours the "
        "baseline.",
        "",
    ]
    return lines + table(["Infini arm", "haystack"] + [f"{m:g}×" for m in cfg.eval_multiples], rows) + [""]


def _row_name(c: dict | None) -> str:
    """The RoPE scaling of a best-row comparison: " (RoPE YaRN ×16)"."""
    return f" ({c['scaling']})" if c and c.get("scaling") else ""


def _difference(c: dict | None) -> str:
    if c is None:
        return "–"
    return f"{100 * c['difference']:+.0f} [{100 * c['ci_low']:+.0f}, {100 * c['ci_high']:+.0f}] {c['verdict']}"


def _gates_table(entries: dict) -> list[str]:
    """The final gates of every Infini arm: learned or frozen, mean g per layer, and the saturated heads."""
    rows = []
    for name, entry in entries.items():
        gates = entry.get("gates")
        if gates is None:
            continue
        sat = gates["saturated"]
        rows.append([
            name, f"{gates['activation']}, {'learned' if entry.get('gate_trainable', True) else 'frozen'}",
            f"{gates['mean']:.3f}", " / ".join(f"{g:.2f}" for g in gates["layer_mean"]),
            f"{sat['saturated']}/{sat['heads']} ({100 * sat['share']:.0f}%)", str(sat["closed"]), str(sat["open"]),
        ])  # fmt: skip
    if not rows:
        return []
    lines = [
        "## Memory gates",
        "",
        f"The balance factor g = act(β) after fine-tuning (1: memory only, 0: local attention only). A head is "
        f"saturated when g < {SATURATION:g} (closed) or g > {1 - SATURATION:g} (open). Every head's g: Details, below.",
        "",
    ]
    header = ["Infini arm", "gate", "mean g", "mean g per layer", "saturated heads", "closed", "open"]
    return lines + table(header, rows) + [""]


def _layers_off_text(row: dict) -> list[str]:
    return [
        f"What each layer's memory adds: exact match at {row['length']} tokens on the "
        f"{HAYSTACK_LABELS[row['haystack']]} with the memory switched off in that layer only (its gates closed), "
        "against the plain grid's samples at that length; the drop is in points. If the gate says how much a layer "
        "relies on its memory, layers with a higher mean g lose more (a positive correlation).",
        "",
    ]


def _layers_off_table(entries: dict) -> list[str]:
    """Per Infini arm and layer: the mean gate, the accuracy with that layer's memory off, the drop; and r."""
    lines, rows = [], []
    for name, entry in entries.items():
        off = entry.get("layers_off")
        if not off:
            continue
        for x in off["layers"]:
            rows.append([name, str(x["layer"]), f"{x['gate_mean']:.2f}", _pct(x["exact"]), f"{x['drop']:+.0f}"])
        r = off["pearson"]
        rows.append([name, "all on", "", _pct(off["memory_on"]), f"r = {_num(r, 2)}"])
        if not lines:
            lines = ["## Memory switched off in one layer", "", *_layers_off_text(off)]
    if not rows:
        return []
    header = ["Infini arm", "layer", "mean g", "exact, this layer's memory off", "drop (points)"]
    return lines + table(header, rows) + [""]


def _layers_off_by_seed(summary: dict) -> list[str]:
    """Per Infini arm and layer across seeds: mean gate and drop (mean ± sd), and r over every (seed, layer)."""
    lines, rows = [], []
    for name, found in summary.get("layers_off", {}).items():
        for x in found["layers"]:
            g, d = x["gate_mean"], x["drop"]
            rows.append(
                [name, str(x["layer"]), f"{g['mean']:.2f} ± {g['std']:.2f}", f"{d['mean']:+.0f} ± {d['std']:.0f}"]
            )
        rs, within = found.get("pearson_spread"), found.get("within_layers")
        per_seed = "–" if rs is None else f"{rs['mean']:.2f} ± {rs['std']:.2f} [{rs['min']:.2f}, {rs['max']:.2f}]"
        rows.append([name, "r per seed (over its layers): mean ± sd [min, max]", "", per_seed])
        if within is not None:
            rows.append(
                [
                    name,
                    "r within layers (layer means removed)",
                    "",
                    f"{within['r']:.2f}, permutation p = {within['p']:.3f} ({within['points']} points)",
                ]
            )
        if not lines:
            lines = ["## Memory switched off in one layer, across seeds", "", *_layers_off_text(found)]
    if not rows:
        return []
    return lines + table(["Infini arm", "layer", "mean g", "drop (points)"], rows) + [""]


def _relink(line: str) -> str:
    """Point the detail report's relative image links at report/."""
    return line.replace("](", "](report/") if "![" in line and "](http" not in line else line


def write_across_report(cfg: StudyConfig, out: Path, summary: dict, command: str | None) -> Path:
    """REPORT.md of a multi-seed study: every passkey row's mean and spread across seeds, the lead per seed, accuracy
    by memory updates with the seeds pooled, the LR each arm got per seed, and every seed's exact accuracy."""
    seeds = summary["seeds"]
    lines = [f"# Study report: Infini-attention vs full attention ({cfg.preset}), seeds {', '.join(map(str, seeds))}"]
    lines += ["", describe_study(cfg), "", *([f"Command: `{command}`", ""] if command else [])]
    lines += _left_out(summary.get("left_out"))
    if len(summary["environments"]) > 1:  # seeds run in separate leases: name each one's
        for seed, results in summary["per_seed"].items():
            lines += environment_lines(results["environments"], prefix=f"Seed {seed}")
    else:
        lines += environment_lines(summary["environments"])
    links = ", ".join(f"[seed {s}](seed-{s}/REPORT.md)" for s in seeds)
    lines += [f"Each seed is a whole study (pretraining, fine-tuning, LR choice, every evaluation): {links}.", ""]
    first = summary["rows"][0]
    lengths = [x["length"] for x in next(iter(first["haystacks"].values()))]
    for haystack in cfg.eval_haystacks:
        rows = [r for r in summary["rows"] if haystack in r["haystacks"]]
        lines += [f"## Passkey accuracy across seeds: {HAYSTACK_LABELS[haystack]}", ""]
        lines += ["Exact match, mean over seeds ± standard deviation [min–max].", ""]
        lines += table(
            _header(cfg, lengths),
            [[r["label"]] + [_spread(x["exact"]) for x in r["haystacks"][haystack]] for r in rows],
        )
        missing = [
            f"{r['label']} at {x['multiple']:g}× (seed {', '.join(map(str, x['missing_seeds']))})"
            for r in rows
            for x in r["haystacks"][haystack]
            if x.get("missing_seeds")
        ]
        if missing:
            lines += ["", f"Not in these means, their grid being incomplete: {'; '.join(missing)}."]
        lines += [""]
    lines += _learned_table(summary.get("learned", {}), seeds)
    lines += _leads_by_seed(summary)
    lines += _verdicts_by_seed(cfg, summary)
    lines += _best_rope_by_seed(cfg, summary)
    lines += _updates_pooled(cfg, summary.get("memory_updates_pooled", {}))
    lines += _key_kinds(cfg, summary.get("key_kinds_pooled", {}), pooled=True)
    lines += _needle_cuts(cfg, summary.get("needle_cuts_pooled", {}), pooled=True)
    lines += _depths(cfg, summary.get("depths_pooled", {}), pooled=True)
    lines += _answers(cfg, summary.get("answers_pooled", {}), pooled=True)
    lines += _gates_by_seed(summary)
    lines += _layers_off_by_seed(summary)
    lines += _finetune_losses_by_seed(summary, out)
    lines += _stage_times_by_seed(summary)
    lines += ["## Fine-tuning LR chosen per seed", ""]
    chosen = [[name] + [_lr(by_seed.get(s)) for s in seeds] for name, by_seed in summary["chosen_lr"].items()]
    lines += table(["arm"] + [f"seed {s}" for s in seeds], chosen)
    lines += ["", "## Per seed", ""]
    for haystack in cfg.eval_haystacks:
        lines += [f"Exact match, {HAYSTACK_LABELS[haystack]}:", ""]
        rows = [
            [r["label"], str(s)] + [_rate(x["exact"]["per_seed"].get(s)) for x in r["haystacks"][haystack]]
            for r in summary["rows"]
            if haystack in r["haystacks"]
            for s in seeds
        ]
        lines += table(["row", "seed"] + _header(cfg, lengths)[1:], rows)
        lines += [""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _stage_times_by_seed(summary: dict) -> list[str]:
    """Each arm's wall time per seed: pretraining / fine-tuning / evaluation."""
    per_seed = summary["per_seed"]
    names = list(dict.fromkeys(name for results in per_seed.values() for name in results["arms"]))
    rows = []
    for name in names:
        cells = []
        for results in per_seed.values():
            entry = results["arms"].get(name)
            groups = _grouped_seconds(entry) if entry else None
            cells.append(" / ".join(duration(groups[g]) for g in STAGE_GROUPS) if groups else "–")
        rows.append([name, *cells])
    return [
        "## Stage times per seed",
        "",
        "Wall time of each arm's pretraining / fine-tuning / evaluation (arms run at once shared the host or GPU).",
        "",
        *table(["arm", *(f"seed {s}" for s in per_seed)], rows),
        "",
    ]


def _finetune_losses_by_seed(summary: dict, out: Path) -> list[str]:
    """Each fine-tuning run's training loss at half and at all of its steps, seed by seed, and finetune_loss.png: a
    panel per run, a line per seed."""
    by_seed = {seed: _finetune_runs(results["arms"]) for seed, results in summary["per_seed"].items()}
    labels = list(dict.fromkeys(label for runs in by_seed.values() for label in runs))
    if not labels:
        return []
    rows = []
    for label in labels:
        cells = []
        for runs in by_seed.values():
            curve, entry = runs.get(label, (None, None))
            steps = entry["recipe"]["finetune"]["steps"] if entry else 0
            cells.append(f"{_num(_loss_at(curve, 0.5, steps))} → {_num(_loss_at(curve, 1.0, steps))}" if curve else "–")
        rows.append([label, *cells])
    panels = {
        label: {f"seed {seed}": tuple(zip(*runs[label][0]["train"], strict=True))
                for seed, runs in by_seed.items() if label in runs}
        for label in labels
    }  # fmt: skip
    plots.panels(panels, out / "finetune_loss.png", xlabel="step", ylabel="training loss (window mean)", ylog=True,
                 vline=_curriculum_end({k: v for runs in by_seed.values() for k, v in runs.items()}))  # fmt: skip
    return [
        "## Fine-tuning loss per seed",
        "",
        "Each fine-tuning run's training loss (the answer loss, with `loss=answer`) at half of its steps → at the "
        "end (window means); the curves, a panel per run, a line per seed: [`finetune_loss.png`](finetune_loss.png).",
        "",
        *table(["run", *(f"seed {s}" for s in by_seed)], rows),
        "",
        "![fine-tuning loss per seed](finetune_loss.png)",
        "",
    ]


def _updates_pooled(cfg: StudyConfig, pooled: dict) -> list[str]:
    """Exact match by the number of memory updates, every seed's samples pooled: over all lengths, then within each."""
    lines = []
    for haystack in cfg.eval_haystacks:
        rows = {e["label"]: e["haystacks"][haystack] for e in pooled.values() if haystack in e["haystacks"]}
        labels = sorted({r["memory_updates"] for g in rows.values() for r in g["by_memory_updates"]} - {"n/a"},
                        key=bucket_order)  # fmt: skip
        if not labels:
            continue
        lines += [f"## Accuracy by memory updates, seeds pooled: {HAYSTACK_LABELS[haystack]}", ""]
        lines += [
            "Memory updates between the segment holding the last token of the key's last copy and the question's "
            "segment; exact match over every seed's samples [95%, at the level of the key]. Over every length and "
            "depth:",
            "",
        ]
        by_bucket = {
            label: {r["memory_updates"]: r["exact"] for r in g["by_memory_updates"]} for label, g in rows.items()
        }
        lines += table(
            ["row"] + labels,
            [[name] + [_pct(row[b]) if b in row else "–" for b in labels] for name, row in by_bucket.items()],
        )
        lines += [""] + _updates_by_length({label: g["by_length_and_memory_updates"] for label, g in rows.items()})
    return lines


def _haystack_sections(
    cfg: StudyConfig,
    by_row: dict[str, dict[str, list[dict]]],
    title: str,
    intro: str,
    header: list[str],
    body_of,
    column: str = "length",
    column_label=lambda n: f"{n:,}",
) -> list[str]:
    """A section per haystack, `title` and `intro` atop a table with `header` then a column per value of each
    entry's `column` (a length unless named), whose lines `body_of(label, grid, values)` gives for each row that has
    a grid on that haystack."""
    lines = []
    for haystack in cfg.eval_haystacks:
        rows = {label: grids[haystack] for label, grids in by_row.items() if grids.get(haystack)}
        if not rows:
            continue
        values = sorted({r[column] for g in rows.values() for r in g})
        body = [line for label, grid in rows.items() for line in body_of(label, grid, values)]
        lines += [f"## {title}: {HAYSTACK_LABELS[haystack]}", "", intro, ""]
        lines += table([*header, *(column_label(v) for v in values)], body) + [""]
    return lines


def _key_kinds(cfg: StudyConfig, by_row: dict[str, dict[str, list[dict]]], pooled: bool) -> list[str]:
    """Exact match of every row by length and kind of key (`scoring.KEY_KINDS`), on each haystack."""

    def body(label: str, grid: list[dict], lengths: list[int]) -> list[list[str]]:
        cells = {(r["length"], r["key_kind"]): r["exact"] for r in grid}
        lines = []
        for kind in KEY_KINDS:
            found = [cells.get((n, kind)) for n in lengths]
            keys = max((c["clusters"] for c in found if c), default=0)
            lines.append([label, f"{kind} ({keys})"] + [_pct(c) if c else "–" for c in found])
        return lines

    samples = "over every seed's samples " if pooled else ""
    intro = (
        "Keys of the second kind have a digit followed by two different digits (90080: 0 by 0 and by 8), so the "
        f"digit just written does not say which comes next: the order must come from position. Exact match "
        f"{samples}[95%, at the level of the key], the number of keys of each kind in parentheses."
    )
    title = f"Accuracy by kind of key{', seeds pooled' if pooled else ''}"
    return _haystack_sections(cfg, by_row, title, intro, ["row", "keys"], body)


def _needle_cuts(cfg: StudyConfig, by_row: dict[str, dict[str, list[dict]]], pooled: bool) -> list[str]:
    """Exact match of every row with a segment length by length and where a segment boundary cuts the needle
    (`results.by_needle_cut`), on each haystack; nothing where no grid has a needle cut."""
    if not any(r["needle_cut"] != NEEDLE_WHOLE for grids in by_row.values() for g in grids.values() for r in g):
        return []

    def body(label: str, grid: list[dict], lengths: list[int]) -> list[list[str]]:
        cells = {(r["length"], r["needle_cut"]): r["exact"] for r in grid}
        places = sorted({cut for _, cut in cells}, key=needle_cut_order)
        return [
            [label, "no boundary in it" if cut == NEEDLE_WHOLE else f"cut after {cut} of its tokens"]
            + [_pct(cells[n, cut]) if (n, cut) in cells else "–" for n in lengths]
            for cut in places
        ]

    samples = "over every seed's samples " if pooled else ""
    intro = (
        "Exact match by where a segment boundary falls in the needle: none, or after how many of its tokens (a "
        "memory update then splits the needle; after its first few tokens the key's copies stay together, further "
        f"in they are split from each other or cut), {samples}[95%, at the level of the key]. The grid's lengths and "
        "depths fix where the boundaries fall: a cell is cut in every prompt or in none, so a row of cut needles is "
        "a few cells, and full attention's row on them says how hard those cells are without a memory."
    )
    title = f"Accuracy by where a segment boundary cuts the needle{', seeds pooled' if pooled else ''}"
    return _haystack_sections(cfg, by_row, title, intro, ["row", "needle"], body)


def _depths(cfg: StudyConfig, by_row: dict[str, dict[str, list[dict]]], pooled: bool) -> list[str]:
    """Exact match of every row by the needle's depth over the lengths beyond the training length, on each
    haystack (`results.by_depth_beyond`)."""

    def body(label: str, grid: list[dict], depths: list[float]) -> list[list[str]]:
        cells = {r["depth"]: r["exact"] for r in grid}
        return [[label] + [_pct(cells[d]) if d in cells else "–" for d in depths]]

    samples = "over every seed's samples " if pooled else ""
    intro = (
        "Exact match at every length beyond the training length, by the needle's depth (0: it opens the filler, 1: "
        f"it ends just before the question), {samples}[95%, at the level of the key]. Depth 0 is both the farthest "
        "from the question and the nearest to the prompt's start; the tables by memory updates say how far back."
    )
    title = f"Accuracy by depth beyond the training length{', seeds pooled' if pooled else ''}"
    return _haystack_sections(cfg, by_row, title, intro, ["row"], body, "depth", lambda d: f"depth {d:g}")


ANSWER_MEASURES = {
    "first": "first digit right",
    "reordered": "the key's digits, reordered",
    "from_key": "answer digits found in the key",
}


def _answers(cfg: StudyConfig, by_row: dict[str, dict[str, list[dict]]], pooled: bool) -> list[str]:
    """What every row's answers hold of the key, by length (`results.answers_by_length`), on each haystack."""

    def body(label: str, grid: list[dict], lengths: list[int]) -> list[list[str]]:
        cells = {r["length"]: r for r in grid}
        found = [cells.get(n) for n in lengths]
        lines = []
        for part, name in ANSWER_MEASURES.items():
            if part == "from_key":
                chance = [c["chance_from_key"] for c in found if c]
                name += f" (random: {100 * sum(chance) / len(chance):.0f}%)"
            lines.append([label, name] + [_pct(c[part]) if c and c[part]["n"] else "–" for c in found])
        return lines

    samples = "over every seed's samples " if pooled else ""
    intro = (
        "Of each greedy answer's number: whether its first digit is the key's; whether it is the key's digits "
        "in another order (each as often as in the key); and the share of its digits that occur in the key at "
        "all, against that share for digits drawn at random (in parentheses). A model that has learned which "
        "digits the key holds but not their order answers with them reordered or repeated: many digits from "
        f"the key, few exact answers. Shares {samples}[95%, at the level of the key]."
    )
    title = f"What the answers hold{', seeds pooled' if pooled else ''}"
    return _haystack_sections(cfg, by_row, title, intro, ["row", "answers"], body)


MISSED_SHOWN = 5  # keys per row in the report (results.json keeps them all)


def _missed_keys(cfg: StudyConfig, entries: dict) -> list[str]:
    """The keys each row misses most up to the training length, with their commonest wrong answer, per haystack."""
    lines = []
    for haystack in cfg.eval_haystacks:
        body = []
        for label, _, _, grids in passkey_rows(entries):
            keys = (grids.get(haystack) or {}).get("keys_missed")
            if keys is None:
                continue
            missed = keys["missed"]
            if len(missed) == keys["keys"] and all(m["wrong"] == m["prompts"] for m in missed):
                shown = "every key at every prompt"
            else:
                shown = (
                    ", ".join(
                        f"{m['key']} {m['wrong']}/{m['prompts']} (→ {m['commonest_answer'] or 'nothing'})"
                        for m in missed[:MISSED_SHOWN]
                    )
                    or "none"
                )
                shown += f", and {len(missed) - MISSED_SHOWN} more" if len(missed) > MISSED_SHOWN else ""
            body.append([label, f"{len(missed)} of {keys['keys']}", shown])
        if not body:
            continue
        lines += [f"## Keys missed up to the training length: {HAYSTACK_LABELS[haystack]}", ""]
        lines += [
            "Each key missed at least once at or below the training length: wrong prompts of its prompts there, and "
            f"its commonest wrong answer (the {MISSED_SHOWN} most missed per row; all in results.json). Misses that "
            "sit on a few keys, wrong at every depth, are the model's blind spots, not noise over prompts.",
            "",
        ]
        lines += table(["row", "keys missed", "most missed"], body) + [""]
    return lines


def _spread(stats: dict) -> str:
    return f"{100 * stats['mean']:.0f}% ± {100 * stats['std']:.0f} [{100 * stats['min']:.0f}–{100 * stats['max']:.0f}]"


def _rate(rate: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.0f}%"


def _lead(lead: dict | None) -> str:
    if lead is None:
        return "–"
    return f"{lead['mean_lead']:+.0f} ({lead['ahead']}/{lead['lengths']} ahead, {lead.get('behind', 0)} behind)"


def _leads_by_seed(summary: dict) -> list[str]:
    seeds = summary["seeds"]
    keyed: dict[tuple, dict] = {}
    for seed in seeds:
        for d in summary["leads"][seed]:
            keyed.setdefault((d["infini"], d["baseline"], d["haystack"]), {})[seed] = d
    if not keyed:
        return []
    lines = [
        "## Infini's lead beyond the training length, per seed",
        "",
        "Mean over the lengths beyond the training length of (Infini's exact accuracy − the other row's), in "
        f"points, and in parentheses at how many of those lengths Infini is ahead or behind {KEY_LEVEL}.",
        "",
    ]
    rows = []
    for (infini, baseline, haystack), by_seed in keyed.items():
        cells = [_lead(by_seed.get(s)) for s in seeds]
        rows.append([infini, baseline, HAYSTACK_LABELS[haystack]] + cells)
    return lines + table(["Infini arm", "compared with", "haystack"] + [f"seed {s}" for s in seeds], rows) + [""]


def _verdicts_by_seed(cfg: StudyConfig, summary: dict) -> list[str]:
    """Per Infini arm, other row, haystack and length: each seed's difference in points and its verdict."""
    seeds = summary["seeds"]
    keyed: dict[tuple, dict] = {}
    for seed in seeds:
        for c in summary["per_seed"][seed].get("comparisons", []):
            keyed.setdefault((c["infini"], c["baseline"], c["haystack"], c["multiple"]), {})[seed] = c
    if not keyed:
        return []
    rows = []
    for (infini, baseline, haystack, multiple), by_seed in keyed.items():
        cells = ["–" if s not in by_seed else f"{100 * by_seed[s]['difference']:+.0f} {by_seed[s]['verdict']}"
                 for s in seeds]  # fmt: skip
        ahead = sum(c["verdict"] == "ahead" for c in by_seed.values())
        rows.append([infini, baseline, HAYSTACK_LABELS[haystack], f"{multiple:g}×", *cells, f"{ahead}/{len(by_seed)}"])
    lines = [
        "## Infini against each row, length by length, per seed",
        "",
        f"Infini's exact accuracy minus the row's, in points, and the verdict {KEY_LEVEL}: ahead, level or behind.",
        "",
    ]
    header = ["Infini arm", "compared with", "haystack", "length", *[f"seed {s}" for s in seeds], "seeds ahead"]
    return lines + table(header, rows) + [""]


def _best_rope_by_seed(cfg: StudyConfig, summary: dict) -> list[str]:
    """Per Infini arm, haystack and length: each seed's difference from the best RoPE-scaled row, its interval, its
    verdict and the row, and how many seeds are ahead, level and behind."""
    seeds = summary["seeds"]
    keyed: dict[tuple, dict] = {}
    for seed in seeds:
        for c in summary["per_seed"][seed].get("best_rope", []):
            keyed.setdefault((c["infini"], c["haystack"], c["multiple"]), {})[seed] = c
    if not keyed:
        return []
    rows = []
    for (infini, haystack, multiple), by_seed in keyed.items():
        cells = [_difference(by_seed.get(s)) + _row_name(by_seed.get(s)) for s in seeds]
        count = [sum(c["verdict"] == v for c in by_seed.values()) for v in ("ahead", "level", "behind")]
        rows.append([infini, HAYSTACK_LABELS[haystack], f"{multiple:g}×", *cells, " / ".join(map(str, count))])
    lines = [
        "## Infini against the best RoPE-scaled row, length by length, per seed",
        "",
        f"{BEST_ROPE}, with its 95% interval {KEY_LEVEL} and the verdict. Choosing the row after the fact favours the "
        "baseline.",
        "",
    ]
    header = ["Infini arm", "haystack", "length", *[f"seed {s}" for s in seeds], "ahead / level / behind"]
    return lines + table(header, rows) + [""]


def _gates_by_seed(summary: dict) -> list[str]:
    """Per Infini arm and seed: the saturated heads and the mean gate."""
    seeds = summary["seeds"]
    arms = summary["per_seed"][seeds[0]]["arms"]
    rows = []
    for name, entry in arms.items():
        if entry["attention"] != "infini":
            continue
        cells = []
        for seed in seeds:
            gates = summary["per_seed"][seed]["arms"][name].get("gates")
            sat = (gates or {}).get("saturated")
            cells.append("–" if sat is None else f"{sat['saturated']}/{sat['heads']}, g {gates['mean']:.2f}")
        rows.append([name] + cells)
    if not rows:
        return []
    lines = [
        "## Saturated gates per seed",
        "",
        f"Heads whose final gate is saturated (g < {SATURATION:g} or g > {1 - SATURATION:g}) out of all heads, and "
        "the mean g.",
        "",
    ]
    return lines + table(["Infini arm"] + [f"seed {s}" for s in seeds], rows) + [""] + _gate_layers_across(summary)


def _gate_layers_across(summary: dict) -> list[str]:
    """Per Infini arm: each layer's mean gate after pretraining (where fine-tuning starts) and after fine-tuning,
    mean ± standard deviation over seeds: which layers use the memory, and what fine-tuning changes."""
    seeds = summary["seeds"]
    rows, layers = [], 0
    for name, entry in summary["per_seed"][seeds[0]]["arms"].items():
        if entry["attention"] != "infini":
            continue
        gates = [summary["per_seed"][s]["arms"][name].get("gates") or {} for s in seeds]
        starts = [(g.get("trajectory") or [{}])[0] for g in gates]
        for when, per_seed in (
            ("after pretraining", [t.get("layer_mean") if t.get("step") == 0 else None for t in starts]),
            ("after fine-tuning", [g.get("layer_mean") for g in gates]),
        ):
            if any(v is None for v in per_seed):
                continue
            means = [spread([v[i] for v in per_seed]) for i in range(len(per_seed[0]))]
            overall = spread([sum(v) / len(v) for v in per_seed])
            rows.append([name, when, [f"{m['mean']:.2f} ± {m['std']:.2f}" for m in means + [overall]]])
            layers = max(layers, len(means))
    if not rows:
        return []
    # Arms of a sweep over the depth have fewer layers than others: their missing layers are "–".
    rows = [[name, when, *cells[:-1], *["–"] * (layers + 1 - len(cells)), cells[-1]] for name, when, cells in rows]
    lines = [
        "## Gates per layer across seeds",
        "",
        "Each layer's mean g (1: memory only, 0: local attention only), mean ± standard deviation over seeds, where "
        "fine-tuning starts (the pretrained model) and where it ends.",
        "",
    ]
    header = ["Infini arm", "when"] + [f"layer {i}" for i in range(layers)] + ["all layers"]
    return lines + table(header, rows) + [""]
