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
import os
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
    return statistics.median(_seconds(fn, device) for _ in range(repeats))


def paired(fast, reference, device: str, repeats: int) -> tuple[float, float, float]:
    """Median seconds of each and the median of the per-round ratios reference / fast, the two timed back to
    back in every round: on a shared machine the load drifts between rounds, much less within one."""
    fast(), reference()
    rounds = []
    for _ in range(repeats):
        rounds.append((_seconds(fast, device), _seconds(reference, device)))
    fast_s, ref_s = (statistics.median(t[i] for t in rounds) for i in (0, 1))
    return fast_s, ref_s, statistics.median(r / f for f, r in rounds)


def _seconds(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


OP_SHAPES = {  # name: (B, H, D, segment_len, lengths)
    "issue": (2, 8, 64, 128, None),  # the CPU target's shape; lengths from --lengths
    "tiny-study": (8, 4, 16, 16, [256]),  # the tiny preset at the CPU study's length and batch
}


def bench_op(device: str, dtype: torch.dtype, lengths: list[int], segment_len: int, repeats: int) -> list[dict]:
    """The fast op against the per-segment reference: forward + backward, and forward alone under no_grad (as
    evaluation and generation run it)."""
    rows = []
    for shape, (B, H, D, seg, shape_lengths) in OP_SHAPES.items():
        seg = segment_len if shape == "issue" else seg
        for update in ("linear", "delta"):
            for T in shape_lengths or lengths:
                g = torch.Generator(device=device).manual_seed(0)
                q, k, v = (
                    torch.randn(B, H, T, D, device=device, dtype=dtype, generator=g).requires_grad_() for _ in range(3)
                )

                def backward(fn, q=q, k=k, v=v, seg=seg, update=update):
                    def step():
                        out, _ = fn(q, k, v, seg, update=update)
                        out.sum().backward()

                    return step

                def forward(fn, q=q, k=k, v=v, seg=seg, update=update):
                    def step():
                        with torch.no_grad():
                            fn(q, k, v, seg, update=update)

                    return step

                row = dict(shape=shape, update=update, B=B, H=H, D=D, T=T, segment_len=seg)
                for mode, wrap in (("fwd_bwd", backward), ("fwd", forward)):
                    fast, ref, ratio = paired(
                        wrap(compressive_memory), wrap(compressive_memory_reference), device, repeats
                    )
                    row.update(
                        {f"{mode}_fast_ms": fast * 1e3, f"{mode}_reference_ms": ref * 1e3, f"{mode}_speedup": ratio}
                    )
                rows.append(row)
    return rows


def cpu_description() -> dict:
    """The CPU's model name and whether it has AVX-512 (from /proc/cpuinfo where there is one)."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return dict(
        model=name or platform.processor() or platform.machine(),
        avx512=any(flag.startswith("avx512") for flag in flags),
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )


def bench_model(device: str, lengths: list[int], preset: str, repeats: int, autocast: bool) -> list[dict]:
    rows = []
    for T in lengths:
        row = dict(T=T)
        for attention in ("full", "infini"):
            torch.manual_seed(0)
            config = config_from_preset(preset, attention=attention)
            model = InfiniLlamaForCausalLM(config).to(device)
            x = torch.randint(0, config.vocab_size, (1, T), device=device)

            def step(model=model, x=x):
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
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default="benchmarks/results/core_cpu.json")
    args = parser.parse_args()
    lengths = [int(t) for t in args.lengths.split(",")]
    on_gpu = args.device == "cuda"

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    op_rows = bench_op(args.device, torch.float32, lengths, args.segment_len, args.repeats)
    print("compressive memory, float32: fast op over the per-segment reference (median of paired rounds)")
    header = ("shape", "update", "B", "H", "D", "seg", "T", "fwd+bwd ms", "speed-up", "fwd ms", "speed-up")
    print(" ".join(f"{h:>10}" for h in header))
    for r in op_rows:
        cells = [r[key] for key in ("shape", "update", "B", "H", "D", "segment_len", "T")]
        cells += [f"{r['fwd_bwd_fast_ms']:.2f}", f"{r['fwd_bwd_speedup']:.2f}x"]
        cells += [f"{r['fwd_fast_ms']:.2f}", f"{r['fwd_speedup']:.2f}x"]
        print(" ".join(f"{c:>10}" for c in cells))

    model_rows = bench_model(args.device, lengths, args.preset, args.repeats, autocast=on_gpu)
    print(f"\nmodel forward+backward, preset {args.preset}, batch 1" + (", bf16 autocast" if on_gpu else ", fp32"))
    print(f"{'T':>6} {'full tok/s':>11} {'infini tok/s':>13} {'infini/full':>12}")
    for r in model_rows:
        print(f"{r['T']:>6} {r['full_tok_s']:>11.0f} {r['infini_tok_s']:>13.0f} {r['infini_over_full']:>12.2f}")

    result = dict(
        benchmark="core",
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name() if on_gpu else cpu_description()["model"],
        cpu=cpu_description(),
        threads=torch.get_num_threads(),
        load_average=dict(before=load_before, after=os.getloadavg() if hasattr(os, "getloadavg") else None),
        notes=(
            "op rows: float32, speed-up = median over rounds of reference / fast timed back to back; fwd = forward "
            "alone under torch.no_grad. On CPU, inputs larger than the cache take the segment loop "
            "(infini_llama/ops/segment_loop.py), the tiny study's shape the batched op."
        ),
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
