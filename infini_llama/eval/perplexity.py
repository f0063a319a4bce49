"""Perplexity by position: the loss of every token of long held-out windows, averaged per position bucket.

Each window is run once from its first token through the streaming path, so every token sees exactly the memory
(or KV cache) it would see at inference. A model that uses its memory keeps its loss flat (or falling) with
position; a full-attention model degrades past its training length.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from infini_llama.data import held_out_book
from infini_llama.eval.grid import run_grid
from infini_llama.eval.inference import ChunkedLM, batch_for
from infini_llama.eval.prompts import encode

# How far past the training length the default window reaches (the spec's "up to 8×").
DEFAULT_LENGTH_FACTOR = 8


@dataclass
class PerplexityConfig:
    """`max_len` tokens per window (None: 8 × `train_len`); `windows` consecutive windows taken from the
    documents in order; losses averaged over `bucket_len`-token position buckets. `train_len` is only recorded
    and drawn as the vertical line of the plot. `batch_size` windows run together, or with `batch_tokens` as many as
    that many tokens hold."""

    max_len: int | None = None
    train_len: int | None = None
    bucket_len: int = 256
    windows: int = 4
    memory_off: bool | Sequence[int] = False  # true: every layer; layer indices: those layers only
    batch_size: int = 4
    batch_tokens: int | None = None
    chunk_len: int | None = None
    progress: bool = True

    def __post_init__(self):
        if self.max_len is None:
            if self.train_len is None:
                raise ValueError("give max_len (tokens per window) or train_len (max_len is then 8 × train_len)")
            self.max_len = DEFAULT_LENGTH_FACTOR * self.train_len
        for name in ("max_len", "bucket_len", "windows", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2 tokens (one input, one target), got {self.max_len}")
        if self.train_len is not None and self.train_len < 1:
            raise ValueError(f"train_len must be None or >= 1, got {self.train_len}")
        batch_for(self.max_len, self.batch_size, self.batch_tokens)  # checks batch_tokens


def make_windows(
    tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], max_len: int, windows: int
) -> list[list[int]]:
    """Up to `windows` consecutive, non-overlapping windows of `max_len` tokens, document by document."""
    out: list[list[int]] = []
    total = 0
    for text in documents:
        ids = encode(tokenizer, text)
        total += len(ids)
        for start in range(0, len(ids) - max_len + 1, max_len):
            if len(out) == windows:
                return out
            out.append(ids[start : start + max_len])
    if not out:
        raise ValueError(
            f"the documents hold {total} tokens, fewer than one window of max_len={max_len}; lower max_len or "
            "pass longer documents"
        )
    return out


def token_losses(runner: ChunkedLM, windows: torch.Tensor) -> torch.Tensor:
    """Next-token loss (B, T-1) of windows (B, T): entry t is the loss of token t+1 given tokens 0..t, computed
    chunk by chunk (in float32 at least)."""
    losses = []
    T = windows.shape[1]
    for start, logits, _ in runner.chunks(windows):
        n = logits.shape[1]
        targets = windows[:, start + 1 : start + n + 1]  # (B, ≤ n): the last position of the window has none
        logits = logits[:, : targets.shape[1]]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        losses.append(F.cross_entropy(logits.transpose(1, 2), targets, reduction="none"))
    out = torch.cat(losses, dim=1)
    assert out.shape[1] == T - 1
    return out


def bucket_means(losses: torch.Tensor, bucket_len: int) -> list[dict]:
    """Mean loss per bucket of target positions: bucket k holds tokens at positions [k·b, (k+1)·b) of the window
    (position 0 is never a target). losses: (B, T-1), entry t is the token at position t+1."""
    T = losses.shape[1] + 1
    positions = torch.arange(1, T)
    buckets = []
    for start in range(0, T, bucket_len):
        end = min(start + bucket_len, T)
        values = losses[:, (positions >= start) & (positions < end)].double()
        if values.numel():
            buckets.append({"start": start, "end": end, "tokens": values.numel(), "loss_sum": float(values.sum())})
    return buckets


def perplexity_by_position(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    config: PerplexityConfig,
    out_dir: str | os.PathLike,
    *,
    documents: Sequence[str] | None = None,
    source: str | None = None,
    label: str | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> dict:
    """Run (or resume) perplexity by position into `out_dir` and return the summary. `documents` default to the
    embedded corpus's held-out book; `source` names them in the summary."""
    if documents is None:
        book = held_out_book()
        documents, source = [book.text], source or f"embedded corpus: {book.name}"
    windows = make_windows(tokenizer, documents, config.max_len, config.windows)
    runner = ChunkedLM(model, config.chunk_len)
    cells = [f"window{i}" for i in range(len(windows))]

    def evaluate_cells(group: list[str]) -> list[list[dict]]:
        index = [cells.index(c) for c in group]
        batch = torch.tensor([windows[i] for i in index], device=runner.device)  # (B, T)
        losses = token_losses(runner, batch).cpu()
        return [
            [{"window": i, "tokens": len(windows[i]), "buckets": bucket_means(losses[b : b + 1], config.bucket_len)}]
            for b, i in enumerate(index)
        ]

    settings = {**dataclasses.asdict(config), "windows_used": len(windows), "source": source or "documents"}
    return run_grid(
        model,
        tokenizer,
        out_dir,
        task="perplexity",
        settings=settings,
        cells=cells,
        rows_per_cell=1,
        evaluate_cells=evaluate_cells,
        cells_per_call=batch_for(config.max_len, config.batch_size, config.batch_tokens),
        summarize=lambda rows: summarize_perplexity(rows, config.train_len),
        label=label,
        checkpoint=checkpoint,
    )


def summarize_perplexity(rows: Sequence[dict], train_len: int | None) -> dict:
    """Mean loss and perplexity per position bucket over all windows, and overall."""
    totals: dict[int, list[float]] = {}
    for row in rows:
        for b in row["buckets"]:
            entry = totals.setdefault(b["start"], [b["end"], 0.0, 0])
            entry[1] += b["loss_sum"]
            entry[2] += b["tokens"]
    buckets = [
        {"start": start, "end": end, "tokens": n, "mean_loss": s / n, "perplexity": math.exp(s / n)}
        for start, (end, s, n) in sorted(totals.items())
    ]
    loss_sum = sum(b["mean_loss"] * b["tokens"] for b in buckets)
    tokens = sum(b["tokens"] for b in buckets)
    return {
        "train_len": train_len,
        "windows": len(rows),
        "buckets": buckets,
        "overall": {"tokens": tokens, "mean_loss": loss_sum / tokens, "perplexity": math.exp(loss_sum / tokens)},
    }
