"""Core micro-benchmark: the fast compressive memory against its per-segment reference, and the model's
forward + backward throughput for Infini-attention against full attention, in one run.

    python benchmarks/bench_core.py                      # CPU, writes benchmarks/results/core_cpu.json
    python benchmarks/bench_core.py --device cuda --out core_gpu.json

Numbers are ratios measured in the same process (speed-up of the fast op, Infini vs full tokens/s), so they
hold on a noisy machine better than absolute times.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import infini_llama
from infini_llama import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.ops import compressive_memory, compressive_memory_reference


def timeit(fn, device: str, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_op(device: str, dtype: torch.dtype, lengths: list[int], segment_len: int, repeats: int) -> list[dict]:
    rows = []
    B, H, D = 2, 4, 64
    for update in ("linear", "delta"):
        for T in lengths:
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v = (
                torch.randn(B, H, T, D, device=device, dtype=dtype, generator=g).requires_grad_() for _ in range(3)
            )

            def run(fn):
                def step():
                    out, _ = fn(q, k, v, segment_len, update=update)
                    out.sum().backward()

                return step

            fast = timeit(run(compressive_memory), device, repeats)
            ref = timeit(run(compressive_memory_reference), device, repeats)
            rows.append(
                dict(
                    update=update, T=T, segment_len=segment_len, fast_ms=fast * 1e3, reference_ms=ref * 1e3,
                    speedup=ref / fast,
                )  # fmt: skip
            )
    return rows


def bench_model(device: str, lengths: list[int], preset: str, repeats: int, autocast: bool) -> list[dict]:
    rows = []
    for T in lengths:
        row = dict(T=T)
        for attention in ("full", "infini"):
            torch.manual_seed(0)
            config = config_from_preset(preset, attention=attention)
            model = InfiniLlamaForCausalLM(config).to(device)
            x = torch.randint(0, config.vocab_size, (1, T), device=device)

            def step():
                with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                    loss = model(x, labels=x).loss
                loss.backward()

            seconds = timeit(step, device, repeats)
            row[f"{attention}_tok_s"] = T / seconds
        row["infini_over_full"] = row["infini_tok_s"] / row["full_tok_s"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--lengths", default="512,1024,2048,4096")
    parser.add_argument("--segment-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/core_cpu.json")
    args = parser.parse_args()
    lengths = [int(t) for t in args.lengths.split(",")]
    on_gpu = args.device == "cuda"

    op_rows = bench_op(args.device, torch.float32, lengths, args.segment_len, args.repeats)
    print(f"compressive memory, forward+backward, B=2 H=4 D=64, segment {args.segment_len}, float32")
    print(f"{'update':>7} {'T':>6} {'fast ms':>9} {'ref ms':>9} {'speed-up':>9}")
    for r in op_rows:
        print(f"{r['update']:>7} {r['T']:>6} {r['fast_ms']:>9.2f} {r['reference_ms']:>9.2f} {r['speedup']:>8.1f}x")

    model_rows = bench_model(args.device, lengths, args.preset, args.repeats, autocast=on_gpu)
    print(f"\nmodel forward+backward, preset {args.preset}, batch 1" + (", bf16 autocast" if on_gpu else ", fp32"))
    print(f"{'T':>6} {'full tok/s':>11} {'infini tok/s':>13} {'infini/full':>12}")
    for r in model_rows:
        print(f"{r['T']:>6} {r['full_tok_s']:>11.0f} {r['infini_tok_s']:>13.0f} {r['infini_over_full']:>12.2f}")

    result = dict(
        benchmark="core",
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        versions=dict(torch=torch.__version__, infini_llama=infini_llama.__version__, python=platform.python_version()),
        settings=vars(args),
        op=op_rows,
        model=model_rows,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
