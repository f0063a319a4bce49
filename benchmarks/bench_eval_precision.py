#!/usr/bin/env python3
"""Benchmark passkey evaluation in float32 against the training's bf16 autocast (a study's `eval_precision`).

For each arm (Infini-attention, full attention) of a model preset, each prompt length and each batch size, one
batch of passkey samples is scored as a study scores it (`evaluate_passkey` through `ChunkedLM`: prefill, greedy
answer, teacher-forced digits) in float32 and under `evaluation_numerics("bf16", ...)`. Reported: seconds per
sample in each, the speed-up of bf16 over float32 in the same run, and how often the two agree on the predicted
answer and by how much their teacher-forced digit probabilities differ (random weights: near-ties are common, so
agreement below 100% here says little about a trained model, whose answers are far from ties).

Usage (a GPU; on CPU the `tiny` preset checks the script)::

    python benchmarks/bench_eval_precision.py --preset paper-300m --lengths 4096,16384 --batch-sizes 4,16 \
        --out benchmarks/results/eval_precision_h200.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from benchjson import run_environment, write_result  # noqa: E402

from infini_llama import InfiniLlamaForCausalLM, config_from_preset  # noqa: E402
from infini_llama.data import load_tokenizer  # noqa: E402
from infini_llama.eval import ChunkedLM, evaluate_passkey, make_passkey_sample  # noqa: E402
from infini_llama.study.stages import evaluation_numerics  # noqa: E402


def timed(runner: ChunkedLM, tokenizer, samples: list, batch_size: int, precision: str, repeats: int):
    """Minimum wall time over `repeats` runs (after one warm-up) and the rows of the last, under `precision`."""
    times, rows = [], []
    with evaluation_numerics(precision, runner.device):
        evaluate_passkey(runner, tokenizer, samples[:batch_size], batch_size)  # warm-up: kernels, allocator
        for _ in range(repeats):
            if runner.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            rows = evaluate_passkey(runner, tokenizer, samples, batch_size)
            if runner.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return min(times), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="model preset (default: paper-300m on a GPU, tiny on CPU)")
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--batch-sizes", default="4")
    parser.add_argument("--samples", type=int, default=16, help="passkey samples per (length, batch size)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/eval_precision_cpu.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = args.preset or ("paper-300m" if device.type == "cuda" else "tiny")
    lengths = [int(n) for n in args.lengths.split(",")]
    batch_sizes = [int(n) for n in args.batch_sizes.split(",")]
    rows = []
    for attention in ("infini", "full"):
        torch.manual_seed(0)
        config = config_from_preset(preset, attention=attention)
        model = InfiniLlamaForCausalLM(config).to(device).eval()
        tokenizer = load_tokenizer(None, vocab_size=config.vocab_size)
        runner = ChunkedLM(model)
        for length in lengths:
            samples = [make_passkey_sample(tokenizer, length, 0.5, index=i) for i in range(args.samples)]
            for batch in batch_sizes:
                fp32_s, fp32_rows = timed(runner, tokenizer, samples, batch, "fp32", args.repeats)
                bf16_s, bf16_rows = timed(runner, tokenizer, samples, batch, "bf16", args.repeats)
                same = sum(a["predicted_ids"] == b["predicted_ids"] for a, b in zip(fp32_rows, bf16_rows, strict=True))
                digits = max(abs(a["digit_acc"] - b["digit_acc"]) for a, b in zip(fp32_rows, bf16_rows, strict=True))
                rows.append({
                    "attention": attention, "length": length, "batch": batch, "samples": len(samples),
                    "fp32_s_per_sample": fp32_s / len(samples), "bf16_s_per_sample": bf16_s / len(samples),
                    "speedup": fp32_s / bf16_s, "same_answers": same / len(samples),
                    "max_digit_acc_difference": digits,
                })  # fmt: skip
                r = rows[-1]
                print(
                    f"{attention:6} L={length:6d} batch {batch:3d}  fp32 {r['fp32_s_per_sample']:.4f} s/sample  "
                    f"bf16 {r['bf16_s_per_sample']:.4f} s/sample  x{r['speedup']:.2f}  "
                    f"same answers {r['same_answers']:.0%}",
                    flush=True,
                )
        del model, runner
        if device.type == "cuda":
            torch.cuda.empty_cache()
    benchmark = f"passkey evaluation, float32 against bf16 autocast ({preset} preset, random weights)"
    write_result(args.out, {"benchmark": benchmark, **run_environment(device), "rows": rows})


if __name__ == "__main__":
    main()
