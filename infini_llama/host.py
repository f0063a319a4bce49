"""The host a run or study ran on, described well enough to compare timings: CPUs of one nominal size (e.g. "AMD
EPYC, 2 cores") differ by 2x in this project's training speed, by generation (family / model) and by the vector
extensions PyTorch's CPU kernels can use (AVX2, AVX-512, AMX).

`describe_cpu()` reads /proc/cpuinfo where there is one, else what the `platform` module knows; it never raises.
`busy_warning()` says, before a run, whether other processes already keep its CPUs busy (from /proc/stat).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

CPUINFO = "/proc/cpuinfo"
PROC_STAT = "/proc/stat"


def usable_cores() -> int:
    """How many CPUs this process may run on (its affinity), else every CPU of the machine."""
    ids = usable_cpu_ids()
    return len(ids) if ids else os.cpu_count() or 1


def usable_cpu_ids() -> set[int] | None:
    """The numbers of the CPUs this process may run on; None where the OS does not say."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def cpu_times(stat: str = PROC_STAT, cpus: set[int] | None = None) -> tuple[int, int] | None:
    """(idle, total) CPU time so far of the CPUs `cpus` (None: every CPU), in clock ticks, from /proc/stat; None
    where it cannot be read."""
    try:
        with open(stat) as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3:4].isdigit()]
    except OSError:
        return None
    idle = total = 0
    for fields in lines:
        if cpus is not None and int(fields[0][3:]) not in cpus:
            continue
        ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
        idle += ticks[3] + ticks[4]
        total += sum(ticks)
    return (idle, total) if total else None


def busy_cores(interval_s: float = 0.5, stat: str = PROC_STAT) -> float | None:
    """How many of the CPUs this process may use other processes kept busy over the next `interval_s` (this one
    sleeps); None where the CPU times cannot be read."""
    cpus = usable_cpu_ids()
    before = cpu_times(stat, cpus)
    time.sleep(interval_s)
    after = cpu_times(stat, cpus)
    if before is None or after is None or after[1] <= before[1]:
        return None
    idle, total = after[0] - before[0], after[1] - before[1]
    return (1 - idle / total) * (len(cpus) if cpus else usable_cores())


def busy_warning(threads: int, busy: float | None = None, cores: int | None = None) -> str | None:
    """A warning when the CPU is already busy before a run that will use `threads` threads of it: other processes
    keep more than half the usable cores busy (`busy`: CPUs in use, None: measured now by `busy_cores`). The run's
    threads then share the cores with theirs, and both slow down by more than their share (each PyTorch process
    takes every core by default). None when the CPU is idle enough or its use cannot be measured."""
    busy = busy_cores() if busy is None else busy
    cores = usable_cores() if cores is None else cores
    if busy is None or busy <= cores / 2:
        return None
    return (
        f"this host's CPUs are busy before the start ({busy:.1f} of {cores} in use) and this run will use {threads} "
        f"CPU thread(s): both will run slower than alone, and the estimate will be off. Running two studies side by "
        f"side? Give each a share of the cores (e.g. OMP_NUM_THREADS={max(1, cores // 2)})"
    )


def describe_cpu(cpuinfo: str = CPUINFO) -> dict[str, Any]:
    """The CPU as JSON data: model name, vendor, family / model / stepping (None where unknown), the cores this
    process may use and the machine's logical CPUs, and whether AVX2, AVX-512 (its foundation, avx512f) and AMX
    (any amx_* tile extension) are there (None where the flags cannot be read)."""
    fields = _first_processor(cpuinfo)
    flags = fields.get("flags") or fields.get("features")  # x86 / ARM
    flag_set = set(flags.split()) if flags is not None else None
    return {
        "model_name": fields.get("model name") or platform.processor() or platform.machine() or None,
        "vendor": fields.get("vendor_id"),
        "family": _integer(fields.get("cpu family")),
        "model": _integer(fields.get("model")),
        "stepping": _integer(fields.get("stepping")),
        "architecture": platform.machine() or None,
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "avx2": None if flag_set is None else "avx2" in flag_set,
        "avx512": None if flag_set is None else "avx512f" in flag_set,
        "amx": None if flag_set is None else any(flag.startswith("amx") for flag in flag_set),
    }


def cpu_summary(cpu: dict[str, Any] | None = None) -> str:
    """One line for reports: "Intel(R) Xeon(R) Processor (family 6, model 143, stepping 8; AVX2, AVX-512, AMX),
    2 cores"; the vector extensions a CPU lacks are named too ("no AVX-512"), since they explain timings."""
    cpu = describe_cpu() if cpu is None else cpu
    ids = [f"{name} {cpu[name]}" for name in ("family", "model", "stepping") if cpu.get(name) is not None]
    extensions = (("avx2", "AVX2"), ("avx512", "AVX-512"), ("amx", "AMX"))
    vectors = [label if cpu[key] else f"no {label}" for key, label in extensions if cpu.get(key) is not None]
    details = "; ".join(part for part in (", ".join(ids), ", ".join(vectors)) if part)
    name = cpu.get("model_name") or "unknown CPU"
    return f"{name}{f' ({details})' if details else ''}, {cpu.get('cores')} cores"


def _first_processor(cpuinfo: str) -> dict[str, str]:
    """The "key: value" lines of the first processor's block of /proc/cpuinfo (keys lower-cased); {} without one."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        return {}
    return fields


def _integer(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None
