"""Training throughput of the `tiny` recipe on the CPU, both arms, at a few sequence lengths, in one run.

    python benchmarks/bench_train.py                          # writes benchmarks/results/train_cpu.json
    python benchmarks/bench_train.py --lengths 256,512,1024 --steps 30 --threads 2

Each row trains with `infini_llama.train.train` (the recipe's AdamW, schedule, clipping, the default data
pipeline, evaluation and checkpoints excluded from the timing) and, as the baseline in the same run, a bare
loop of forward + backward + AdamW on batches of the same shape: the difference is the trainer's overhead.
Tokens per step stay at the recipe's 16 × 256, so longer rows have smaller batches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
from transformers.utils import logging as hf_logging

import infini_llama
from infini_llama import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.train import build_optimizer, read_metrics, recipe, train


def trainer_tokens_per_s(cfg) -> float:
    """Median tokens/s of the logged intervals after the first (which holds the warm-up)."""
    result = train(cfg)
    rates = [r["tokens_per_s"] for r in read_metrics(result.run_dir / "metrics.jsonl", "train")]
    return statistics.median(rates[1:])


def bare_tokens_per_s(cfg, vocab_size: int, steps: int, warmup: int) -> float:
    """Median tokens/s of plain forward + backward + AdamW steps on random tokens of the same shape."""
    torch.manual_seed(0)
    config = config_from_preset(cfg.preset, vocab_size=vocab_size, **cfg.model)
    model = InfiniLlamaForCausalLM(config)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    tokens = torch.randint(0, vocab_size, (cfg.batch_size, cfg.seq_len))
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        model(input_ids=tokens, labels=tokens).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return cfg.batch_size * cfg.seq_len / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lengths", default="256,512,1024")
    parser.add_argument("--tokens", type=int, default=16 * 256, help="tokens per optimizer step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results/train_cpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    lengths = [int(t) for t in args.lengths.split(",")]
    vocab = config_from_preset("tiny").vocab_size
    # A busy machine (other jobs on the same cores) slows every row; the load average says whether it was.
    load_before = os.getloadavg()[0]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for attention in ("infini", "full"):
            for T in lengths:
                cfg = recipe(
                    "tiny", out=f"{tmp}/{attention}-{T}", seq_len=T, batch_size=args.tokens // T,
                    steps=args.log_every + args.steps, log_every=args.log_every, eval_every=0, eval_windows=2,
                    save_every=0, progress=False, tensorboard=False, model={"attention": attention},
                )  # fmt: skip
                trainer = trainer_tokens_per_s(cfg)
                bare = bare_tokens_per_s(cfg, vocab, args.steps, warmup=3)
                rows.append(
                    dict(arm=attention, T=T, batch=cfg.batch_size, trainer_tok_s=trainer, bare_tok_s=bare,
                         trainer_over_bare=trainer / bare)
                )  # fmt: skip
                print(f"{attention:>6} T={T:<5} trainer {trainer:8.0f} tok/s   bare loop {bare:8.0f} tok/s")
    by_key = {(r["arm"], r["T"]): r for r in rows}
    for r in rows:
        infini, full = by_key[("infini", r["T"])], by_key[("full", r["T"])]
        r["infini_over_full"] = infini["trainer_tok_s"] / full["trainer_tok_s"]

    threads, load = torch.get_num_threads(), os.getloadavg()[0]
    print(f"\ntiny recipe, CPU ({threads} threads, load {load:.1f}), {args.tokens} tokens per step, fp32")
    print(f"{'arm':>6} {'T':>5} {'batch':>5} {'trainer tok/s':>14} {'bare tok/s':>11} {'trainer/bare':>13}")
    for r in rows:
        print(
            f"{r['arm']:>6} {r['T']:>5} {r['batch']:>5} {r['trainer_tok_s']:>14.0f} {r['bare_tok_s']:>11.0f} "
            f"{r['trainer_over_bare']:>13.2f}"
        )
    print(f"{'T':>5} {'infini/full':>12}")
    for T in lengths:
        print(f"{T:>5} {by_key[('infini', T)]['infini_over_full']:>12.2f}")

    result = dict(
        benchmark="train",
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        device=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        versions=dict(
            torch=torch.__version__,
            transformers=transformers.__version__,
            infini_llama=infini_llama.__version__,
            python=platform.python_version(),
        ),  # fmt: skip
        cpu_count=os.cpu_count(),
        load_average_1min=dict(before=load_before, after=os.getloadavg()[0]),
        settings=vars(args),
        rows=rows,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
