#!/usr/bin/env python3
"""Time `infini-llama --help` and every sub-command's `--help`, each in a fresh Python process (what a user waits
for), against `python -c "import torch"` in the same run: the cost the command line must not pay before it is
asked to do anything. The target is at most 2 s on 2 CPU cores.

Each command is run `--repeats` times, interleaved with the others, and its median wall time reported (the least
sensitive to a neighbour's load on a shared machine; the minimum is written too).

Usage::

    python benchmarks/bench_cli.py [--out benchmarks/results/cli_cpu.json] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS: list[list[str]] = [
    [],
    ["train"],
    ["eval"],
    ["eval", "passkey"],
    ["eval", "multineedle"],
    ["eval", "perplexity"],
    ["eval", "gates"],
    ["finetune"],
    ["finetune", "passkey"],
    ["report"],
    ["generate"],
    ["study"],
]
TARGET_S = 2.0


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def wall_time(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cli_cpu.json"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    # The installed console script, as a user runs it (else the module, which runs the same main()).
    script = Path(sys.executable).with_name("infini-llama")
    command_line = [str(script)] if script.is_file() else [sys.executable, "-m", "infini_llama"]
    runs: dict[str, list[str]] = {
        "infini-llama " + " ".join([*command, "--help"]): [*command_line, *command, "--help"] for command in COMMANDS
    }
    runs["python -c 'import torch' (baseline)"] = [sys.executable, "-c", "import torch"]
    runs["python -c 'import infini_llama.cli'"] = [sys.executable, "-c", "import infini_llama.cli"]
    times: dict[str, list[float]] = {name: [] for name in runs}
    for argv in runs.values():  # one warm-up run each: the first start reads files from disk
        wall_time(argv)
    for _ in range(args.repeats):
        for name, argv in runs.items():
            times[name].append(wall_time(argv))

    rows = [
        {"command": name, "median_s": statistics.median(t), "min_s": min(t), "runs": len(t)}
        for name, t in times.items()
    ]
    width = max(len(r["command"]) for r in rows)
    print(f"{'command':<{width}}  median s  min s")
    for r in rows:
        print(f"{r['command']:<{width}}  {r['median_s']:8.3f}  {r['min_s']:5.3f}")
    helps = [r for r in rows if r["command"].endswith("--help")]
    slowest = max(r["median_s"] for r in helps)
    baseline = next(r for r in rows if "import torch" in r["command"])["median_s"]
    print(f"slowest --help: {slowest:.3f} s (target <= {TARGET_S} s); import torch alone: {baseline:.3f} s")

    import torch  # versions for the record, after the timings

    result = {
        "benchmark": "cli_help",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "repeats": args.repeats,
        "target_s": TARGET_S,
        "slowest_help_s": slowest,
        "import_torch_s": baseline,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if slowest <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
