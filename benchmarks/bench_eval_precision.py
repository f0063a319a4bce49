#!/usr/bin/env python3
"""Benchmark passkey evaluation in float32 against TF32 matmuls and the training's bf16 autocast (a study's
`eval_precision`: fp32, tf32, bf16).

For each arm (Infini-attention, full attention) of a model preset, each prompt length and each batch size, one
batch of passkey samples is scored as a study scores it (`evaluate_passkey` through `ChunkedLM`: prefill, greedy
answer, teacher-forced digits) in float32 and under `evaluation_numerics("tf32" / "bf16", ...)`. Reported: seconds
per sample in each, the speed-up of each over float32 in the same run, and how often each agrees with float32 on
the predicted answer and by how much their teacher-forced digit probabilities differ (random weights: near-ties are
common, so agreement below 100% here says little about a trained model, whose answers are far from ties). On a CPU
TF32 is float32: its speed-up there is the run's noise.

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
                row = {"attention": attention, "length": length, "batch": batch, "samples": len(samples),
                       "fp32_s_per_sample": fp32_s / len(samples)}  # fmt: skip
                for precision in ("tf32", "bf16"):
                    seconds, other = timed(runner, tokenizer, samples, batch, precision, args.repeats)
                    pairs = list(zip(fp32_rows, other, strict=True))
                    same = sum(a["predicted_ids"] == b["predicted_ids"] for a, b in pairs)
                    digits = max(abs(a["digit_acc"] - b["digit_acc"]) for a, b in pairs)
                    prefix = "" if precision == "bf16" else "tf32_"  # the bf16 keys as first written
                    row.update({
                        f"{precision}_s_per_sample": seconds / len(samples), f"{prefix}speedup": fp32_s / seconds,
                        f"{prefix}same_answers": same / len(samples), f"{prefix}max_digit_acc_difference": digits,
                    })  # fmt: skip
                rows.append(row)
                print(
                    f"{attention:6} L={length:6d} batch {batch:3d}  fp32 {row['fp32_s_per_sample']:.4f} s/sample  "
                    f"tf32 x{row['tf32_speedup']:.2f} (same answers {row['tf32_same_answers']:.0%})  "
                    f"bf16 x{row['speedup']:.2f} (same answers {row['same_answers']:.0%})",
                    flush=True,
                )
        del model, runner
        if device.type == "cuda":
            torch.cuda.empty_cache()
    benchmark = f"passkey evaluation, float32 against TF32 matmuls and bf16 autocast ({preset} preset, random weights)"
    write_result(args.out, {"benchmark": benchmark, **run_environment(device), "rows": rows})


if __name__ == "__main__":
    main()
