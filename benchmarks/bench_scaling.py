"""Multi-GPU scaling of the trainer: tokens/s per GPU and efficiency vs one GPU, both arms, DDP and FSDP2.

    python benchmarks/bench_scaling.py --preset paper-300m --gpus 1,2 --out scaling.json
    python benchmarks/bench_scaling.py --preset mini --gpus 1,2,4 --steps 40 --dist ddp
    python benchmarks/bench_scaling.py --preset tiny --device cpu --gpus 1,2 --steps 6   # gloo smoke test

For every arm and GPU count, launches `torchrun --nproc_per_node N -m infini_llama train` for `--steps`
optimizer steps (one run per arm on 1 GPU, where DDP and FSDP2 are the same single-process run; one per
mode above), then reads the run's metrics.jsonl: median tokens/s of the steps after `--warmup`, peak GPU
memory of rank 0, MFU. Weak scaling: every GPU trains `--batch-size` sequences of `--seq-len` tokens per step
(no accumulation), so scaling efficiency = (tokens/s per GPU with N GPUs) / (tokens/s with 1 GPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

import infini_llama
from infini_llama.train import read_metrics


def train_command(args: argparse.Namespace, arm: str, dist: str, gpus: int, run_dir: Path) -> list[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus),
        "-m", "infini_llama", "train", "--preset", args.preset, "--attention", arm, "--dist", dist,
        "--device", args.device, "--out", str(run_dir), "--steps", str(args.steps), "--grad-accum", "1",
        "--log-every", str(args.log_every), "--eval-every", "0", "--eval-windows", str(gpus),
        "--save-every", "0", "--keep", "1", "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    if args.seq_len:
        command += ["--seq-len", str(args.seq_len)]
    if args.no_compile:
        command.append("--no-compile")
    return command + shlex.split(args.train_args)


def summarize(metrics_file: Path, warmup: int) -> dict:
    """Throughput, memory and MFU of one run from its metrics: medians over the records past `warmup` steps
    (all records if none is)."""
    records = read_metrics(metrics_file, "train")
    if not records:
        raise ValueError(f"{metrics_file} holds no training records")
    timed = [r for r in records if r["step"] > warmup] or records
    memory = [r["peak_mem_gib"] for r in records if r.get("peak_mem_gib") is not None]
    mfu = [r["mfu"] for r in timed if r.get("mfu") is not None]
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
        "peak_mem_gib": max(memory) if memory else None,
        "mfu": statistics.median(mfu) if mfu else None,
        "timed_records": len(timed),
    }


def add_efficiency(rows: list[dict]) -> None:
    """tokens/s per GPU, and its ratio to the same arm's 1-GPU run."""
    single = {r["arm"]: r for r in rows if r["gpus"] == 1 and r.get("tokens_per_s")}
    for r in rows:
        if not r.get("tokens_per_s"):
            continue
        r["tokens_per_s_per_gpu"] = r["tokens_per_s"] / r["gpus"]
        base = single.get(r["arm"])
        r["scaling_efficiency"] = r["tokens_per_s_per_gpu"] / base["tokens_per_s"] if base else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="paper-300m")
    parser.add_argument("--gpus", default="1,2", help="process counts, comma-separated")
    parser.add_argument("--arms", default="infini,full")
    parser.add_argument("--dist", default="ddp,fsdp", help="modes for counts above 1")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the medians")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--batch-size", type=int, help="sequences per GPU per step (default: recipe)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true", help="train eagerly (default: compiled on CUDA)")
    parser.add_argument("--train-args", default="", help="more `infini-llama train` arguments, one string")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--keep-runs", default=None, help="keep the run folders here (default: deleted)")
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    args = parser.parse_args()
    counts = [int(n) for n in args.gpus.split(",")]
    if args.device.startswith("cuda") and max(counts) > torch.cuda.device_count():
        parser.error(f"--gpus asks for {max(counts)} GPUs, {torch.cuda.device_count()} are visible")

    root = Path(args.keep_runs) if args.keep_runs else Path(tempfile.mkdtemp(prefix="scaling-"))
    rows = []
    for arm in args.arms.split(","):
        for gpus in counts:
            for dist in ["ddp"] if gpus == 1 else args.dist.split(","):
                run_dir = root / f"{arm}-{dist}-{gpus}"
                shutil.rmtree(run_dir, ignore_errors=True)
                row = {"arm": arm, "dist": dist if gpus > 1 else "single", "gpus": gpus}
                print(f"{arm} {row['dist']} x{gpus} ...", flush=True)
                command = train_command(args, arm, dist, gpus, run_dir)
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
                if done.returncode != 0:
                    row["error"] = done.stderr[-4000:]
                    print(f"  failed (exit {done.returncode}):\n{done.stderr[-2000:]}", flush=True)
                else:
                    row.update(summarize(run_dir / "metrics.jsonl", args.warmup))
                    settings = json.loads((run_dir / "run.json").read_text())["train"]
                    row.update(seq_len=settings["seq_len"], batch_size=settings["batch_size"])
                rows.append(row)
                if not args.keep_runs:
                    shutil.rmtree(run_dir, ignore_errors=True)
    add_efficiency(rows)

    print(f"\n{args.preset}, {args.steps} steps (medians after step {args.warmup}), device {args.device}")
    header = ("arm", 6), ("mode", 6), ("GPUs", 4), ("tok/s", 10), ("tok/s/GPU", 10), ("efficiency", 10)
    print(" ".join(f"{name:>{width}}" for name, width in header), f"{'peak GiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['arm']:>6} {r['dist']:>6} {r['gpus']:>4} {'failed':>10}")
            continue
        eff = f"{r['scaling_efficiency']:.2f}" if r.get("scaling_efficiency") is not None else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(
            f"{r['arm']:>6} {r['dist']:>6} {r['gpus']:>4} {r['tokens_per_s']:>10.0f} "
            f"{r['tokens_per_s_per_gpu']:>10.0f} {eff:>10} {mem:>9}"
        )
    on_gpu = args.device.startswith("cuda")
    result = dict(
        benchmark="scaling",
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine(),
        versions=dict(
            torch=torch.__version__,
            transformers=transformers.__version__,
            infini_llama=infini_llama.__version__,
            python=platform.python_version(),
        ),  # fmt: skip
        settings=vars(args),
        rows=rows,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    if not args.keep_runs:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
