"""How busy a GPU is during a step: the union of its kernels' intervals over the step's wall time, from a
`torch.profiler` trace. What is left is time the GPU waited for the host (kernel launches, Python); a process that
leaves its GPU idle that way can share it with another at little cost, one that keeps it busy cannot.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

# Chrome-trace categories of work on the GPU itself.
KERNEL_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (kernels on several streams may overlap)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def kernel_events(trace: dict) -> list[dict]:
    """The events of a Chrome trace (`torch.profiler`'s export) that ran on the GPU."""
    return [e for e in trace.get("traceEvents", []) if e.get("cat") in KERNEL_CATEGORIES and "dur" in e]


def gpu_busy_share(step: Callable[[], object], wall_s: float) -> float | None:
    """The share of `wall_s` (one `step`'s wall time, measured without the profiler, which slows the host but not
    the kernels) in which the GPU ran `step`'s kernels: `step` is run once under `torch.profiler`. None off CUDA, or
    where the profiler sees no kernels (no CUPTI) or fails."""
    if not torch.cuda.is_available() or wall_s <= 0:
        return None
    try:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            step()
            torch.cuda.synchronize()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(path))
            kernels = kernel_events(json.loads(path.read_text()))
    except Exception:  # a measurement for an estimate is never worth failing the run for
        return None
    if not kernels:
        return None
    busy = busy_us([(e["ts"], e["ts"] + e["dur"]) for e in kernels])
    return min(1.0, busy / (wall_s * 1e6))
