"""The automatic micro-batch: the largest number of sequences per forward pass that fits the GPU.

A recipe fixes the global batch (`global_batch` sequences per optimizer step); how many of them go through one
forward pass is only a matter of memory. With `batch_size` None (the paper recipes' default) the trainer
picks it: on CUDA a probe at the start runs forward + backward of a fresh model at the training length for
the whole per-process batch, then for halves of it, until one fits with a margin (out-of-memory or a peak
above `1 - margin` of the GPU counts as not fitting; the optimizer's moments are added to the peak); the rest
of the global batch comes from accumulation. Elsewhere the whole per-process batch is one pass. If a step still
runs out of memory, the trainer halves the micro-batch (`halved`) and does the step again on the same sequences
(`infini_llama.train.loop`). An explicit `batch_size` is used as given. The sequences of a step do not depend
on the split (`TokenWindowSource`, `PasskeyBatchSource`), and a source built before the split is known
(`initial_split`) is split anew by the trainer (`BatchSource.split`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.distributed as dist

from infini_llama.models import InfiniLlamaConfig, InfiniLlamaForCausalLM, causal_lm_loss
from infini_llama.train.config import TrainConfig

MARGIN = 0.10  # share of the GPU's memory the probe leaves free (fragmentation, the data, evaluation)
Fits = Callable[[int], bool]


def halved(batch_size: int, per_process: int) -> int | None:
    """The candidate after `batch_size`: the largest divisor of `per_process` at most half of it; None for 1."""
    if batch_size < 2:
        return None
    return max(d for d in range(1, batch_size // 2 + 1) if per_process % d == 0)


def candidate_batches(per_process: int) -> list[int]:
    """per_process, then halves of it that divide it evenly, down to 1: 8 -> [8, 4, 2, 1], 12 -> [12, 6, 3, 1]."""
    candidates = [per_process]
    while (smaller := halved(candidates[-1], per_process)) is not None:
        candidates.append(smaller)
    return candidates


def choose_micro_batch(per_process: int, fits: Fits) -> tuple[int, list[dict]]:
    """The largest candidate for which `fits(batch_size)` holds (1 if none does), and what was tried."""
    tried = []
    for batch_size in candidate_batches(per_process):
        ok = bool(fits(batch_size))
        tried.append({"batch_size": batch_size, "fits": ok})
        if ok:
            return batch_size, tried
    return 1, tried


def memory_probe(
    model_config: InfiniLlamaConfig, seq_len: int, device: torch.device, precision: str, margin: float = MARGIN
) -> Fits:
    """fits(batch_size) on a CUDA device: one training forward + backward of a fresh model (eager, so the peak
    is an upper bound of the compiled trainer's) at (batch_size, seq_len); call `fits.release()` when done."""
    model = InfiniLlamaForCausalLM(model_config).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    optimizer_bytes = 2 * 4 * params  # AdamW's two float32 moments, allocated at the first step
    total = torch.cuda.get_device_properties(device).total_memory

    def fits(batch_size: int) -> bool:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            ids = torch.randint(0, model_config.vocab_size, (batch_size, seq_len), device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(input_ids=ids, use_cache=False).logits
                loss = causal_lm_loss(logits, ids)
            loss.backward()
            del logits, loss
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
        except torch.OutOfMemoryError:
            return False
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        return peak + optimizer_bytes <= (1 - margin) * total

    def release() -> None:
        nonlocal model
        model = None
        torch.cuda.empty_cache()

    fits.release = release
    return fits


def device_probe(
    model_config: InfiniLlamaConfig, cfg: TrainConfig, device: torch.device, precision: str
) -> Fits | None:
    """The probe for `device`: the memory probe on CUDA, None elsewhere (no memory limit to find)."""
    if device.type != "cuda":
        return None
    return memory_probe(model_config, cfg.seq_len, device, precision)


def per_process_batch(cfg: TrainConfig, world_size: int) -> int:
    """The sequences of one optimizer step on each process, for a config with a `global_batch`."""
    if cfg.global_batch % world_size:
        raise ValueError(
            f"global_batch ({cfg.global_batch}) must be a multiple of the number of processes ({world_size})"
        )
    return cfg.global_batch // world_size


def initial_split(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(batch_size, grad_accum) to build a batch source with before the trainer resolves the micro-batch: the
    given split; with an automatic `batch_size`, the whole per-process batch in one pass (or, without a
    `global_batch`, one sequence per pass). The trainer splits such a source anew for the micro-batch it picks."""
    if cfg.batch_size is None and cfg.global_batch is not None:
        return per_process_batch(cfg, world_size), 1
    return cfg.batch_size or 1, cfg.accumulation(world_size)


def resolve_micro_batch(
    cfg: TrainConfig,
    model_config: InfiniLlamaConfig,
    device: torch.device,
    world_size: int,
    precision: str,
    *,
    fits: Fits | None = None,
) -> tuple[TrainConfig, dict | None]:
    """`cfg` with `batch_size` chosen if it is None (see the module docstring), and a record of the choice for
    the run's log and run.json (None when `batch_size` was given). `fits` replaces the device's probe."""
    if cfg.batch_size is not None:
        return cfg, None
    if cfg.global_batch is None:  # accumulation given as such (--grad-accum): one sequence per pass
        record = {"batch_size": 1, "how": "1: no global_batch to split", "changes": []}
        return dataclasses.replace(cfg, batch_size=1), record
    per_process = per_process_batch(cfg, world_size)
    probe = fits if fits is not None else device_probe(model_config, cfg, device, precision)
    if probe is None:
        chosen, tried, how = per_process, [], "the whole per-process batch in one pass: no GPU memory to probe"
    else:
        try:
            chosen, tried = choose_micro_batch(per_process, probe)
        finally:
            getattr(probe, "release", lambda: None)()
        how = f"the largest that fits the GPU with a {MARGIN:.0%} margin"
    if dist.is_available() and dist.is_initialized():  # every process takes the smallest choice
        value = torch.tensor([chosen], device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        chosen = int(value.item())
        while per_process % chosen:  # a divisor of the per-process batch, as every candidate is
            chosen -= 1
    record = {
        "batch_size": chosen,
        "grad_accum": per_process // chosen,
        "global_batch": cfg.global_batch,
        "how": how,
        "tried": tried,
        "changes": [],  # halvings after running out of memory mid-run (`infini_llama.train.loop`)
    }
    return dataclasses.replace(cfg, batch_size=chosen), record
