"""What a benchmark writes: one JSON under benchmarks/results/ with its rows and where, when and with what they were
measured. The scripts beside this one import it (a script's own folder is on its import path)."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path

import torch


def run_environment(device: str | torch.device) -> dict:
    """The date (UTC), the device (the GPU's name, else the CPU's model, vector extensions and cores), the CPU as
    data, torch's CPU threads and the versions of a run."""
    import transformers

    from infini_llama.host import cpu_summary, describe_cpu

    on_gpu = torch.device(device).type == "cuda"
    cpu = describe_cpu()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if on_gpu else cpu_summary(cpu),
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }


def write_result(out: str | Path, result: dict) -> None:
    """Write `result` as indented JSON to `out` (its folder made if needed) and say so."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
