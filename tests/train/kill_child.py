"""The child process of the kill -9 tests: runs `infini-llama ARGS` and, at the point PAUSE names, writes the
file MARKER and waits there to be killed, so the parent's SIGKILL lands exactly where the test wants it.

    python kill_child.py PAUSE MARKER ARGS...

PAUSE is "step:N" (inside the forward pass of training step N, 1-based) or "save:N" (half-way through writing
the optimizer state of the N-th checkpoint, the half already on disk).
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import torch

from infini_llama.cli import main
from infini_llama.train import loop


def wait_to_be_killed(marker: Path) -> None:
    marker.write_text("paused")
    while True:
        time.sleep(1)


def pause_in_step(n: int, marker: Path) -> None:
    train_step, forward_loss = loop._Trainer._train_step, loop._Trainer._forward_loss
    current = {"step": None}

    def step(self, index):
        current["step"] = index + 1
        try:
            return train_step(self, index)
        finally:
            current["step"] = None

    def forward(self, *args):
        if current["step"] == n:
            wait_to_be_killed(marker)
        return forward_loss(self, *args)

    loop._Trainer._train_step, loop._Trainer._forward_loss = step, forward


def pause_in_save(n: int, marker: Path) -> None:
    save, seen = torch.save, []

    def half_then_pause(obj, file, *args, **kwargs):
        if Path(file).name == "optimizer.pt":
            seen.append(file)
            if len(seen) == n:
                buffer = io.BytesIO()
                save(obj, buffer)
                Path(file).write_bytes(buffer.getvalue()[: buffer.tell() // 2])
                wait_to_be_killed(marker)
        return save(obj, file, *args, **kwargs)

    torch.save = half_then_pause


if __name__ == "__main__":
    where, marker, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    kind, _, n = where.partition(":")
    {"step": pause_in_step, "save": pause_in_save}[kind](int(n), marker)
    sys.exit(main(args))
