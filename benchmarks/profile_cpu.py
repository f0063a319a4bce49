"""Where the CPU forward of the compressive memory spends its time: the fast op against the per-segment reference.

    python benchmarks/profile_cpu.py            # writes benchmarks/results/profile_cpu.json

The forward alone (under no_grad, as evaluation and generation run it) at the speed target's shape: B = 2,
H = 8, D = 64, segment 128, T = 4,096, float32, on the machine's cores. For each update rule and each path,
torch.profiler's self CPU time per operator, summed into matrix products (mm, bmm, baddbmm, addmm, matmul) and the
rest (element-wise work, copies, dispatch). Both paths do the same matrix products per segment (the read σ(Q) M
with its denominator and, for the delta rule, σ(K) M; then the write σ(K)ᵀ V); the fast path fuses them and
removes most of the work around them. So the reference's time over the fast path's matrix-product time bounds the
speed-up of any path that keeps these products as they are: `bound` says how far the measured `speedup` is from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from infini_llama.host import describe_cpu
from infini_llama.ops import compressive_memory, compressive_memory_reference

MATMUL_OPS = ("aten::mm", "aten::bmm", "aten::baddbmm", "aten::baddbmm_", "aten::addmm", "aten::matmul")


def category(name: str) -> str:
    return "matmul" if name in MATMUL_OPS else "other"


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def breakdown(fn, repeats: int) -> dict:
    """Self CPU milliseconds per call of `fn`, by category and by the heaviest operators."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    by_op: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        by_op[event.key] += event.self_cpu_time_total / 1000 / repeats
    by_category: dict[str, float] = defaultdict(float)
    for name, ms in by_op.items():
        by_category[category(name)] += ms
    top = sorted(by_op.items(), key=lambda item: -item[1])[:8]
    return {
        "self_ms_by_category": {k: round(v, 3) for k, v in sorted(by_category.items())},
        "self_ms_top_ops": {k: round(v, 3) for k, v in top},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--segment-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results/profile_cpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    B, H, D, T, seg = 2, 8, 64, args.length, args.segment_len
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    rows = []
    for update in ("linear", "delta"):
        paths = {"fast": compressive_memory, "reference": compressive_memory_reference}
        row: dict = {"update": update, "B": B, "H": H, "D": D, "T": T, "segment_len": seg}
        for name, op in paths.items():

            def forward(op=op, update=update):
                with torch.no_grad():
                    op(q, k, v, seg, update=update)

            row[f"{name}_ms"] = round(1000 * median_seconds(forward, args.repeats), 3)
            row[name] = breakdown(forward, args.repeats)
        fast_matmul = row["fast"]["self_ms_by_category"].get("matmul", 0.0)
        row["speedup"] = round(row["reference_ms"] / row["fast_ms"], 3)
        row["matmul_share_of_fast"] = round(fast_matmul / sum(row["fast"]["self_ms_by_category"].values()), 3)
        row["bound"] = round(row["reference_ms"] / fast_matmul, 3) if fast_matmul else None
        rows.append(row)
        shown = ("update", "fast_ms", "reference_ms", "speedup", "bound")
        print(json.dumps({key: row[key] for key in shown}), flush=True)
    result = {
        "benchmark": "profile_cpu",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": describe_cpu(),
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__},
        "notes": __doc__.strip().split("\n\n")[-1].replace("\n", " "),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
