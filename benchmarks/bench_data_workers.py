#!/usr/bin/env python3
"""Benchmark how soon passkey fine-tuning's batch workers (`data_workers`) deliver: spawned against a fork server.

The trainer builds passkey batches in worker processes ahead of the step. A spawned worker is a new Python that
imports torch and transformers before it builds anything; workers forked from a fork server (which imported the
source's module once) start at once. For each start method, in a fresh process per repeat (so that neither finds a
server or an import cache of the other), the time from creating the pool to the first step's batch, and to the
batch of step `--steps` - 1, asking for the steps one after another as a trainer does (each step's batch waited
for, the workers `2 × workers` steps ahead). With the fork server, a second pool in the same process (the next
fine-tuning of a study's LR grid) is timed too: its server is already running.

The source is that of a study preset's fine-tuning (its tokenizer, sequence length, batch, key digits, loss,
depths and curriculum); building the tokenizer is not timed. Usage::

    python benchmarks/bench_data_workers.py --preset paper-h200 --workers 4 \
        --out benchmarks/results/data_workers_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchjson import run_environment, write_result  # noqa: E402

METHODS = ("spawn", "forkserver")


def _source(preset: str):
    from infini_llama.data import load_tokenizer
    from infini_llama.models import config_from_preset
    from infini_llama.study.arms import expand_arms
    from infini_llama.study.config import study_config
    from infini_llama.study.stages import passkey_source, train_recipe

    cfg = study_config(preset)
    arm = expand_arms(cfg)[0]
    tcfg = train_recipe(cfg, arm, "finetune")
    tokenizer = load_tokenizer(None, vocab_size=config_from_preset(cfg.model_preset, **cfg.model).vocab_size)
    return passkey_source(cfg, arm, tokenizer, tcfg), tcfg


def _timed_pool(source, workers: int, steps: int, method: str) -> dict:
    from infini_llama.train.batches import PrefetchedBatches

    began = time.perf_counter()
    with PrefetchedBatches(source, 1, workers, start_method=method) as ahead:
        ahead.prefetch(0)
        ahead.batches(0)
        first = time.perf_counter() - began
        for step in range(1, steps):
            ahead.batches(step)
        last = time.perf_counter() - began
    return {"first_batch_s": round(first, 3), "steps_s": round(last, 3)}


def one(preset: str, workers: int, steps: int, method: str) -> dict:
    """One fresh process's measurement (run as a subprocess by `main`)."""
    source, tcfg = _source(preset)
    row = {"method": method, "cold": _timed_pool(source, workers, steps, method)}
    if method == "forkserver":
        row["warm"] = _timed_pool(source, workers, steps, method)
    began = time.perf_counter()
    source.batch(steps, 0)
    row["in_process_batch_s"] = round(time.perf_counter() - began, 3)
    row["shape"] = [tcfg.batch_size or tcfg.global_batch, tcfg.seq_len]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper-h200", help="study preset whose fine-tuning data is built")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (the CUDA default is 4)")
    parser.add_argument("--steps", type=int, default=12, help="steps asked for, one after another")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per start method, interleaved")
    parser.add_argument("--out", default=None, help="JSON to write (default: print only)")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # a subprocess's single measurement
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.preset, args.workers, args.steps, args.one)))
        return
    rows: dict[str, list[dict]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for method in METHODS:
            command = [sys.executable, __file__, "--one", method, "--preset", args.preset,
                       "--workers", str(args.workers), "--steps", str(args.steps)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows[method].append(json.loads(done.stdout.strip().splitlines()[-1]))
    median = lambda method, phase, key: statistics.median(r[phase][key] for r in rows[method])  # noqa: E731
    summary = {
        f"{method} {phase}": {key: median(method, phase, key) for key in ("first_batch_s", "steps_s")}
        for method, phase in (("spawn", "cold"), ("forkserver", "cold"), ("forkserver", "warm"))
    }
    base = summary["spawn cold"]
    print(f"{args.preset} fine-tuning batches {rows['spawn'][0]['shape']}, {args.workers} workers, "
          f"{args.steps} steps, median of {args.repeats} fresh processes")  # fmt: skip
    print(f"{'start':<18} {'first batch':>12} {f'{args.steps} steps':>10} {'vs spawn':>9}")
    for name, values in summary.items():
        ratio = base["first_batch_s"] / values["first_batch_s"]
        print(f"{name:<18} {values['first_batch_s']:>11.2f}s {values['steps_s']:>9.2f}s {ratio:>8.1f}x")
    if args.out:
        write_result(args.out, {
            "benchmark": "data_workers", "preset": args.preset, "workers": args.workers, "steps": args.steps,
            "repeats": args.repeats, "environment": run_environment("cpu"), "summary": summary, "runs": rows,
        })  # fmt: skip


if __name__ == "__main__":
    main()
