"""AdamW over the model's parameter groups, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from infini_llama.models import parameter_groups
from infini_llama.train.config import TrainConfig


def lr_factor(
    step: int, *, warmup_steps: int, total_steps: int, min_ratio: float, decay_steps: int | None = None
) -> float:
    """Multiplier of each group's peak LR at optimizer step `step` (0-based).

    Linear warm-up from 1/warmup_steps to 1 over the first `warmup_steps` steps, then cosine decay from 1 to
    `min_ratio` at the last step (`total_steps - 1`), then `min_ratio`. With `decay_steps`, the peak is held after
    the warm-up and the cosine takes only the last `decay_steps` steps (warm-up, stable, decay).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    start = warmup_steps if decay_steps is None else max(warmup_steps, total_steps - decay_steps)
    span = total_steps - 1 - start
    if step < start or span <= 0:
        return 1.0 if step < total_steps else min_ratio
    progress = min(1.0, (step - start) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW on the groups "decay", "no_decay" and "gates" (β at `gate_lr`, no weight decay).

    Fused (one kernel for all parameters) on CUDA and CPU: on one CPU core, a third of the single-tensor path's
    time for the `tiny` model; elsewhere (MPS, ...) torch's default.
    """
    groups = parameter_groups(model, cfg.weight_decay, gate_lr=cfg.gate_lr)
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.adam_betas),
        eps=cfg.adam_eps,
        fused=True if device.type in ("cuda", "cpu") else None,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """One LambdaLR for all groups: each group's LR is its own peak times `lr_factor(step)`, so the gate
    group follows the same warm-up and cosine shape, down to gate_lr × min_lr / lr."""

    def factor(step: int) -> float:
        min_ratio = cfg.min_lr / cfg.lr
        return lr_factor(
            step, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, min_ratio=min_ratio, decay_steps=cfg.decay_steps
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
