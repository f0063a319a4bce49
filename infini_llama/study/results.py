"""The numbers of a study, as written to results.json: per seed, each arm's recipe, training, LR selection, passkey
grids on every haystack, perplexity, gates and what each layer's memory adds; across seeds, the mean and spread of
every passkey row, Infini's lead over the baseline beyond the training length seed by seed, each layer's gate
against its memory's drop, and accuracy by memory updates (over all lengths and within each) with the seeds'
samples pooled."""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from infini_llama.data.sampler import WindowSampler
from infini_llama.eval.diagnostics import bucket_order, needle_cut_bucket, needle_cut_order, saturated_gates
from infini_llama.eval.records import SAMPLES
from infini_llama.eval.rope_scaling import rope_scaling_label
from infini_llama.eval.scoring import (
    KEY_KINDS,
    answer_digits,
    chance_from_key,
    clustered_proportion,
    key_kind,
    key_totals,
    paired_difference,
)
from infini_llama.study.arms import Arm, counterparts
from infini_llama.study.config import StudyConfig
from infini_llama.study.stages import (
    arm_stages,
    candidate_lrs,
    eval_lengths,
    finetune_dir,
    layer_off_folder,
    layer_off_length,
    passkey_label,
    passkey_tasks,
    rope_rows,
    train_recipe,
    training_length,
)
from infini_llama.train import TrainConfig, read_metrics


def sequences_per_step(tcfg: TrainConfig) -> int:
    """Sequences in one optimizer step: the global batch when the recipe sets one (it fixes the step on any number
    of processes), else batch_size × grad_accum (a study runs each arm in one process)."""
    return tcfg.global_batch or tcfg.batch_size * tcfg.grad_accum


def recipe_summary(tcfg: TrainConfig) -> dict[str, Any]:
    return {
        "steps": tcfg.steps, "sequences_per_step": sequences_per_step(tcfg), "seq_len": tcfg.seq_len, "lr": tcfg.lr,
        "min_lr": tcfg.min_lr, "warmup_steps": tcfg.warmup_steps, "decay_steps": tcfg.decay_steps,
        "gate_lr": tcfg.gate_lr,
    }  # fmt: skip


CURVE_POINTS = 30  # windows of a fine-tuning loss curve


def finetune_curve(run_dir: Path, steps: int, points: int = CURVE_POINTS) -> dict | None:
    """A fine-tuning run's loss curve from its metrics.jsonl: the logged training losses (the loss of every
    `log_every`-th step) averaged over `points` windows of equal steps, as [last step, mean]; and every validation
    loss as [step, loss]; and the median tokens/s it trained at. With the loss on the answer, this is the answer loss:
    its plateau (guessing each digit) and when, whether, a run leaves it is what a recipe screen reads; the loss on
    each answer token at each validation says which part of the answer it has learned. None before the run has
    logged."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = read_metrics(path, "train")
    train = [(r["step"], r["loss"]) for r in records]
    if not train:
        return None
    width = -(-steps // points)
    windows: dict[int, list[float]] = {}
    for step, loss in train:
        windows.setdefault((step - 1) // width, []).append(loss)
    rates = [r["tokens_per_s"] for r in records[1:] if r.get("tokens_per_s")]  # the first window holds start-up
    val = read_metrics(path, "val")
    return {
        "window_steps": width,
        "train": [[min(steps, (w + 1) * width), round(statistics.fmean(v), 5)] for w, v in sorted(windows.items())],
        "val": [[r["step"], round(r["loss"], 5)] for r in val],
        # The loss on each answer token at each validation (`PasskeyBatchSource.answer_token_validation`), where logged.
        "val_by_token": [
            [r["step"], [None if x is None else round(x, 5) for x in r["answer_token_losses"]]]
            for r in val
            if r.get("answer_token_losses")
        ],
        # The loss on answers written in a new segment (`PasskeyBatchSource.boundary_batches`) and on answers to
        # needles cut by a segment boundary (`needle_boundary_batches`), where logged.
        "val_boundary": [[r["step"], round(r["boundary_loss"], 5)] for r in val if r.get("boundary_loss") is not None],
        "val_needle_boundary": [
            [r["step"], round(r["needle_boundary_loss"], 5)] for r in val if r.get("needle_boundary_loss") is not None
        ],
        "tokens_per_s": round(statistics.median(rates)) if rates else None,
    }


LEARNED = 0.9  # exact match at its fine-tuning length from which an arm counts as having learned the passkey
TREND_TARGETS = (0.1, 0.01)  # answer losses a projection is given for (mini's arms at >= 95% ended near 0.005)
TREND_MIN_WINDOWS = 3


def loss_trend(curve: dict, steps: int, curriculum_steps: int = 0, tokens_per_step: int | None = None) -> dict | None:
    """Where a fine-tuning run's loss was heading: a least-squares line through the log of its window means over
    the second half of its steps (after its curriculum over needle distance, which changes the task), as the factor
    kept per 1,000 steps, and, were it to hold, the step at which the loss would reach each of TREND_TARGETS below
    the line's last value, with its tokens and the time at the run's own measured tokens/s. A projection from one
    run's recent trend, not a promise: the schedule (a cosine at its floor), a plateau or a drop can change it.
    None with fewer than TREND_MIN_WINDOWS windows there."""
    start = max(steps / 2, curriculum_steps)
    points = [(end, loss) for end, loss in curve.get("train", []) if end > start and loss > 0]
    if len(points) < TREND_MIN_WINDOWS:
        return None
    x = np.array([end for end, _ in points], dtype=float)
    slope, intercept = np.polyfit(x, np.log([loss for _, loss in points]), 1)
    last = float(x[-1])
    at_last = float(np.exp(intercept + slope * last))
    trend: dict[str, Any] = {
        "from_step": int(x[0]), "to_step": int(last), "kept_per_1000_steps": float(np.exp(1000 * slope)),
        "fitted_loss": at_last, "projections": [],
    }  # fmt: skip
    rate = curve.get("tokens_per_s")
    for target in TREND_TARGETS:
        if slope >= 0 or target >= at_last:
            continue
        step = last + (np.log(target) - np.log(at_last)) / slope
        tokens = step * tokens_per_step if tokens_per_step else None
        trend["projections"].append({
            "loss": target, "step": int(round(step)), "tokens": int(round(tokens)) if tokens else None,
            "seconds": round(tokens / rate) if tokens and rate else None,
        })  # fmt: skip
    return trend


def stage_seconds(cfg: StudyConfig, arm: Arm, root: Path) -> dict[str, float]:
    """Wall seconds of each finished stage of `arm`, in the order they run (from the `<stage>.done` markers; a
    pretraining copied from another arm counts the copy). Arms run side by side share the host or GPU: each
    stage's time is what it took so, not what it takes alone."""
    seconds = {}
    for name, _ in arm_stages(cfg, arm, root, "cpu", progress=False):
        marker = _marker(root / f"{name}.done")
        if marker is not None and "seconds" in marker:
            seconds[name] = round(marker["seconds"], 1)
    return seconds


def _curve_with_trend(cfg: StudyConfig, arm: Arm, root: Path, lr: float) -> dict:
    """The fine-tuning run at `lr`'s loss curve and, with the loss on the answer, its trend (`loss_trend`)."""
    tcfg = train_recipe(cfg, arm, "finetune")
    curve = {"lr": lr, **(finetune_curve(finetune_dir(root, lr), tcfg.steps) or {})}
    passkey = {**cfg.passkey, **arm.passkey}
    if curve.get("train") and passkey.get("loss") == "answer":
        tokens = sequences_per_step(tcfg) * tcfg.seq_len
        curve["trend"] = loss_trend(curve, tcfg.steps, passkey.get("curriculum_steps") or 0, tokens)
    return curve


def _marker(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _summary(path: Path) -> dict | None:
    return _marker(path / "summary.json")


def training_split_reads(run_dir: Path, steps: int | None = None) -> float | None:
    """How many times a run on text read its training split, as the trainer counts it at its start
    (`TokenWindowSource.reading`): the windows its `steps` (else its recipe's) read over the windows the split holds.
    A large model over many passes of a small corpus memorises it (reports/paper-h200-screen/, lease P). None for a
    run that has not started or did not train on text."""
    file = run_dir / "run.json"
    if not file.is_file():
        return None
    run = json.loads(file.read_text())
    data = run.get("data") or {}
    if not {"num_tokens", "seq_len", "sequences_per_step"} <= data.keys():
        return None
    windows = WindowSampler(data["num_tokens"], data["seq_len"], mode=data.get("mode", "random")).num_windows
    return round((run["train"]["steps"] if steps is None else steps) * data["sequences_per_step"] / windows, 2)


def seed_results(cfg: StudyConfig, arms: list[Arm], out: Path) -> dict:
    """The numbers of the single-seed study in `out`."""
    entries = {}
    for arm in arms:
        root = out / arm.name
        pretrain = _marker(root / "pretrain.done")
        entry: dict[str, Any] = {
            "attention": arm.attention,
            "seed": arm.seed,
            "model": arm.model,
            # Infini arms: whether the gates learned (False: frozen at gate_init, the gate ablation).
            "gate_trainable": (
                {**cfg.model, **arm.model}.get("gate_trainable", True) if arm.attention == "infini" else None
            ),
            "training_length": training_length(cfg, arm),
            "recipe": {
                "pretrain": recipe_summary(train_recipe(cfg, arm, "pretrain")),
                "finetune": recipe_summary(train_recipe(cfg, arm, "finetune")),
                "finetune_lrs": list(candidate_lrs(cfg, arm)),
                "passkey_data": json.loads(json.dumps({**cfg.passkey, **arm.passkey})),
            },
            "pretrain": pretrain,
            "pretrain_reads": training_split_reads(root / "pretrain", (pretrain or {}).get("steps")),
            "finetune": [_marker(root / f"{finetune_dir(root, lr).name}.done") for lr in candidate_lrs(cfg, arm)],
            "finetune_curves": [_curve_with_trend(cfg, arm, root, lr) for lr in candidate_lrs(cfg, arm)],
            "selection": _marker(root / "select.done"),
            "stage_seconds": stage_seconds(cfg, arm, root),
            "passkey": {},
        }
        for task in passkey_tasks(cfg, arm):
            grids = {}
            for haystack in cfg.eval_haystacks:
                summary = _summary(root / "eval" / f"{task}-{haystack}")
                if summary is not None and summary.get("status") == "complete":
                    results = summary["results"]
                    grids[haystack] = {
                        "by_length": [
                            {"length": r["length"], "exact": _rate(r["exact"]), "digit_acc": r["digit_acc"]}
                            for r in results["by_length"]
                        ],
                        "by_memory_updates": [
                            {"memory_updates": r["memory_updates"], "exact": r["exact"]}
                            for r in results["by_memory_updates"]
                        ],
                        "by_length_and_memory_updates": [
                            {"length": r["length"], "memory_updates": r["memory_updates"], "exact": r["exact"]}
                            for r in results.get("by_length_and_memory_updates", [])
                        ],
                        "cells": [
                            {"length": r["length"], "depth": r["depth"], "exact": _rate(r["exact"])}
                            for r in results["cells"]
                        ],
                        "by_length_and_key_kind": by_key_kind(root / "eval" / f"{task}-{haystack}"),
                        "by_length_and_needle_cut": by_needle_cut(root / "eval" / f"{task}-{haystack}"),
                        "by_depth_beyond_training": by_depth_beyond(
                            root / "eval" / f"{task}-{haystack}", training_length(cfg, arm)
                        ),
                        "keys_missed": missed_keys(root / "eval" / f"{task}-{haystack}", training_length(cfg, arm)),
                        "answers_by_length": answers_by_length(root / "eval" / f"{task}-{haystack}"),
                    }
            entry["passkey"][task] = {"label": passkey_label(arm, task, cfg), "haystacks": grids}
        for task in ("perplexity", "gates"):
            summary = _summary(root / "eval" / task)
            if summary is not None:
                entry[task] = summary["results"]
        if "gates" in entry:
            entry["gates"].setdefault("saturated", saturated_gates(entry["gates"]["gates"]))
            entry["layers_off"] = layers_off(cfg, arm, root, entry)
        entries[arm.name] = entry
    return {
        "study": _plain(cfg),
        "seed": cfg.seed,
        "environments": environments(out / arm.name / "eval" for arm in arms),
        "lengths": {arm.name: eval_lengths(cfg, arm) for arm in arms},
        "arms": entries,
        "learned": learned(entries),
        "leads": leads(cfg, arms, entries, compared := comparisons(cfg, arms, out)),
        "comparisons": compared,
        "best_rope": best_rope(compared),
    }


_NUMBERS = re.compile(r"\[\s*((?:-?[\d.eE+]+,\s*)*-?[\d.eE+]+)\s*\]")


def dumps(results: dict) -> str:
    """results.json's text: indented, with every list of plain numbers on one line (per-key counts stay short)."""
    text = json.dumps(results, indent=2)
    return _NUMBERS.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def learned(entries: dict) -> dict:
    """Per arm and haystack, the arm's own grid (memory on, no RoPE scaling) at its fine-tuning length (the longest
    grid length within it): exact match with its key-level interval, and whether it reaches LEARNED. Beyond that
    length, a comparison with an arm that has not learned the task there says so, not how far its attention reaches."""
    found = {}
    for name, entry in entries.items():
        seq_len = entry["recipe"]["finetune"]["seq_len"]
        for haystack, grid in entry["passkey"].get("passkey", {}).get("haystacks", {}).items():
            within = [r for r in grid["by_length"] if r["length"] <= seq_len]
            if within:
                r = max(within, key=lambda r: r["length"])
                at = {"length": r["length"], **_rate(r["exact"]), "learned": r["exact"]["rate"] >= LEARNED}
                found.setdefault(name, {})[haystack] = at
    return found


def _rate(exact: dict) -> dict:
    """An exact-match proportion without its per-key counts (kept only where groups are pooled across seeds)."""
    return {k: v for k, v in exact.items() if k != "key_totals"}


def layers_off(cfg: StudyConfig, arm: Arm, root: Path, entry: dict) -> dict | None:
    """What each layer's memory adds, at one length on the first haystack: per layer its mean gate, the exact
    accuracy with that layer's memory switched off and the drop from the plain grid's (same samples), in points; and
    the Pearson correlation between the layers' mean gates and drops (None for fewer than two layers or no spread)."""
    if cfg.layer_off_multiple is None:
        return None
    haystack = cfg.eval_haystacks[0]
    plain = entry["passkey"]["passkey"]["haystacks"].get(haystack)
    if plain is None:
        return None
    on = plain["by_length"][cfg.eval_multiples.index(float(cfg.layer_off_multiple))]["exact"]
    layers = []
    for layer, gate in enumerate(entry["gates"]["layer_mean"]):
        summary = _summary(root / "eval" / layer_off_folder(layer, haystack))
        if summary is None or summary.get("status") != "complete":
            return None
        exact = _rate(summary["results"]["by_length"][0]["exact"])
        layers.append({"layer": layer, "gate_mean": gate, "exact": exact, "drop": 100 * (on["rate"] - exact["rate"])})
    return {
        "haystack": haystack, "length": layer_off_length(cfg, arm), "memory_on": on, "layers": layers,
        "pearson": pearson([x["gate_mean"] for x in layers], [x["drop"] for x in layers]),
    }  # fmt: skip


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """The Pearson correlation of two series, or None when it is undefined (fewer than two points, or a constant)."""
    if len(xs) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return statistics.correlation(xs, ys)


def _plain(cfg: StudyConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def passkey_rows(entries: dict) -> list[tuple[str, str, str, dict]]:
    """(row label, arm name, task, {haystack: grid}) for every passkey grid of every arm, in order."""
    return [
        (grids["label"], name, task, grids["haystacks"])
        for name, entry in entries.items()
        for task, grids in entry["passkey"].items()
    ]


def leads(cfg: StudyConfig, arms: list[Arm], entries: dict, compared: list[dict]) -> list[dict]:
    """For each Infini arm and each row of its baseline (plain, RoPE-scaled) and of its local control (if the study
    has one) on each haystack: the mean over the lengths beyond the training length of (Infini's exact accuracy −
    the row's), in points, and at how many of those lengths Infini is ahead by the key-level interval of the
    difference (`comparisons`)."""
    beyond = [i for i, m in enumerate(cfg.eval_multiples) if m > 1]
    out = []
    for infini, other in counterparts(arms):
        ours = entries[infini.name]["passkey"]["passkey"]["haystacks"]
        for task, grids in entries[other.name]["passkey"].items():
            for haystack in cfg.eval_haystacks:
                if haystack not in ours or haystack not in grids["haystacks"] or not beyond:
                    continue
                mine = [ours[haystack]["by_length"][i]["exact"]["rate"] for i in beyond]
                theirs = [grids["haystacks"][haystack]["by_length"][i]["exact"]["rate"] for i in beyond]
                gaps = [100 * (a - b) for a, b in zip(mine, theirs, strict=True)]
                verdicts = [
                    c["verdict"] for c in compared
                    if (c["infini"], c["other"], c["task"]) == (infini.name, other.name, task)
                    and c["haystack"] == haystack and c["multiple"] > 1
                ]  # fmt: skip
                out.append({
                    "infini": infini.name, "baseline": grids["label"], "task": task, "haystack": haystack,
                    "mean_lead": statistics.fmean(gaps), "ahead": verdicts.count("ahead"),
                    "behind": verdicts.count("behind"), "lengths": len(gaps),
                })  # fmt: skip
    return out


def comparisons(cfg: StudyConfig, arms: list[Arm], out: Path) -> list[dict]:
    """For each Infini arm and each row of its baseline (plain, RoPE-scaled) and local control, on each haystack and
    at each length: Infini's exact accuracy minus the row's on the same samples, with the 95% interval of a bootstrap
    over keys (`scoring.paired_difference`: the samples of one key, at every depth, are resampled together) and the
    verdict it gives, "ahead", "level" or "behind". Both grids have the same seed and split, so sample i has the same
    key and haystack in both."""
    found = []
    for infini, other in counterparts(arms):
        for task in passkey_tasks(cfg, other):
            for haystack in cfg.eval_haystacks:
                ours = grid_samples(out / infini.name / "eval" / f"passkey-{haystack}")
                theirs = grid_samples(out / other.name / "eval" / f"{task}-{haystack}")
                if ours is None or theirs is None:
                    continue
                label = passkey_label(other, task, cfg)
                scaling = rope_rows(cfg, other).get(task)
                named = {"scaling": rope_scaling_label(scaling)} if scaling else {}
                for multiple, length in zip(cfg.eval_multiples, eval_lengths(cfg, infini), strict=True):
                    cells = sorted(key for key in ours if key[0] == length and key in theirs)
                    if not cells:
                        continue
                    found.append({
                        "infini": infini.name, "other": other.name, "baseline": label, "task": task,
                        "haystack": haystack, **named,
                        "multiple": multiple, "length": length,
                        **paired_difference([ours[c] for c in cells], [theirs[c] for c in cells],
                                            [c[2] for c in cells]),
                    })  # fmt: skip
    return found


def best_rope(compared: list[dict]) -> list[dict]:
    """Infini against the best of its baseline's RoPE-scaled rows, at each length and haystack, where the baseline
    has more than one: of those rows' comparisons (on the same samples), the one with Infini's smallest lead, i.e.
    the row most often right there (the first in the study's order on a tie). Picking the best row per length after
    the fact favours the baseline: a verdict of "ahead" against it is one against every row."""
    groups: dict[tuple, list[dict]] = {}
    for c in compared:
        if c["task"].startswith("passkey-rope"):
            groups.setdefault((c["infini"], c.get("other"), c["haystack"], c["multiple"]), []).append(c)
    return [min(group, key=lambda c: c["difference"]) for group in groups.values() if len(group) > 1]


def _samples(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / SAMPLES).read_text().splitlines() if line.strip()]


def _exact_by(samples: list[dict], group) -> dict:
    """Exact accuracy of passkey samples grouped by `group(sample)`: {group: proportion}, each with its interval at
    the level of the key and `key_totals`, each key's [hits, samples], for pooling over seeds."""
    groups: dict[Any, list[dict]] = {}
    for r in samples:
        groups.setdefault(group(r), []).append(r)
    return {
        g: {**clustered_proportion(totals), "key_totals": totals}
        for g, rows in groups.items()
        if (totals := key_totals([r["exact"] for r in rows], [r["sample"] for r in rows]))
    }


def by_key_kind(folder: Path) -> list[dict]:
    """Exact accuracy of a complete passkey grid by length and kind of key (`scoring.KEY_KINDS`)."""
    found = _exact_by(_samples(folder), lambda r: (r["length"], key_kind(r["key"])))
    return [
        {"length": length, "key_kind": kind, "exact": found[length, kind]}
        for length, kind in sorted(found, key=lambda k: (k[0], KEY_KINDS.index(k[1])))
    ]


def by_needle_cut(folder: Path) -> list[dict]:
    """Exact accuracy of a complete passkey grid by length and where a segment boundary cuts the needle
    (`diagnostics.needle_cut_bucket`), at the segment length the grid recorded; none for a model without one."""
    segment_len = json.loads((folder / "summary.json").read_text())["settings"].get("segment_len")
    if not segment_len:
        return []
    found = _exact_by(
        _samples(folder),
        lambda r: (r["length"], needle_cut_bucket(r["needle_position"], r["needle_end"], segment_len)),
    )
    return [
        {"length": length, "needle_cut": cut, "exact": found[length, cut]}
        for length, cut in sorted(found, key=lambda k: (k[0], needle_cut_order(k[1])))
    ]


def by_depth_beyond(folder: Path, longest: int) -> list[dict]:
    """Exact accuracy of a complete passkey grid by the needle's depth, over its lengths beyond `longest` (the
    training length): where the needle sits in the prompt, every length pooled."""
    found = _exact_by([r for r in _samples(folder) if r["length"] > longest], lambda r: r["depth"])
    return [{"depth": depth, "exact": found[depth]} for depth in sorted(found)]


ANSWER_PARTS = ("first", "reordered", "from_key")  # what `answers_by_length` measures, in the report's order


def answers_by_length(folder: Path) -> list[dict]:
    """What the answers of a complete passkey grid hold of their key, by length (`scoring.answer_digits`): the share
    of answers whose first digit is right (`first`), the share that are the key's digits in another order
    (`reordered`), and the share of answer digits that occur in the key (`from_key`), each with its interval at the
    level of the key and `key_totals` for pooling; `chance_from_key`, that share for digits drawn at random."""
    groups: dict[int, list[dict]] = {}
    for r in _samples(folder):
        groups.setdefault(r["length"], []).append(r)
    out = []
    for length in sorted(groups):
        rows = groups[length]
        parts = [answer_digits(r["prediction"], r["key"]) for r in rows]
        keys = [r["sample"] for r in rows]
        digits: dict[int, list[int]] = {}
        for part, key in zip(parts, keys, strict=True):
            y, m = digits.get(key, (0, 0))
            digits[key] = [y + part["from_key"], m + part["digits"]]
        totals = {
            "first": key_totals([p["first"] for p in parts], keys),
            "reordered": key_totals([p["reordered"] for p in parts], keys),
            "from_key": list(digits.values()),
        }
        out.append({
            "length": length,
            **{part: {**clustered_proportion(totals[part]), "key_totals": totals[part]} for part in ANSWER_PARTS},
            "chance_from_key": sum(chance_from_key(r["key"]) for r in rows) / len(rows),
            "prompts": len(rows),
        })  # fmt: skip
    return out


def missed_keys(folder: Path, longest: int) -> dict:
    """The keys of a passkey grid at lengths up to `longest` (the training length): how many there are, and each one
    missed at least once there with its prompts, how many were wrong and its commonest wrong answer (ties: the first
    in sort order), most often missed first. A model's misses at its own length tend to sit on a few keys."""
    prompts: dict[str, list[dict]] = {}
    for r in _samples(folder):
        if r["length"] <= longest:
            prompts.setdefault(r["key"], []).append(r)
    missed = []
    for key, rows in prompts.items():
        wrong = [r["prediction"].strip() for r in rows if not r["exact"]]
        if wrong:
            answer = min(set(wrong), key=lambda a: (-wrong.count(a), a))
            missed.append({"key": key, "prompts": len(rows), "wrong": len(wrong), "commonest_answer": answer})
    return {"keys": len(prompts), "missed": sorted(missed, key=lambda m: (-m["wrong"], m["key"]))}


def grid_samples(folder: Path) -> dict | None:
    """{(length, depth, sample): exact} of a complete passkey grid, or None."""
    summary = _summary(folder)
    if summary is None or summary.get("status") != "complete":
        return None
    return {(r["length"], r["depth"], r["sample"]): bool(r["exact"]) for r in _samples(folder)}


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {
        "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values), "max": max(values),
    }  # fmt: skip


def environments(eval_roots) -> list[dict]:
    """The distinct library versions, devices and commits the evaluations of these folders ran with (usually
    one; a study whose seeds ran in separate leases may have one per seed)."""
    found = []
    for root in eval_roots:
        for path in sorted(root.glob("*/summary.json")) if root.is_dir() else []:
            env = json.loads(path.read_text()).get("environment") or {}
            if env.get("versions") is not None:
                found.append({key: env.get(key) for key in ("versions", "device_name", "git_revision")})
    return _distinct(found)


def _distinct(items) -> list:
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def across_seeds(cfg: StudyConfig, per_seed: dict[int, dict]) -> dict:
    """Every passkey row (matched by label) on every haystack and length: exact accuracy and digit accuracy per
    seed with their spread; each seed's leads; each arm's chosen fine-tuning LR per seed."""
    first = per_seed[cfg.seeds[0]]
    rows = []
    for label, name, task, grids in passkey_rows(first["arms"]):
        row: dict[str, Any] = {"label": label, "arm": name, "task": task, "haystacks": {}}
        for haystack in grids:
            lengths = []
            for i, multiple in enumerate(cfg.eval_multiples):
                exact, digits = {}, {}
                for seed, results in per_seed.items():
                    grid = results["arms"][name]["passkey"][task]["haystacks"].get(haystack)
                    if grid is not None:
                        exact[seed] = grid["by_length"][i]["exact"]["rate"]
                        digits[seed] = grid["by_length"][i]["digit_acc"]["mean"]
                if exact:
                    lengths.append({
                        "multiple": multiple, "length": grids[haystack]["by_length"][i]["length"],
                        "missing_seeds": [seed for seed in per_seed if seed not in exact],
                        "exact": {**spread(list(exact.values())), "per_seed": exact},
                        "digit_acc": {**spread(list(digits.values())), "per_seed": digits},
                    })  # fmt: skip
            row["haystacks"][haystack] = lengths
        rows.append(row)
    chosen = {
        name: {seed: (r["arms"][name].get("selection") or {}).get("chosen_lr") for seed, r in per_seed.items()}
        for name in first["arms"]
    }
    layer_rows = {}
    for name, entry in first["arms"].items():
        found = [r["arms"][name].get("layers_off") for r in per_seed.values()]
        if entry["attention"] != "infini" or any(f is None for f in found):
            continue
        per_seed_r = {seed: f["pearson"] for seed, f in zip(per_seed, found, strict=True)}
        layer_rows[name] = {
            "length": found[0]["length"], "haystack": found[0]["haystack"],
            "layers": [
                {"layer": i, "gate_mean": spread([f["layers"][i]["gate_mean"] for f in found]),
                 "drop": spread([f["layers"][i]["drop"] for f in found])}
                for i in range(len(found[0]["layers"]))
            ],
            "pearson_per_seed": per_seed_r,
            "pearson_spread": spread(rs) if (rs := [r for r in per_seed_r.values() if r is not None]) else None,
            "within_layers": within_layer_association(found),
        }  # fmt: skip
    return {
        "study": _plain(cfg),
        "seeds": list(cfg.seeds),
        "memory_updates_pooled": memory_updates_pooled(per_seed),
        "key_kinds_pooled": key_kinds_pooled(per_seed),
        "needle_cuts_pooled": needle_cuts_pooled(per_seed),
        "depths_pooled": depths_pooled(per_seed),
        "answers_pooled": answers_pooled(per_seed),
        "environments": _distinct(env for results in per_seed.values() for env in results["environments"]),
        "rows": rows,
        "learned": {seed: results.get("learned", {}) for seed, results in per_seed.items()},
        "leads": {seed: results["leads"] for seed, results in per_seed.items()},
        "chosen_lr": chosen,
        "layers_off": layer_rows,
        "per_seed": per_seed,
    }


def within_layer_association(found: list[dict], permutations: int = 4000) -> dict | None:
    """Whether a layer whose gate is higher in one seed than in the others also loses more without its memory: the
    Pearson r of gate and drop after removing each layer's mean over seeds (layer identity, which dominates a pooled
    r, is taken out), and a permutation p-value that shuffles drops among the seeds within each layer (two-sided,
    fixed seed). None with fewer than two seeds or no spread."""
    gates = np.array([[x["gate_mean"] for x in f["layers"]] for f in found], dtype=float)  # (seeds, layers)
    drops = np.array([[x["drop"] for x in f["layers"]] for f in found], dtype=float)
    if gates.shape[0] < 2:
        return None
    g, d = gates - gates.mean(0), drops - drops.mean(0)
    if not g.any() or not d.any():
        return None
    r = float(np.corrcoef(g.ravel(), d.ravel())[0, 1])
    rng = np.random.default_rng(0)
    shuffled = []
    for _ in range(permutations):
        order = rng.permuted(np.tile(np.arange(len(found))[:, None], (1, gates.shape[1])), axis=0)
        shuffled.append(np.corrcoef(g.ravel(), np.take_along_axis(d, order, 0).ravel())[0, 1])
    p = float((np.sum(np.abs(shuffled) >= abs(r) - 1e-12) + 1) / (permutations + 1))
    return {"r": r, "p": p, "points": int(g.size), "permutations": permutations}


def memory_updates_pooled(per_seed: dict[int, dict]) -> dict:
    """For the plain passkey grid of every arm with a memory count (Infini, local control), on every haystack: exact
    accuracy by the number of memory updates, and by (length, number of memory updates), with every seed's samples
    pooled into one proportion (the cells are too small to give a spread per seed), its interval at the level of the
    key (each seed's keys are clusters of their own)."""
    pooled: dict[str, dict] = {}
    for results in per_seed.values():
        for name, entry in results["arms"].items():
            grids = entry["passkey"].get("passkey") if entry["attention"] in ("infini", "local") else None
            for haystack, grid in (grids or {}).get("haystacks", {}).items():
                into = pooled.setdefault(name, {"label": grids["label"], "haystacks": {}})["haystacks"]
                counts = into.setdefault(haystack, {"by_memory_updates": {}, "by_length_and_memory_updates": {}})
                for r in grid["by_memory_updates"]:
                    _add(counts["by_memory_updates"], r["memory_updates"], r["exact"])
                for r in grid.get("by_length_and_memory_updates", []):
                    _add(counts["by_length_and_memory_updates"], (r["length"], r["memory_updates"]), r["exact"])
    for entry in pooled.values():
        for haystack, counts in entry["haystacks"].items():
            by_updates, by_both = counts["by_memory_updates"], counts["by_length_and_memory_updates"]
            entry["haystacks"][haystack] = {
                "by_memory_updates": [
                    {"memory_updates": b, "exact": clustered_proportion(by_updates[b])}
                    for b in sorted(by_updates, key=bucket_order)
                ],
                "by_length_and_memory_updates": [
                    {"length": n, "memory_updates": b, "exact": clustered_proportion(by_both[n, b])}
                    for n, b in sorted(by_both, key=lambda key: (key[0], bucket_order(key[1])))
                ],
            }
    return pooled


def _pooled_groups(per_seed: dict[int, dict], field: str, group) -> dict:
    """{row label: {haystack: {group: [[hits, samples], ...]}}} of every passkey row's `field` (a list of groups,
    `group(entry)` naming each, its `exact` keeping `key_totals`), every seed's keys clusters of their own."""
    pooled: dict[str, dict] = {}
    for results in per_seed.values():
        for label, _, _, grids in passkey_rows(results["arms"]):
            for haystack, grid in grids.items():
                counts = pooled.setdefault(label, {}).setdefault(haystack, {})
                for r in grid.get(field, []):
                    _add(counts, group(r), r["exact"])
    return pooled


def key_kinds_pooled(per_seed: dict[int, dict]) -> dict:
    """For every passkey row on every haystack: exact accuracy by (length, kind of key), every seed's samples pooled
    into one proportion, its interval at the level of the key (each seed's keys are clusters of their own)."""
    pooled = _pooled_groups(per_seed, "by_length_and_key_kind", lambda r: (r["length"], r["key_kind"]))
    return {
        label: {
            haystack: [
                {"length": n, "key_kind": kind, "exact": clustered_proportion(counts[n, kind])}
                for n, kind in sorted(counts, key=lambda k: (k[0], KEY_KINDS.index(k[1])))
            ]
            for haystack, counts in by_haystack.items()
        }
        for label, by_haystack in pooled.items()
    }


def needle_cuts_pooled(per_seed: dict[int, dict]) -> dict:
    """For every passkey row on every haystack: exact accuracy by (length, where a boundary cuts the needle), every
    seed's samples pooled likewise."""
    pooled = _pooled_groups(per_seed, "by_length_and_needle_cut", lambda r: (r["length"], r["needle_cut"]))
    return {
        label: {
            haystack: [
                {"length": n, "needle_cut": cut, "exact": clustered_proportion(counts[n, cut])}
                for n, cut in sorted(counts, key=lambda k: (k[0], needle_cut_order(k[1])))
            ]
            for haystack, counts in by_haystack.items()
        }
        for label, by_haystack in pooled.items()
    }


def depths_pooled(per_seed: dict[int, dict]) -> dict:
    """For every passkey row on every haystack: exact accuracy by the needle's depth beyond the training length
    (`by_depth_beyond`), every seed's samples pooled likewise."""
    pooled = _pooled_groups(per_seed, "by_depth_beyond_training", lambda r: r["depth"])
    return {
        label: {
            haystack: [{"depth": d, "exact": clustered_proportion(counts[d])} for d in sorted(counts)]
            for haystack, counts in by_haystack.items()
        }
        for label, by_haystack in pooled.items()
    }


def answers_pooled(per_seed: dict[int, dict]) -> dict:
    """`answers_by_length` of every passkey row on every haystack with every seed's samples pooled (each seed's keys
    clusters of their own); the chance share weighted by prompts."""
    pooled: dict[str, dict] = {}
    for results in per_seed.values():
        for label, _, _, grids in passkey_rows(results["arms"]):
            for haystack, grid in grids.items():
                by_length = pooled.setdefault(label, {}).setdefault(haystack, {})
                for r in grid.get("answers_by_length", []):
                    length = by_length.setdefault(r["length"], {"chance": 0.0, "prompts": 0})
                    for part in ANSWER_PARTS:
                        _add(length, part, r[part])
                    length["chance"] += r["chance_from_key"] * r["prompts"]
                    length["prompts"] += r["prompts"]
    return {
        label: {
            haystack: [
                {
                    "length": n,
                    **{part: clustered_proportion(counts[part]) for part in ANSWER_PARTS},
                    "chance_from_key": counts["chance"] / counts["prompts"],
                    "prompts": counts["prompts"],
                }
                for n, counts in sorted(by_length.items())
            ]
            for haystack, by_length in by_haystack.items()
        }
        for label, by_haystack in pooled.items()
    }


def _add(counts: dict, key, exact: dict) -> None:
    """Pool a group's keys (another seed's keys are other clusters)."""
    counts.setdefault(key, []).extend(exact["key_totals"])
