#!/usr/bin/env python3
"""Benchmark the batches of passkey fine-tuning's validations: built anew at every validation, or kept.

A validation of a packed passkey fine-tuning scores the same validation sequences several times: once labelled as
in training, once per answer token, and with their parts aligned with segment boundaries (answers, then needles).
The source keeps each validation sequence once built. This times the batches of `--validations` validations, asked
for in the trainer's order, from one source (the sequences kept) against a fresh source per validation (the same
sequences built anew each time, as before they were kept); the batches are checked equal. The source is that of a
study preset's fine-tuning; building the tokenizer is not timed. Usage::

    python benchmarks/bench_validation_batches.py --preset paper-h200 \
        --out benchmarks/results/validation_batches_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_data_workers import _source
from benchjson import run_environment, write_result


def one_validation(source) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every batch one validation of the trainer asks `source` for, in its order."""
    batches = list(source.validation_batches())
    batches += list(source.boundary_batches()) + list(source.needle_boundary_batches())
    for by_token in source.answer_token_batches():
        batches += list(by_token())
    return batches


def timed(make_source, validations: int) -> tuple[list[float], list]:
    """Seconds of each validation's batches, and the last validation's batches."""
    seconds, batches = [], []
    for _ in range(validations):
        source = make_source()
        began = time.perf_counter()
        batches = one_validation(source)
        seconds.append(time.perf_counter() - began)
    return seconds, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper-h200", help="study preset whose fine-tuning data is built")
    parser.add_argument("--validations", type=int, default=5, help="validations of one fine-tuning")
    parser.add_argument("--out", default=None, help="JSON to write (default: print only)")
    args = parser.parse_args()
    source, tcfg = _source(args.preset)
    anew, anew_batches = timed(lambda: _source(args.preset)[0], args.validations)
    kept, kept_batches = timed(lambda: source, args.validations)
    pairs = zip(anew_batches, kept_batches, strict=True)
    same = all(torch.equal(a, b) for x, y in pairs for a, b in zip(x, y, strict=True))
    assert same, "kept sequences must be the sequences built anew"
    rows = {"built anew": anew, "kept": kept}
    print(f"{args.preset} validation batches ({len(kept_batches)} batches of {tcfg.batch_size or tcfg.global_batch} "
          f"× {tcfg.seq_len} tokens per validation), {args.validations} validations")  # fmt: skip
    print(f"{'batches':<12} {'first':>8} {'later (median)':>15} {'all':>8} {'vs anew':>8}")
    for name, seconds in rows.items():
        ratio = sum(anew) / sum(seconds)
        print(f"{name:<12} {seconds[0]:>7.2f}s {statistics.median(seconds[1:]):>14.3f}s {sum(seconds):>7.2f}s "
              f"{ratio:>7.1f}x")  # fmt: skip
    if args.out:
        write_result(args.out, {
            "benchmark": "validation_batches", "preset": args.preset, "validations": args.validations,
            "batches_per_validation": len(kept_batches), "environment": run_environment("cpu"),
            "seconds": {name: [round(s, 4) for s in seconds] for name, seconds in rows.items()},
            "total_s": {name: round(sum(seconds), 3) for name, seconds in rows.items()},
        })  # fmt: skip


if __name__ == "__main__":
    main()
