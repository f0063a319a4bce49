"""Run a study: for every arm, pretrain → passkey fine-tuning → passkey grid (and, for Infini arms, the same grid
with the memory switched off) → perplexity by position → gates; then one report over all arms.

Layout of the study folder:

    study.json                  the resolved StudyConfig; a folder holding another study is refused
    <arm>/pretrain/             a training run (see infini_llama.train.rundir); final/ is a HF model folder
    <arm>/finetune/             the passkey fine-tuning run, started from pretrain/final
    <arm>/eval/<task>/          evaluation runs (summary.json + samples.jsonl)
    <arm>/<stage>.done          written when a stage finished; a restarted study skips finished stages
    report/                     the evaluation report (report.md, report.json, PNG figures)
    REPORT.md, results.json     the study's report and its numbers

Every stage is itself resumable (training from its last checkpoint, evaluation grids from their last finished
cell), so a study killed anywhere continues where it stopped when run again with the same arguments.
"""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from infini_llama.data import held_out_book
from infini_llama.eval import (
    PasskeyGridConfig,
    PerplexityConfig,
    build_report,
    load_eval_tokenizer,
    load_model,
    perplexity_by_position,
    run_gates,
    run_passkey_grid,
)
from infini_llama.eval.diagnostics import bucket_order
from infini_llama.eval.finetune import PasskeyBatchSource
from infini_llama.study.config import Arm, StudyConfig, expand_arms
from infini_llama.train import hf_progress_bars_off, launch_env, recipe, train

STUDY_FILE = "study.json"


class StudyError(ValueError):
    """A study that cannot run as asked; the message says what to do."""


def run_study(cfg: StudyConfig, out: str | Path, *, overwrite: bool = False, device: str = "auto",
              progress: bool = True, jobs: int | None = None, command: str | None = None) -> Path:  # fmt: skip
    """Run (or continue) the study `cfg` in the folder `out`; returns the path of REPORT.md.

    `jobs` arms run at once, each in its own process with an equal share of the CPU threads (default: on CPU
    as many as there are arms and cores, since the small CPU models gain little from a second thread; on a GPU
    one, so arms do not compete for its memory). Progress bars are shown only when one arm runs at a time.
    `command`, the command line that ran the study, is written into the report."""
    out = Path(out)
    _claim_folder(out, cfg, overwrite)
    arms = expand_arms(cfg)
    jobs = default_jobs(len(arms), device) if jobs is None else jobs
    if jobs < 1:
        raise StudyError(f"jobs must be at least 1, got {jobs}")
    jobs = min(jobs, len(arms))
    started = time.time()
    if jobs == 1:
        for arm in arms:
            _run_arm(cfg, arm, out, device, progress)
    else:
        threads = max(1, torch.get_num_threads() // jobs)
        print(f"[study] {len(arms)} arms, {jobs} at a time, {threads} CPU thread(s) each", flush=True)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_run_arm, cfg, arm, out, device, False, threads) for arm in arms]
            for future in futures:
                future.result()
    eval_dirs = [d for arm in arms for d in sorted((out / arm.name / "eval").iterdir()) if d.is_dir()]
    build_report(eval_dirs, out / "report")
    results = _results(cfg, arms, out)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    path = _write_report(cfg, arms, out, results, command)
    print(f"[study] done in {time.time() - started:.0f} s this run; report: {path}")
    return path


def default_jobs(arms: int, device: str) -> int:
    """Arms to run at once: one per CPU core on CPU (at most one per arm), one on a GPU."""
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if on_gpu else max(1, min(arms, cores))


def _run_arm(cfg: StudyConfig, arm: Arm, out: Path, device: str, progress: bool, threads: int | None = None) -> None:
    """Every unfinished stage of `arm`, in order; a `<stage>.done` marker records each finished one."""
    if threads is not None:  # a worker process of a parallel study: tell the arms' output lines apart
        torch.set_num_threads(threads)
        sys.stdout = _LinePrefix(sys.stdout, f"[{arm.name}] ")
    for stage, run in _stages(cfg, arm, out, device, progress):
        marker = out / arm.name / f"{stage}.done"
        if marker.exists():
            print(f"[study] {arm.name}: {stage} already done", flush=True)
            continue
        print(f"[study] {arm.name}: {stage} ...", flush=True)
        t0 = time.time()
        with hf_progress_bars_off():  # the stages' own bars and status lines say where they are
            info = run() or {}
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"seconds": time.time() - t0, **info}, indent=2) + "\n")
        print(f"[study] {arm.name}: {stage} done in {time.time() - t0:.0f} s", flush=True)


class _LinePrefix(io.TextIOBase):
    """A text stream that writes `prefix` at the start of every line into `stream`."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self.at_line_start = stream, prefix, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.at_line_start and not piece.startswith("[study]"):
                self.stream.write(self.prefix)
            self.stream.write(piece)
            self.at_line_start = piece.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _claim_folder(out: Path, cfg: StudyConfig, overwrite: bool) -> None:
    """Refuse a folder that holds something else or another study; record this study's config."""
    wanted = json.loads(json.dumps(dataclasses.asdict(cfg)))
    file = out / STUDY_FILE
    if file.is_file():
        saved = json.loads(file.read_text())
        if saved != wanted and not overwrite:
            changed = sorted(k for k in wanted.keys() | saved.keys() if wanted.get(k) != saved.get(k))
            raise StudyError(
                f"{str(out)!r} holds a study with a different config (differs in: {', '.join(changed)}); run it "
                "with the same arguments to continue it, pass --overwrite to start over, or choose another --out"
            )
        if saved == wanted:
            return
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise StudyError(f"{str(out)!r} is not empty and holds no study; choose a new or empty folder")
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(wanted, indent=2) + "\n")


def _stages(cfg: StudyConfig, arm: Arm, out: Path, device: str, progress: bool):
    """(name, callable) for every stage of `arm`, in order."""
    root = out / arm.name
    model_overrides = {**cfg.model, **arm.model, "attention": arm.attention}
    pretrain_dir, finetune_dir = root / "pretrain", root / "finetune"
    pretrain_len = recipe(cfg.preset, **cfg.pretrain).seq_len
    lengths = eval_lengths(cfg)

    def training_config(fields: dict[str, Any], run_dir: Path, **extra: Any):
        resume = (run_dir / "run.json").is_file()
        return recipe(
            cfg.preset, **{**fields, **arm.train, **extra}, out=str(run_dir), seed=cfg.seed, resume=resume,
            device=device, progress=progress,
        )  # fmt: skip

    def pretrain():
        result = train(training_config(cfg.pretrain, pretrain_dir, model=model_overrides))
        _check_finished(result, "pretraining")
        return {"val_loss": result.val_loss, "tokens_per_s": result.tokens_per_s, "steps": result.step}

    def finetune():
        tokenizer = load_eval_tokenizer(pretrain_dir / "final")
        tcfg = training_config(cfg.finetune, finetune_dir, init_from=str(pretrain_dir / "final"))
        rank, world_size, _ = launch_env()
        source = PasskeyBatchSource(
            tokenizer, tcfg.seq_len, tcfg.batch_size, tcfg.accumulation(world_size), seed=cfg.seed, rank=rank,
            world_size=world_size, exclude_eval_seed=cfg.seed,
            exclude_eval_samples=cfg.eval_samples * len(cfg.eval_depths), **cfg.passkey,
        )  # fmt: skip
        result = train(tcfg, batches=source, tokenizer=tokenizer)
        _check_finished(result, "passkey fine-tuning")
        return {"val_loss": result.val_loss, "tokens_per_s": result.tokens_per_s, "steps": result.step}

    def evaluate(task: str, memory_off: bool = False):
        def run():
            checkpoint = finetune_dir / "final"
            model = load_model(checkpoint, device=None if device == "auto" else device)
            tokenizer = load_eval_tokenizer(checkpoint)
            label = f"{arm.name} (memory off)" if memory_off else arm.name
            target = root / "eval" / task
            if task.startswith("passkey"):
                grid = PasskeyGridConfig(
                    lengths=lengths, depths=cfg.eval_depths, samples=cfg.eval_samples, seed=cfg.seed,
                    key_digits=cfg.passkey.get("key_digits", 5), memory_off=memory_off,
                    batch_size=cfg.eval_batch_size, progress=progress,
                )  # fmt: skip
                run_passkey_grid(model, tokenizer, grid, target, label=label, checkpoint=checkpoint)
            elif task == "perplexity":
                ppl = PerplexityConfig(
                    train_len=pretrain_len, max_len=max(lengths), bucket_len=cfg.perplexity_bucket,
                    windows=cfg.perplexity_windows, batch_size=cfg.eval_batch_size, progress=progress,
                )  # fmt: skip
                book = held_out_book()
                perplexity_by_position(
                    model, tokenizer, ppl, target, documents=[book.text], source=book.name, label=label,
                    checkpoint=checkpoint,
                )  # fmt: skip
            else:
                run_gates(model, tokenizer, target, label=label, checkpoint=finetune_dir)

        return run

    stages = [("pretrain", pretrain), ("finetune", finetune), ("passkey", evaluate("passkey"))]
    if arm.attention == "infini":
        stages.append(("passkey-memory-off", evaluate("passkey-memory-off", memory_off=True)))
    stages.append(("perplexity", evaluate("perplexity")))
    if arm.attention == "infini":
        stages.append(("gates", evaluate("gates")))
    return stages


def eval_lengths(cfg: StudyConfig) -> list[int]:
    """Passkey lengths in tokens: the multiples of the training (pretraining) length."""
    train_len = recipe(cfg.preset, **cfg.pretrain).seq_len
    return [round(m * train_len) for m in cfg.eval_multiples]


def _check_finished(result, what: str) -> None:
    if result.stopped_by is not None:
        raise SystemExit(f"[study] {what} stopped by {result.stopped_by}; run the same command again to continue")


def _summary(path: Path) -> dict | None:
    file = path / "summary.json"
    return json.loads(file.read_text()) if file.is_file() else None


def _results(cfg: StudyConfig, arms: list[Arm], out: Path) -> dict:
    """The study's numbers per arm: training, passkey accuracy per length (memory on and off), perplexity, gates."""
    rows = {}
    for arm in arms:
        root = out / arm.name
        entry: dict[str, Any] = {"attention": arm.attention, "model": arm.model, "train": arm.train}
        for stage in ("pretrain", "finetune"):
            marker = root / f"{stage}.done"
            entry[stage] = json.loads(marker.read_text()) if marker.is_file() else None
        for task in ("passkey", "passkey-memory-off"):
            summary = _summary(root / "eval" / task)
            if summary is not None:
                entry[task] = {
                    "by_length": [
                        {"length": r["length"], "exact": r["exact"], "digit_acc": r["digit_acc"]}
                        for r in summary["results"]["by_length"]
                    ],
                    "by_memory_updates": [
                        {"memory_updates": r["memory_updates"], "exact": r["exact"]}
                        for r in summary["results"]["by_memory_updates"]
                    ],
                    "cells": [
                        {"length": r["length"], "depth": r["depth"], "exact": r["exact"]}
                        for r in summary["results"]["cells"]
                    ],
                }
        ppl = _summary(root / "eval" / "perplexity")
        if ppl is not None:
            entry["perplexity"] = ppl["results"]
        gates = _summary(root / "eval" / "gates")
        if gates is not None:
            entry["gates"] = gates["results"]
        rows[arm.name] = entry
    return {"study": dataclasses.asdict(cfg), "arms": rows}


def _write_report(cfg: StudyConfig, arms: list[Arm], out: Path, results: dict, command: str | None) -> Path:
    pre, fin = recipe(cfg.preset, **cfg.pretrain), recipe(cfg.preset, **cfg.finetune)
    data = ", ".join(pre.data) if pre.data else (pre.dataset or "the embedded corpus")
    lines = [
        f"# Study report: Infini-attention vs full attention ({cfg.preset})",
        "",
        f"Arms: {', '.join(f'`{a.name}`' for a in arms)}. Both arms share the data, tokens, seeds and recipe: "
        f"pretraining on {data} ({pre.steps} steps of {pre.batch_size * pre.grad_accum} × {pre.seq_len} tokens, "
        f"LR {pre.lr:g}), then passkey fine-tuning ({fin.steps} steps of {fin.batch_size * fin.grad_accum} × "
        f"{fin.seq_len} tokens, LR {fin.lr:g}, loss on {cfg.passkey.get('loss', 'all')} tokens), then the "
        f"evaluations below. The training length is the pretraining length, {pre.seq_len} tokens; passkey "
        f"prompts are {', '.join(f'{m:g}×' for m in cfg.eval_multiples)} that, {cfg.eval_samples} samples per "
        f"(length, depth) cell at depths {', '.join(f'{d:g}' for d in cfg.eval_depths)}, greedy exact match, "
        "Wilson 95% intervals in brackets.",
        "",
        *([f"Command: `{command}`", ""] if command else []),
        "## Passkey accuracy by length (all depths)",
        "",
    ]
    header = ["arm"] + [f"{m:g}× ({n})" for m, n in zip(cfg.eval_multiples, eval_lengths(cfg), strict=True)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in results["arms"].items():
        for task, suffix in (("passkey", ""), ("passkey-memory-off", " (memory off)")):
            if task in entry:
                cells = [_pct(r["exact"]) for r in entry[task]["by_length"]]
                lines.append(f"| {name}{suffix} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Digit accuracy (share of answer tokens right under teacher forcing, mean ± standard error): partial "
        "retrieval that exact match does not show.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, entry in results["arms"].items():
        for task, suffix in (("passkey", ""), ("passkey-memory-off", " (memory off)")):
            if task in entry:
                cells = [_mean(r["digit_acc"]) for r in entry[task]["by_length"]]
                lines.append(f"| {name}{suffix} | " + " | ".join(cells) + " |")
    lines += _compression_table(results)
    lines += [
        "",
        "## Training",
        "",
        "| arm | pretrain val loss | pretrain tok/s | fine-tune val loss |",
        "|---|---|---|---|",
    ]
    for name, entry in results["arms"].items():
        pre, fin = entry.get("pretrain") or {}, entry.get("finetune") or {}
        lines.append(f"| {name} | {_num(pre.get('val_loss'))} | {_num(pre.get('tokens_per_s'), 0)} | "
                     f"{_num(fin.get('val_loss'))} |")  # fmt: skip
    lines += ["", "## Details", "", "Tables and figures of every evaluation, from `report/report.md`:", ""]
    detail = (out / "report" / "report.md").read_text().splitlines()
    lines += [_relink(line) for line in detail[1:]]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _compression_table(results: dict) -> list[str]:
    """Exact accuracy of the Infini arms by the number of memory updates (compressions) between needle and
    question, over every cell of the grid."""
    rows = {
        name: {r["memory_updates"]: r["exact"] for r in entry["passkey"]["by_memory_updates"]}
        for name, entry in results["arms"].items()
        if entry["attention"] == "infini" and "passkey" in entry
    }
    labels = sorted({label for row in rows.values() for label in row} - {"n/a"}, key=bucket_order)
    if not labels:
        return []
    lines = [
        "",
        "## Passkey accuracy by number of memory compressions",
        "",
        "Memory updates between the segment holding the last token of the key's last copy in the needle and the "
        "question's segment (0: that copy ends in the question's own segment, within local attention's reach), "
        "over every length and depth; exact match [Wilson 95%].",
        "",
        "| arm | " + " | ".join(labels) + " |",
        "|" + "---|" * (len(labels) + 1),
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_pct(row[label]) if label in row else "–" for label in labels) + " |")
    return lines


def _relink(line: str) -> str:
    """Point the detail report's relative image links at report/."""
    return line.replace("](", "](report/") if "![" in line and "](http" not in line else line


def _pct(p: dict) -> str:
    return f"{100 * p['rate']:.0f}% [{100 * p['ci_low']:.0f}–{100 * p['ci_high']:.0f}]"


def _mean(p: dict) -> str:
    return f"{p['mean']:.2f} ± {p['stderr']:.2f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
