"""The passkey grid: lengths × depths × samples, batched across samples, chunked along the sequence, resumable."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from infini_llama.data.tokenizer import tokenizer_fingerprint
from infini_llama.eval.diagnostics import bucket_order, memory_off_layers, updates_bucket
from infini_llama.eval.grid import run_grid
from infini_llama.eval.inference import ChunkedLM, batch_for, equal_length_batches
from infini_llama.eval.passkey import (
    DEFAULT_KEY_DIGITS,
    GRID_SPLITS,
    LENGTH_UNITS,
    PasskeySample,
    make_passkey_sample,
    memory_updates,
)
from infini_llama.eval.prompts import HAYSTACKS, decode
from infini_llama.eval.scoring import clustered_proportion, key_totals, mean_and_stderr, passkey_scores, proportion
from infini_llama.layers.rope import check_rope_scaling


@dataclass
class PasskeyGridConfig:
    """One passkey grid. `lengths` are in tokens (characters with unit="chars"); `depths` are fractions of the
    filler before the needle; the same `samples` per-sample seeds are used in every cell. `segment_len` is the
    segment used to count memory updates between the key and the question (None: the model's `segment_len`, which
    our full-attention baseline also records, so both arms are bucketed alike). `haystack` is the filler kind
    (`prompts.HAYSTACKS`; "repeat" is the classic filler, "book" held-out text). `rope_scaling` (None: none) runs
    a full-attention model with RoPE scaled (`eval.rope_scaling`); each prompt is then read in one forward call,
    as `generate` reads a prompt, since dynamic scaling depends on the longest position of a call. `split`: "test"
    (the reported grid) or "validation" (the same design on other samples: keys, haystack positions), for choosing
    a recipe without looking at the test grid. `memory_off`: true closes every memory gate (the ablation), a list of
    layer indices closes those layers' only (what one layer's memory adds). `batch_size` prompts run together, or
    with `batch_tokens` as many as that many tokens hold at each length (speed only: neither changes a score)."""

    lengths: Sequence[int] = (256, 512, 1024)
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)
    samples: int = 16
    seed: int = 0
    key_digits: int = DEFAULT_KEY_DIGITS
    haystack: str = "repeat"
    unit: str = "tokens"
    bos: bool | None = None
    memory_off: bool | Sequence[int] = False
    rope_scaling: dict | None = None
    split: str = "test"
    segment_len: int | None = None
    batch_size: int = 8
    batch_tokens: int | None = None
    chunk_len: int | None = None
    progress: bool = True

    def __post_init__(self):
        self.lengths = tuple(int(n) for n in self.lengths)
        self.depths = tuple(float(d) for d in self.depths)
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"lengths must be one or more positive integers, got {self.lengths}")
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"depths must be fractions in [0, 1], got {self.depths}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        batch_for(1, self.batch_size, self.batch_tokens)  # checks batch_tokens
        if self.haystack not in HAYSTACKS:
            raise ValueError(f"haystack must be one of {HAYSTACKS}, got {self.haystack!r}")
        if self.unit not in LENGTH_UNITS:
            raise ValueError(f"unit must be one of {LENGTH_UNITS}, got {self.unit!r}")
        self.rope_scaling = check_rope_scaling(self.rope_scaling)
        layers = memory_off_layers(self.memory_off)
        self.memory_off = True if layers is None else (list(layers) or False)
        if self.split not in GRID_SPLITS:
            raise ValueError(f"split must be one of {tuple(GRID_SPLITS)}, got {self.split!r}")


def passkey_cell(length: int, depth: float) -> str:
    return f"L{length}|d{depth}"


# The prompts of the last grid run in this process, by (length, depth, sample), for the next grid of the same
# prompts: a study evaluates each haystack's prompts several times in a row (memory on and off, RoPE rows), and a
# prompt of 16,384 tokens takes tens of milliseconds to build. One grid's prompts are kept, never more.
_last_prompts: tuple[tuple, dict[tuple[int, float, int], PasskeySample]] = ((), {})


def _prompt_cache(
    tokenizer: PreTrainedTokenizerBase, config: PasskeyGridConfig, book_text: str | None
) -> dict[tuple[int, float, int], PasskeySample]:
    """The built prompts of the last grid if it had this one's prompts (everything they are built from but the
    length and depth, which key each prompt), else a new empty cache for this grid's."""
    global _last_prompts
    key = (tokenizer_fingerprint(tokenizer), config.seed, config.split, config.key_digits, config.haystack,
           config.unit, config.bos, book_text)  # fmt: skip
    if _last_prompts[0] != key:
        _last_prompts = (key, {})
    return _last_prompts[1]


def run_passkey_grid(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    config: PasskeyGridConfig,
    out_dir: str | os.PathLike,
    *,
    label: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    book_text: str | None = None,
) -> dict:
    """Run (or resume) the grid into `out_dir` (summary.json + samples.jsonl) and return the summary."""
    segment_len = config.segment_len or getattr(model.config, "segment_len", None)
    runner = ChunkedLM(model, max(config.lengths) if config.rope_scaling else config.chunk_len)
    cells = {passkey_cell(length, depth): (length, depth) for length in config.lengths for depth in config.depths}

    built = _prompt_cache(tokenizer, config, book_text)

    def sample(length: int, depth: float, index: int) -> PasskeySample:
        if (length, depth, index) not in built:
            built[length, depth, index] = make_passkey_sample(
                tokenizer,
                length,
                depth,
                seed=config.seed,
                index=index,
                stream=GRID_SPLITS[config.split],
                key_digits=config.key_digits,
                haystack=config.haystack,
                unit=config.unit,
                bos=config.bos,
                book_text=book_text,
            )
        return built[length, depth, index]

    def evaluate_cell(cell: str) -> list[dict]:
        length, depth = cells[cell]
        samples = [sample(length, depth, i) for i in range(config.samples)]
        return evaluate_passkey(runner, tokenizer, samples, config.batch_size, segment_len, config.batch_tokens)

    for length in config.lengths:  # fail before any work on a length the template does not fit in
        sample(length, 0.0, 0)
    return run_grid(
        model,
        tokenizer,
        out_dir,
        task="passkey",
        settings={**dataclasses.asdict(config), "segment_len": segment_len},
        cells=list(cells),
        rows_per_cell=config.samples,
        evaluate_cells=lambda group: [evaluate_cell(c) for c in group],
        summarize=lambda rows: summarize_passkey(rows, config.lengths, config.depths),
        label=label,
        checkpoint=checkpoint,
    )


def evaluate_passkey(
    runner: ChunkedLM,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[PasskeySample],
    batch_size: int,
    segment_len: int | None = None,
    batch_tokens: int | None = None,
) -> list[dict]:
    """Score samples in batches of equal prompt length (a grid's cells are all one length; nothing is padded),
    `batch_size` prompts each or as many as `batch_tokens` tokens hold, and return one row per sample, in order."""
    rows: list[dict] = [{} for _ in samples]
    for indices in equal_length_batches([len(s.input_ids) for s in samples], batch_size, batch_tokens):
        for i, row in zip(indices, _passkey_batch(runner, tokenizer, [samples[i] for i in indices]), strict=True):
            row["memory_updates"] = memory_updates(row["key_last_token"], row["prompt_tokens"], segment_len)
            rows[i] = row
    return rows


def _passkey_batch(runner: ChunkedLM, tokenizer: PreTrainedTokenizerBase, batch: list[PasskeySample]) -> list[dict]:
    device = runner.device
    ids = torch.tensor([s.input_ids for s in batch], device=device)  # (B, T)
    answer_len = max(len(s.answer_ids) for s in batch)
    # Shorter answers are padded at the end; under a causal model padding after a position cannot change it.
    targets = torch.tensor(
        [s.answer_ids + [s.answer_ids[-1]] * (answer_len - len(s.answer_ids)) for s in batch], device=device
    )  # (B, A)
    last, state = runner.prefill(ids)
    forced = runner.teacher_forced(last, runner.fork(state), targets)  # (B, A, V)
    forced = forced.to(torch.promote_types(forced.dtype, torch.float32))
    generated = runner.greedy(last, state, answer_len).tolist()
    log_probs = F.log_softmax(forced, dim=-1).gather(-1, targets[..., None])[..., 0]  # (B, A)
    hits = (forced.argmax(-1) == targets).float()
    rows = []
    for b, s in enumerate(batch):
        n = len(s.answer_ids)
        predicted = generated[b][:n]  # max_new_tokens = this sample's answer length
        prediction = tokenizer.decode(predicted, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        rows.append(
            {
                "length": s.length,
                "depth": s.depth,
                "sample": s.index,
                "seed": s.seed,
                "stream": s.stream,
                "key": s.key,
                "prompt_tokens": len(s.input_ids),
                "needle_position": s.needle_start,
                "needle_end": s.needle_end,
                "key_last_token": s.key_last_token,
                "haystack": s.haystack,
                "roundtrip": s.roundtrip,
                "prompt_sha256": hashlib.sha256(str(s.input_ids).encode()).hexdigest()[:16],
                "prediction": prediction,
                "predicted_ids": predicted,
                "answer_ids": s.answer_ids,
                "answer_text": decode(tokenizer, s.answer_ids),
                "answer_logprob": float(log_probs[b, :n].sum()),
                **passkey_scores(prediction, s.key, predicted, s.answer_ids, float(hits[b, :n].mean())),
            }
        )
    return rows


def summarize_passkey(rows: Sequence[dict], lengths: Sequence[int], depths: Sequence[float]) -> dict:
    """Accuracy per cell (exact, with Wilson intervals; token_exact, contains, digit_acc), per length, per
    number of memory updates (bucketed), per (length, number of memory updates) and overall. A sample index has
    the same key in every cell, so exact's interval is at the level of the key (`scoring.clustered_proportion`; in a
    cell, where every key appears once, it is the plain Wilson interval), and `key_totals` keeps each key's
    [hits, samples] so that groups can be pooled later without losing their clusters.

    The last but one separates two things a longer prompt brings at once: more compressions between the key and the
    question, and more text in the memory. Pooled over lengths, accuracy by memory updates mixes them."""

    def scores(group: Sequence[dict]) -> dict:
        totals = key_totals([r["exact"] for r in group], [r["sample"] for r in group])
        return {
            "n": len(group),
            "exact": {**clustered_proportion(totals), "key_totals": totals},
            "token_exact": proportion(sum(r["token_exact"] for r in group), len(group)),
            "contains": proportion(sum(r["contains"] for r in group), len(group)),
            "digit_acc": mean_and_stderr([r["digit_acc"] for r in group]),
        }

    cells = [
        {"length": length, "depth": depth, **scores([r for r in rows if r["length"] == length and r["depth"] == depth])}
        for length in lengths
        for depth in depths
    ]
    by_length = [{"length": length, **scores([r for r in rows if r["length"] == length])} for length in lengths]
    buckets: dict[str, list[dict]] = {}
    for r in rows:
        buckets.setdefault(updates_bucket(r["memory_updates"]), []).append(r)
    by_updates = [{"memory_updates": b, **scores(buckets[b])} for b in sorted(buckets, key=bucket_order)]
    by_length_and_updates = [
        {"length": length, "memory_updates": b, **scores(group)}
        for length in lengths
        for b in sorted(buckets, key=bucket_order)
        if b != "n/a" and (group := [r for r in buckets[b] if r["length"] == length])
    ]
    return {
        "cells": cells,
        "by_length": by_length,
        "by_memory_updates": by_updates,
        "by_length_and_memory_updates": by_length_and_updates,
        "overall": scores(rows),
    }
