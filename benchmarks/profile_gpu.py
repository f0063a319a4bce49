"""Where a training step's GPU time goes, for the arms of `bench_gpu.py` at one length.

    python benchmarks/profile_gpu.py --length 8192 --out benchmarks/results/profile_h200.json

Each arm runs `bench_gpu.py`'s step (the same model, batch, compile path and bf16 autocast), warmed up, then
`--steps` steps under `torch.profiler`. Every GPU kernel of the trace is put in one group by its name: matrix
multiplies (cuBLAS, CUTLASS, Triton GEMM templates), attention (flash / cuDNN / memory-efficient SDPA kernels),
compiler-fused Triton kernels (norms, RoPE, SwiGLU, the loss, the memory's elementwise work), eager elementwise and
reduction kernels, the optimizer, copies, other. A row gives each group's milliseconds per step and its share of the
step's wall time, and the GPU's busy share (the union of kernel intervals over the profiled wall time: what is left
is time the GPU waited for the host, launches included). Shares are of the profiled steps, which the profiler makes
a little slower; the unprofiled step time is given beside them. The baseline in the same run is HF Llama compiled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from infini_llama.profiling import busy_us, kernel_events

GROUPS = ("matmul", "attention", "triton fused", "eager elementwise", "optimizer", "copy", "other")
# The first group whose patterns occur in the lower-cased kernel name wins. Order matters: a Triton GEMM template
# is a matmul; a fused Triton kernel named after the attention op it sits beside is not the attention kernel; and
# attention kernels built from GEMM pieces (cuDNN's "..._sdpa_sm90_flash_bprop_wgmma_...", CUTLASS-based flash
# kernels) are attention, so attention is matched before the GEMM names.
_PATTERNS = (
    ("optimizer", ("multi_tensor_apply", "fused_adam", "fusedadam")),
    ("matmul", ("triton_tem_fused_mm", "triton_tem_fused_bmm", "triton_tem_fused_addmm")),
    ("triton fused", ("triton_",)),
    ("attention", ("flash", "fmha", "sdpa", "attention", "attn")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "wgmma", "splitkreduce")),
    ("copy", ("memcpy", "memset", "copy_kernel", "catarray", "cat_batched")),
    ("eager elementwise", ("elementwise", "reduce_kernel", "softmax", "norm", "index", "scatter", "gather")),
)  # fmt: skip


def kernel_group(name: str) -> str:
    """The group of a GPU kernel, from its name."""
    lowered = name.lower()
    for group, patterns in _PATTERNS:
        if any(p in lowered for p in patterns):
            return group
    return "other"


def summarize(trace: dict, steps: int, wall_s: float, top: int = 12) -> dict:
    """Kernel time per step by group, busy share of `wall_s` (the profiled steps' wall time), and the kernels that
    took the most time, from a Chrome trace of `steps` steps."""
    if steps < 1 or wall_s <= 0:
        raise ValueError(f"need steps >= 1 and wall_s > 0, got {steps} and {wall_s}")
    kernels = kernel_events(trace)
    by_group: dict[str, float] = defaultdict(float)
    by_name: dict[str, float] = defaultdict(float)
    for event in kernels:
        by_group[kernel_group(event["name"])] += event["dur"]
        by_name[event["name"]] += event["dur"]
    wall_us = wall_s * 1e6
    busy = busy_us([(e["ts"], e["ts"] + e["dur"]) for e in kernels])
    return dict(
        step_ms_profiled=wall_s * 1e3 / steps,
        kernel_ms=sum(by_group.values()) / 1e3 / steps,
        busy_share=busy / wall_us,
        kernels_per_step=len(kernels) / steps,
        groups={g: dict(ms=by_group.get(g, 0.0) / 1e3 / steps, share=by_group.get(g, 0.0) / wall_us) for g in GROUPS},
        top_kernels=[dict(name=name[:160], ms=us / 1e3 / steps, share=us / wall_us)
                     for name, us in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]],
    )  # fmt: skip


def profile_arm(arm: str, T: int, args) -> dict:
    import torch
    from bench_gpu import make_step

    step, _config, batch, _began = make_step(arm, T, args)
    for _ in range(3):  # compile, then two steady steps
        step()
    unprofiled = statistics.median(step() for _ in range(args.steps))
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        began = time.perf_counter()
        for _ in range(args.steps):
            step()
        wall = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    return dict(arm=arm, T=T, batch=batch, step_ms=unprofiled * 1e3, tok_s=batch * T / unprofiled,
                **summarize(trace, args.steps, wall))  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["arm | T | step ms | busy | " + " | ".join(GROUPS) + " | kernels/step"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['arm']} | {r['T']} | failed: {r['error']}")
            continue
        groups = " | ".join(f"{r['groups'][g]['ms']:.1f} ({r['groups'][g]['share']:.0%})" for g in GROUPS)
        lines.append(f"{r['arm']} | {r['T']} | {r['step_ms']:.1f} | {r['busy_share']:.0%} | {groups} | "
                     f"{r['kernels_per_step']:.0f}")  # fmt: skip
    for r in rows:
        for k in r.get("top_kernels", [])[:5]:
            lines.append(f"  {r['arm']}: {k['ms']:.2f} ms ({k['share']:.0%}) {k['name'][:100]}")
    return "\n".join(lines)


def main() -> None:
    import traceback

    import torch
    from bench_gpu import environment

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper-300m")
    parser.add_argument("--arms", default="delta-default,linear-default,hf-compiled,full-eager")
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=32768, help="tokens per step")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per arm")
    parser.add_argument("--out", default="benchmarks/results/profile.json")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer under bf16 and bench_gpu.py
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(benchmark="profile", **environment(), settings=vars(args), rows=[])
    for arm in args.arms.split(","):
        try:
            row = profile_arm(arm, args.length, args)
        except Exception as exc:  # noqa: BLE001 - a row that fails is reported, the others still run
            traceback.print_exc()
            row = dict(arm=arm, T=args.length, error=f"{type(exc).__name__}: {str(exc)[:200]}")
        result["rows"].append(row)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "top_kernels"}), flush=True)
    print(table(result["rows"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
