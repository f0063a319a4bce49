"""Multi-needle retrieval (RULER style): several "special magic number" needles in one token-exact haystack.

Tasks: multikey (needles with different keys, one is asked for, the others distract), multivalue (one key with
several values, all are asked for), multiquery (several keys, all are asked for). Keys are adjective-noun pairs
from the word list shipped with the package; values have 7 digits; needles sit at distinct depths of a grid,
between filler sentences. Score: the fraction of expected values found, case-insensitively, in the greedy
output (≤ 128 new tokens by default).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from infini_llama.eval.grid import run_grid
from infini_llama.eval.inference import ChunkedLM, batch_for, equal_length_batches
from infini_llama.eval.passkey import EVAL_STREAM, draw_key, memory_updates, sample_seed
from infini_llama.eval.prompts import HAYSTACKS, Haystack, build_prompt, last_token_of
from infini_llama.eval.scoring import mean_and_stderr, proportion, string_match_all

MULTI_TASKS = ("multikey", "multivalue", "multiquery")
TASK = (
    "Some special magic numbers are hidden in the long text below, among many sentences that do not matter. "
    "Memorise them: you will be asked about them at the end."
)
NEEDLE = " One of the special magic numbers for {key} is: {value}."
QUESTION = (
    " What are all the special magic numbers for {keys} mentioned in the text?"
    " The special magic numbers for {keys} are:"
)


@functools.lru_cache(maxsize=1)
def needle_keys() -> tuple[str, ...]:
    """The shipped word list: adjective-noun pairs, one per line."""
    text = resources.files("infini_llama.eval").joinpath("needle_keys.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def join_keys(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


@dataclass(frozen=True)
class Needle:
    key: str
    value: str
    depth: float
    start: int
    end: int
    value_last_token: int  # the last token of the value: where the memory updates before the question count from


@dataclass(frozen=True)
class MultiNeedleSample:
    """One prompt; `queried` keys are asked for and `expected` values must all appear in the answer."""

    input_ids: list[int]
    task: str
    length: int
    seed: int
    index: int
    needles: list[Needle]
    queried: list[str]
    expected: list[str]
    roundtrip: bool
    text: str


def make_multineedle_sample(
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    length: int,
    *,
    seed: int = 0,
    index: int = 0,
    num_needles: int = 4,
    value_digits: int = 7,
    depth_grid: int = 11,
    haystack: str = "repeat",
    bos: bool | None = None,
    book_text: str | None = None,
) -> MultiNeedleSample:
    """Sample `index` of `task` at `length` tokens; needles at `num_needles` distinct depths drawn from the grid
    0, 1/(depth_grid-1), …, 1. The same (seed, index) gives the same keys, values and depths at every length."""
    if task not in MULTI_TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {MULTI_TASKS}")
    if not 1 <= num_needles <= depth_grid:
        raise ValueError(f"num_needles must be between 1 and depth_grid ({depth_grid}), got {num_needles}")
    if depth_grid < 2:
        raise ValueError(f"depth_grid must be >= 2 grid points, got {depth_grid}")
    sample = sample_seed(EVAL_STREAM, seed, index)  # keys, values, depths and haystack: each its own generator
    words = needle_keys()
    distinct_keys = 1 if task == "multivalue" else num_needles
    keys = [words[i] for i in sample.rng("key").choice(len(words), size=distinct_keys, replace=False)]
    values: list[str] = []
    value_rng = sample.rng("needles")
    while len(values) < num_needles:
        value = draw_key(value_rng, value_digits)
        if value not in values:
            values.append(value)
    depth_rng = sample.rng("depth")
    depths = sorted(float(d) / (depth_grid - 1) for d in depth_rng.choice(depth_grid, size=num_needles, replace=False))
    order = depth_rng.permutation(num_needles)  # which needle sits at which depth
    owners = [keys[0] if task == "multivalue" else keys[i] for i in range(num_needles)]
    placed = [(depths[int(order[i])], owners[i], values[i]) for i in range(num_needles)]
    queried = keys[:1] if task in ("multikey", "multivalue") else keys
    expected = [v for _, k, v in placed if k in queried]
    question = QUESTION.format(keys=join_keys(queried))
    prompt = build_prompt(
        tokenizer,
        length,
        task=TASK,
        question=question,
        bos=bos,
        needles=[(d, NEEDLE.format(key=k, value=v)) for d, k, v in placed],
        haystack=Haystack(tokenizer, haystack, sample, book_text=book_text),
    )
    needles = [
        Needle(k, v, d, *span, last_token_of(tokenizer, prompt.input_ids, *span, v))
        for (d, k, v), span in zip(placed, prompt.needle_spans, strict=True)
    ]
    return MultiNeedleSample(
        prompt.input_ids, task, length, seed, index, needles, queried, expected, prompt.roundtrip, prompt.text
    )


@dataclass
class MultiNeedleConfig:
    """A multi-needle grid: tasks × lengths (tokens) × samples, same per-sample seeds in every cell; `batch_size`
    samples run together, or with `batch_tokens` as many as that many tokens hold at each length."""

    tasks: Sequence[str] = MULTI_TASKS
    lengths: Sequence[int] = (256, 512, 1024)
    samples: int = 16
    seed: int = 0
    num_needles: int = 4
    value_digits: int = 7
    depth_grid: int = 11
    max_new_tokens: int = 128
    haystack: str = "repeat"
    bos: bool | None = None
    memory_off: bool | Sequence[int] = False  # true: every layer; layer indices: those layers only
    segment_len: int | None = None
    batch_size: int = 8
    batch_tokens: int | None = None
    chunk_len: int | None = None
    progress: bool = True

    def __post_init__(self):
        self.tasks = tuple(self.tasks)
        self.lengths = tuple(int(n) for n in self.lengths)
        unknown = [t for t in self.tasks if t not in MULTI_TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"unknown task(s) {unknown}; choose from {MULTI_TASKS}")
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"lengths must be one or more positive integers, got {self.lengths}")
        for name in ("samples", "num_needles", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.haystack not in HAYSTACKS:
            raise ValueError(f"haystack must be one of {HAYSTACKS}, got {self.haystack!r}")
        batch_for(1, self.batch_size, self.batch_tokens)  # checks batch_tokens


def run_multineedle_grid(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    config: MultiNeedleConfig,
    out_dir: str | os.PathLike,
    *,
    label: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    book_text: str | None = None,
) -> dict:
    """Run (or resume) the grid into `out_dir` (summary.json + samples.jsonl) and return the summary."""
    segment_len = config.segment_len or getattr(model.config, "segment_len", None)
    runner = ChunkedLM(model, config.chunk_len)
    cells = {f"{task}|L{length}": (task, length) for task in config.tasks for length in config.lengths}

    def sample(task: str, length: int, index: int) -> MultiNeedleSample:
        return make_multineedle_sample(
            tokenizer,
            task,
            length,
            seed=config.seed,
            index=index,
            num_needles=config.num_needles,
            value_digits=config.value_digits,
            depth_grid=config.depth_grid,
            haystack=config.haystack,
            bos=config.bos,
            book_text=book_text,
        )

    def evaluate_cell(cell: str) -> list[dict]:
        task, length = cells[cell]
        samples = [sample(task, length, i) for i in range(config.samples)]
        return evaluate_multineedle(
            runner, tokenizer, samples, config.batch_size, config.max_new_tokens, segment_len, config.batch_tokens
        )

    for task in config.tasks:  # fail before any work on a length the template does not fit in
        for length in config.lengths:
            sample(task, length, 0)
    return run_grid(
        model,
        tokenizer,
        out_dir,
        task="multineedle",
        settings={**dataclasses.asdict(config), "segment_len": segment_len},
        cells=list(cells),
        rows_per_cell=config.samples,
        evaluate_cells=lambda group: [evaluate_cell(c) for c in group],
        summarize=lambda rows: summarize_multineedle(rows, config.tasks, config.lengths),
        label=label,
        checkpoint=checkpoint,
    )


def evaluate_multineedle(
    runner: ChunkedLM,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[MultiNeedleSample],
    batch_size: int,
    max_new_tokens: int = 128,
    segment_len: int | None = None,
    batch_tokens: int | None = None,
) -> list[dict]:
    """Greedy answers (stopped at EOS, ≤ `max_new_tokens`) scored by string match all; one row per sample."""
    rows: list[dict] = [{} for _ in samples]
    eos = tokenizer.eos_token_id
    for indices in equal_length_batches([len(s.input_ids) for s in samples], batch_size, batch_tokens):
        ids = torch.tensor([samples[i].input_ids for i in indices], device=runner.device)  # (B, T)
        last, state = runner.prefill(ids)
        generated = runner.greedy(last, state, max_new_tokens, eos_token_id=eos).tolist()
        for i, out in zip(indices, generated, strict=True):
            s = samples[i]
            out = out[: out.index(eos)] if eos in out else out
            prediction = tokenizer.decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            score = string_match_all(prediction, s.expected)
            rows[i] = {
                "task": s.task,
                "length": s.length,
                "sample": s.index,
                "seed": s.seed,
                "prompt_tokens": len(s.input_ids),
                "roundtrip": s.roundtrip,
                "queried": s.queried,
                "expected": s.expected,
                "prediction": prediction,
                "score": score,
                "all_found": score == 1.0,
                "needles": [
                    {
                        **dataclasses.asdict(n),
                        "queried": n.key in s.queried,
                        "memory_updates": memory_updates(n.value_last_token, len(s.input_ids), segment_len),
                    }
                    for n in s.needles
                ],
            }
    return rows


def summarize_multineedle(rows: Sequence[dict], tasks: Sequence[str], lengths: Sequence[int]) -> dict:
    """Mean score (± standard error) and the share of samples with every value found, per cell and per task."""

    def scores(group: Sequence[dict]) -> dict:
        return {
            "n": len(group),
            "score": mean_and_stderr([r["score"] for r in group]),
            "all_found": proportion(sum(r["all_found"] for r in group), len(group)),
        }

    cells = [
        {"task": task, "length": length, **scores([r for r in rows if r["task"] == task and r["length"] == length])}
        for task in tasks
        for length in lengths
    ]
    by_task = [{"task": task, **scores([r for r in rows if r["task"] == task])} for task in tasks]
    return {"cells": cells, "by_task": by_task, "overall": scores(rows)}
