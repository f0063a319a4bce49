"""What stops a run part-way, and the checks that catch bad steps and bad batches before they do harm.

Non-finite steps: a step whose loss or gradient norm is NaN or infinite (a loss spike, an overflow in bf16) is
skipped: no optimizer update, so the weights and AdamW moments stay those of the last good step, while its batch
is consumed and the LR schedule moves on, so the run stays a pure function of the step number and resumes
exactly. After `max_bad_steps` bad steps in a row (counted across a resume: checkpoints keep the count) the run
stops with RunError and writes nothing more, so its checkpoints hold the weights from before the trouble.
"""

from __future__ import annotations

from pathlib import Path

import torch


class RunError(RuntimeError):
    """The run stopped part-way; the message says why, what was kept and what to do next."""


class NonFiniteGuard:
    """Counts consecutive skipped steps; `record` raises RunError when there are `max_bad_steps` of them."""

    def __init__(self, max_bad_steps: int) -> None:
        self.max_bad_steps = max_bad_steps
        self.streak: list[int] = []  # the current run of bad steps (1-based step numbers)

    def state_dict(self) -> dict[str, list[int]]:
        """What a checkpoint keeps, so that a resumed run goes on counting the bad steps in a row it stopped in."""
        return {"streak": list(self.streak)}

    def load_state_dict(self, state: dict[str, list[int]] | None) -> None:
        self.streak = list((state or {}).get("streak", []))

    def record(self, step: int, finite: bool, checkpoint: Path | None) -> None:
        if finite:
            self.streak.clear()
            return
        self.streak.append(step)
        if len(self.streak) >= self.max_bad_steps:
            kept = f"its last checkpoint, {checkpoint}, is untouched" if checkpoint else "no checkpoint was written"
            raise RunError(
                f"steps {self.streak[0]}-{step}: the loss or gradient was not finite {len(self.streak)} times in a "
                f"row (max_bad_steps={self.max_bad_steps}), so the run stopped; {kept}. Lower --lr, check the data "
                "of these steps, or raise --set max_bad_steps=N, then continue with --resume"
            )


def check_token_ids(input_ids: torch.Tensor, labels: torch.Tensor, vocab_size: int, where: str) -> None:
    """Refuse a batch with ids outside the embedding (an out-of-range id is an opaque index error on CPU and a
    device-side assert on CUDA) or labels that are neither an id nor -100."""
    if input_ids.numel() == 0:
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    targets = labels[labels != -100]
    if targets.numel():
        low, high = min(low, int(targets.min())), max(high, int(targets.max()))
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise RunError(
            f"{where} holds token id {bad}, outside the model's vocabulary of {vocab_size} ids (labels may also be "
            "-100); the data was tokenized with another tokenizer or is damaged: rebuild it with the run's tokenizer"
        )
