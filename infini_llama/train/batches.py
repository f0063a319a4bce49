"""Where training batches come from: the BatchSource protocol and its default, token windows of a corpus.

A BatchSource is built for one process (it knows its rank) and is a pure function of (step, micro_step):
resuming at step i replays exactly the batches an uninterrupted run would have seen, and processes never
need to talk to each other about data.
"""

from __future__ import annotations

import copy
import multiprocessing
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from infini_llama.data import TokenData, WindowSampler, get_batch, validation_offsets

Batch = tuple[torch.Tensor, torch.Tensor]


@runtime_checkable
class BatchSource(Protocol):
    """Training and validation batches of one process.

    `batch(step, micro_step)` returns `(input_ids, labels)`, both LongTensor (B, T), for forward pass
    `micro_step` of optimizer step `step`. Labels are aligned with the inputs, as for a Hugging Face causal
    LM: the model predicts labels[:, t + 1] from input_ids[:, : t + 1]; -100 masks a position out of the
    loss (plain language modelling passes labels = input_ids). It must be a pure function of
    (step, micro_step) and the process's rank. `validation_batches()` yields the same batches every time it
    is called.

    Optionally, `state_dict()` returns JSON data describing the source; it is stored in checkpoints and a
    resumed run refuses a source whose description differs. A source that can be split anew has
    `split(batch_size, grad_accum)`, returning a source with the same sequences per step (and the same validation
    sequences) in `grad_accum` passes of `batch_size`: the trainer needs it for an automatic micro-batch
    (`infini_llama.train.microbatch`). A source whose batches cost CPU time worth taking
    off the training step's path sets `builds_slowly = True`: on CUDA the trainer then builds its batches ahead
    in worker processes by default (`TrainConfig.data_workers`). A source with a method of
    `loop.EXTRA_VALIDATIONS` has the trainer log the loss on its batches at each validation too: `copy_batches()`
    (batches like `validation_batches()`'s, whose loss only a model that looks back and copies brings far down)
    as `copy_loss`, `boundary_batches()` (answers written in a new segment: `PasskeyBatchSource`) as
    `boundary_loss`, `needle_boundary_batches()` (needles cut by a segment boundary) as `needle_boundary_loss`;
    one with `answer_token_validation()` (the validation batches, each with its training labels and a labelling
    per token of an answer) has its validation loss and the loss on each answer token (`answer_token_losses`)
    from one forward pass per batch.
    """

    def batch(self, step: int, micro_step: int) -> Batch: ...

    def validation_batches(self) -> Iterable[Batch]: ...


class TokenWindowSource:
    """Random windows of `seq_len` tokens from a tokenized corpus (`infini_llama.data.prepare_tokens`).

    Micro-step m of step s on rank r reads window block (s · grad_accum + m) of `WindowSampler`, so the
    windows of one optimizer step are the same set however they are split over processes and accumulation
    steps (batch_size × grad_accum × world_size fixed). Validation: the first `eval_windows` consecutive
    windows of the validation split (a multiple of world_size of them, shared out over the processes).

    `repeat_fraction` of the training windows (chosen by their global sample number, so the same whichever
    the split) hold their first half twice: the second half is a copy of the first, which only a model that
    looks back and copies predicts, as passkey retrieval asks (how much a small model learns of it in a short
    pretraining: reports/tiny-recipe-short/). Validation windows are never repeated; `copy_batches()` gives
    them repeated, to measure how well a model copies.
    """

    def __init__(
        self,
        data: TokenData,
        seq_len: int,
        batch_size: int,
        grad_accum: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        eval_windows: int = 32,
        repeat_fraction: float = 0.0,
    ) -> None:
        if not 0.0 <= repeat_fraction <= 1.0:
            raise ValueError(f"repeat_fraction must be in [0, 1], got {repeat_fraction!r}")
        self.data, self.seq_len, self.batch_size, self.grad_accum = data, seq_len, batch_size, grad_accum
        self.repeat_fraction = float(repeat_fraction)
        self.sampler = WindowSampler(
            data.num_train_tokens,
            seq_len,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        available = (data.num_validation_tokens - 1) // seq_len
        self.eval_windows = min(eval_windows, available) // world_size * world_size
        if self.eval_windows < 1:
            raise ValueError(
                f"the validation split has {data.num_validation_tokens} tokens, fewer than one window of "
                f"seq_len + 1 = {seq_len + 1} per process; use a shorter --seq-len or more validation data"
            )
        self.rank, self.world_size = rank, world_size

    def split(self, batch_size: int, grad_accum: int) -> TokenWindowSource:
        """The same windows per step in `grad_accum` passes of `batch_size`."""
        return split_source(self, batch_size, grad_accum)

    def reading(self, steps: int) -> str:
        """What `steps` optimizer steps read of the training split, in one line: a model of many parameters
        trained over many passes of a small corpus memorises it (its validation loss turns upward:
        reports/paper-h200-screen/, lease P)."""
        windows, per_step = self.sampler.num_windows, self.batch_size * self.grad_accum * self.world_size
        times = steps * per_step / windows
        return (f"{self.data.num_train_tokens:,} training tokens in {windows:,} windows of {self.seq_len:,}; "
                f"{steps:,} steps of {per_step:,} windows read them {times:.3g} times")  # fmt: skip

    def batch(self, step: int, micro_step: int) -> Batch:
        block = step * self.grad_accum + micro_step
        offsets = self.sampler.offsets(block, self.batch_size)
        input_ids, _ = get_batch(self.data.train, offsets, self.seq_len)
        if self.repeat_fraction:
            rows = torch.from_numpy(repeated(self.sampler.sample_ids(block, self.batch_size), self.repeat_fraction))
            half = (self.seq_len + 1) // 2
            input_ids[rows, half:] = input_ids[rows, : self.seq_len - half]
        return input_ids, input_ids.clone()

    def validation_batches(self) -> Iterator[Batch]:
        offsets = validation_offsets(
            self.data.num_validation_tokens,
            self.seq_len,
            rank=self.rank,
            world_size=self.world_size,
            max_windows=self.eval_windows,
        )
        for i in range(0, len(offsets), self.batch_size):
            input_ids, _ = get_batch(self.data.validation, offsets[i : i + self.batch_size], self.seq_len)
            yield input_ids, input_ids.clone()

    def copy_batches(self) -> Iterator[Batch]:
        """The validation windows with their first half twice (as `repeat_fraction`'s), labelled on the copied
        tokens that can be copied: every one after the first, whose predecessor appeared before it in the first
        half. A model that looks back `seq_len // 2` tokens and copies predicts them far better than plain text;
        one that does not scores about its validation loss (reports/tiny-recipe-short/, "Did pretraining teach
        copying?")."""
        half = (self.seq_len + 1) // 2
        for input_ids, _ in self.validation_batches():
            input_ids[:, half:] = input_ids[:, : self.seq_len - half]
            labels = input_ids.clone()
            labels[:, : half + 1] = -100
            yield input_ids, labels

    def state_dict(self) -> dict[str, Any]:
        """What fixes the batches of every step: the stream, the sampler and the sequences per step (not
        how they are split over processes and accumulation steps, which may change on resume)."""
        sampler = {k: v for k, v in self.sampler.state_dict().items() if k != "world_size"}
        state = {
            **sampler,
            "sequences_per_step": self.batch_size * self.grad_accum * self.world_size,
            "tokens": self.data.sources_fingerprint,
            "tokenizer": self.data.tokenizer_fingerprint,
        }
        if self.repeat_fraction:  # absent when 0, as in checkpoints written before the option existed
            state["repeat_fraction"] = self.repeat_fraction
        return state


GOLDEN = (5**0.5 - 1) / 2


def repeated(sample_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Which samples are repeated windows: those whose {g · golden ratio} falls below `fraction`, an evenly
    spread share of `fraction` of any run of consecutive global sample numbers g."""
    return np.mod(sample_ids * GOLDEN, 1.0) < fraction


def split_source(source, batch_size: int, grad_accum: int):
    """A copy of `source` (with `batch_size` and `grad_accum` attributes) split into `grad_accum` passes of
    `batch_size`; the sequences of a step on this process stay as many."""
    if batch_size * grad_accum != source.batch_size * source.grad_accum:
        raise ValueError(
            f"a split into {grad_accum} × {batch_size} sequences would change the step's "
            f"{source.batch_size * source.grad_accum} sequences on each process"
        )
    resplit = copy.copy(source)
    resplit.batch_size, resplit.grad_accum = batch_size, grad_accum
    return resplit


def count_targets(labels: torch.Tensor) -> int:
    """Positions that enter the loss: labels[:, 1:] (the model shifts) that are not -100."""
    return int((labels[:, 1:] != -100).sum())


class PrefetchedBatches:
    """The batches of a BatchSource, built ahead of the training step by `workers` processes.

    Building a batch can cost more CPU time than the GPU spends on it (passkey prompts are tokenized piece by
    piece), and the step would wait for it. Since a source is a pure function of (step, micro_step), worker
    processes can build the next `depth` steps' batches while the current one trains, and the batches are the
    same as without them. Each worker receives the source once (it must pickle); with `workers` = 0 batches are
    built in this process when asked for. `batches(step)` returns the micro-batches of `step`; steps are asked
    for in increasing order (a resumed run starts anywhere). `prefetch(step)` starts the workers on the steps from
    `step` on without waiting for them: a trainer calls it before it builds and compiles its model, so that the
    workers' start (`_worker_context`) and the first batches are not waited for in the first steps. Close it (or
    use it as a context manager) to stop the workers.
    """

    def __init__(
        self,
        source: BatchSource,
        grad_accum: int,
        workers: int = 0,
        depth: int | None = None,
        *,
        start_method: str | None = None,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.source, self.grad_accum = source, grad_accum
        self.depth = max(1, depth if depth is not None else 2 * workers)
        self.pending: dict[int, list[Future]] = {}
        self.pool = None
        if workers:
            self.pool = ProcessPoolExecutor(
                workers, mp_context=_worker_context(source, start_method), initializer=_set_source, initargs=(source,)
            )

    def prefetch(self, step: int) -> None:
        """Have the workers build the batches of steps `step` to `step` + depth - 1 (those not asked for yet), and
        drop those of earlier steps; returns at once. Nothing without workers."""
        if self.pool is None:
            return
        for stale in [s for s in self.pending if s < step]:  # a step skipped by the caller: drop its batches
            for future in self.pending.pop(stale):
                future.cancel()
        for ahead in range(step, step + self.depth):
            if ahead not in self.pending:
                self.pending[ahead] = [self.pool.submit(_source_batch, ahead, m) for m in range(self.grad_accum)]

    def batches(self, step: int) -> list[Batch]:
        if self.pool is None:
            return [self.source.batch(step, m) for m in range(self.grad_accum)]
        self.prefetch(step)
        return [future.result() for future in self.pending.pop(step)]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool, self.pending = None, {}

    def __enter__(self) -> PrefetchedBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _worker_context(source: BatchSource, method: str | None = None) -> multiprocessing.context.BaseContext:
    """How worker processes start (`method`: None for the default, "forkserver" or "spawn"). Not forked from the
    training process, which may hold CUDA and threads that a forked child must not inherit. Spawned, each worker
    is a new Python that imports torch and transformers (about 5 s of CPU each, far more while the trainer
    compiles beside it); from a fork server, which imports the source's module once and forks a worker from itself
    for each process asked for, they start at once (benchmarks/bench_data_workers.py). The default is the fork
    server, or spawn where there is none (Windows)."""
    if method is None:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    if method not in ("forkserver", "spawn"):
        raise ValueError(f"start_method must be 'forkserver' or 'spawn' (None: the default), got {method!r}")
    context = multiprocessing.get_context(method)
    if method == "spawn":
        return context
    context.set_forkserver_preload([type(source).__module__])  # read when the server starts: the first pool
    return context


_WORKER_SOURCE: BatchSource | None = None


def _set_source(source: BatchSource) -> None:
    global _WORKER_SOURCE
    torch.set_num_threads(1)
    _WORKER_SOURCE = source


def _source_batch(step: int, micro_step: int) -> Batch:
    assert _WORKER_SOURCE is not None, "a prefetch worker without its source"
    return _WORKER_SOURCE.batch(step, micro_step)
