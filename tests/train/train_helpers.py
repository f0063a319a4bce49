"""Shared by the trainer tests: the run's own batches with a fault injected, and folder snapshots."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

from infini_llama.data import load_tokenizer, prepare_tokens
from infini_llama.train import TokenWindowSource


def window_source(cfg) -> TokenWindowSource:
    """The batches `train(cfg)` would build itself."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    data = prepare_tokens(tokenizer, data=cfg.data, cache_dir=cfg.cache_dir, show_progress=False)
    return TokenWindowSource(data, cfg.seq_len, cfg.batch_size, cfg.grad_accum, eval_windows=cfg.eval_windows)


class Wrapped:
    """A batch source that hands out `inner`'s batches; subclasses inject faults in `batch`."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def batch(self, step: int, micro_step: int):
        return self.inner.batch(step, micro_step)

    def validation_batches(self):
        return self.inner.validation_batches()

    def state_dict(self):
        return self.inner.state_dict()


class SignalAt(Wrapped):
    """The default batches, with `signum` raised while the first batch of step `at` (0-based) is fetched."""

    def __init__(self, inner, at: int, signum: int = signal.SIGTERM) -> None:
        super().__init__(inner)
        self.at, self.signum = at, signum

    def batch(self, step: int, micro_step: int):
        if step == self.at and micro_step == 0:
            signal.raise_signal(self.signum)
        return super().batch(step, micro_step)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
