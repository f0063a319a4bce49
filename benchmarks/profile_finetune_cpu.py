"""Where a CPU passkey fine-tuning step of the `tiny` study spends its time, both arms, as the main job runs them.

    python benchmarks/profile_finetune_cpu.py        # writes benchmarks/results/profile_finetune_cpu.json

The study's fine-tuning recipe for each arm (8 × 256 tokens, the loss on the answer, compiled decoder layers and
loss, fused AdamW, clipping), one CPU thread per arm as the main job gives each of its two arms running side by side,
weights as initialised (a step costs the same whatever they are). Each step is timed in four phases: building the
batch (the study's own PasskeyBatchSource), the forward to the summed loss, the backward, and the update (clipping,
AdamW, zeroing the gradients). Medians over steps after a warm-up, and each phase's share of the whole step: the share
of forward and backward is the model's arithmetic, which no change around it can save.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime, timezone

import torch
from benchjson import write_result
from transformers.utils import logging as hf_logging

from infini_llama import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.data.tokenizer import load_tokenizer
from infini_llama.host import describe_cpu
from infini_llama.study import study_config
from infini_llama.study.arms import expand_arms
from infini_llama.study.stages import finetune_recipe, passkey_source
from infini_llama.train import build_optimizer
from infini_llama.train.compile import compile_decoder_layers, compile_loss
from infini_llama.train.loop import summed_loss

PHASES = ("batch", "forward", "backward", "update")


def profile_arm(cfg, arm, steps: int, warmup: int) -> dict:
    tcfg = finetune_recipe(cfg, arm, cfg.finetune["lr"])
    model_config = config_from_preset(cfg.model_preset, **{**cfg.model, **arm.model, "attention": arm.attention})
    tokenizer = load_tokenizer(vocab_size=model_config.vocab_size)
    source = passkey_source(cfg, arm, tokenizer, tcfg)
    torch.manual_seed(0)
    model = InfiniLlamaForCausalLM(model_config).train()
    compile_decoder_layers(model.model.layers, tcfg.batch_size, tcfg.seq_len)
    loss_fn = compile_loss(tcfg.batch_size, tcfg.seq_len, model_config.vocab_size, torch.device("cpu"))
    optimizer = build_optimizer(model, tcfg, torch.device("cpu"))
    times = {phase: [] for phase in PHASES}
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        input_ids, labels = source.batch(step, 0)
        t1 = time.perf_counter()
        loss = summed_loss(model, input_ids, labels, loss_fn)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if step >= warmup:
            for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                times[phase].append(seconds)
    medians = {phase: statistics.median(values) for phase, values in times.items()}
    whole = statistics.median([sum(parts) for parts in zip(*times.values(), strict=True)])
    return {
        "arm": arm.name,
        "batch": [tcfg.batch_size, tcfg.seq_len],
        "step_ms": round(1e3 * whole, 2),
        "tokens_per_s": round(tcfg.batch_size * tcfg.seq_len / whole),
        "phase_ms": {phase: round(1e3 * s, 2) for phase, s in medians.items()},
        "phase_share": {phase: round(s / sum(medians.values()), 3) for phase, s in medians.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the main job gives each arm one)")
    parser.add_argument("--out", default="benchmarks/results/profile_finetune_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    cfg = study_config("tiny")
    rows = [profile_arm(cfg, arm, args.steps, args.warmup) for arm in expand_arms(cfg)]

    print(f"{'arm':<8} {'step ms':>8} {'tokens/s':>9}  " + "  ".join(f"{p:>15}" for p in PHASES))
    for row in rows:
        cells = [f"{row['phase_ms'][p]:6.1f} ms {100 * row['phase_share'][p]:4.1f}%" for p in PHASES]
        print(f"{row['arm']:<8} {row['step_ms']:8.1f} {row['tokens_per_s']:9,}  " + "  ".join(cells))
    result = {
        "benchmark": "profile_finetune_cpu",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": describe_cpu(),
        "threads": args.threads,
        "versions": {"torch": torch.__version__},
        "steps": args.steps,
        "warmup": args.warmup,
        "notes": __doc__.split("\n\n", 2)[2].strip().replace("\n", " "),
        "rows": rows,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
