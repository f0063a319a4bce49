"""The training loop shared by both arms: `train(cfg) -> TrainResult`."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from infini_llama.layers import gate_value
from infini_llama.models import InfiniLlamaForCausalLM, causal_lm_loss
from infini_llama.train import checkpoint as ckpt
from infini_llama.train.batches import Batch, BatchSource, PrefetchedBatches, count_targets
from infini_llama.train.compile import compile_decoder_layers, compile_loss, eager_layers, warn_evaluation_falls_back
from infini_llama.train.config import TrainConfig, config_dict
from infini_llama.train.distributed import (
    all_reduce_sum,
    any_process,
    barrier,
    close_distributed,
    full_state_dicts,
    full_tensor,
    gather_objects,
    gradient_sync,
    init_distributed,
    load_full_optimizer_state,
    unwrap,
    wrap_model,
)
from infini_llama.train.faults import NonFiniteGuard, RunError, check_token_ids
from infini_llama.train.metrics import MetricsLogger, StatusLines, Throughput, flops_per_token, open_logger, peak_flops
from infini_llama.train.microbatch import halved
from infini_llama.train.optim import build_optimizer, build_scheduler
from infini_llama.train.rundir import FINAL_DIR, RUN_FILE, clear_run_dir, environment, write_json_atomically
from infini_llama.train.setup import ConfigError, RunPlan, model_fields, plan_run
from infini_llama.train.signals import StopRequest, stop_on_signals

# The parts of `TrainResult.seconds`, in the order a run spends them, with their names in reports.
TIME_PARTS = {"setup": "setup", "first_step": "first step", "steps": "other steps", "validation": "validations",
              "checkpoints": "checkpoints", "final": "final model"}  # fmt: skip


def time_line(seconds: dict[str, float]) -> str:
    """`TrainResult.seconds` in one line, as the commands print it at the end."""
    return "time: " + ", ".join(f"{label} {seconds.get(part, 0.0):.0f} s" for part, label in TIME_PARTS.items())


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a GPU's; nothing to wait for elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Validations a batch source may add to its validation loss, each a method giving batches like
# `validation_batches()`: the metric it is logged as, the method, and how the progress line names it.
EXTRA_VALIDATIONS = {
    "copy_loss": ("copy_batches", "on copied text"),  # text windows with a half repeated (TokenWindowSource)
    "boundary_loss": ("boundary_batches", "answers at a segment boundary"),  # PasskeyBatchSource
    "needle_boundary_loss": ("needle_boundary_batches", "needles cut by a segment boundary"),  # PasskeyBatchSource
}


@dataclass
class TrainResult:
    """What a `train` call did. `losses` maps each optimizer step run by this call (1-based: the update it
    produced) to its training loss; `final_dir` is None when the run stopped early on a signal."""

    run_dir: Path
    step: int
    losses: dict[int, float] = field(default_factory=dict)
    val_loss: float | None = None
    copy_loss: float | None = None  # the last validation's on copied text (a source with `copy_batches`)
    tokens_per_s: float | None = None
    checkpoint: Path | None = None
    final_dir: Path | None = None
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM" when interrupted
    skipped_steps: list[int] = field(default_factory=list)  # non-finite loss or gradient: no update made
    # Where a finished call's time went, in seconds: "setup" (folder, batch workers, model, optimizer, resume),
    # "first_step" (compilation, the first batch), "validation", "checkpoints", "final" (the final model) and "steps"
    # (the others, and the rest of the loop).
    seconds: dict[str, float] = field(default_factory=dict)


def train(
    cfg: TrainConfig,
    *,
    batches: BatchSource | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> TrainResult:
    """Train (or, with `cfg.resume`, continue) the run `cfg` describes; see the package docstring.

    Raises ConfigError (a ValueError) before writing anything if a setting or input cannot work; RunError
    if the run has to stop part-way (too many non-finite steps in a row, a batch with ids outside the
    vocabulary, a full disk), leaving every checkpoint written before as it was; CheckpointError if the
    checkpoint to resume from holds something other than tensors and plain data.
    """
    try:
        info = init_distributed(cfg.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        with hf_progress_bars_off():  # per-file bars of loading and saving would break the training bar
            plan = plan_run(cfg, info, batches=batches, tokenizer=tokenizer)
            with deterministic_kernels(cfg.deterministic), tf32_matmuls(uses_tf32(plan)):
                return _Trainer(plan).run()
    finally:
        close_distributed(info)


@contextlib.contextmanager
def hf_progress_bars_off() -> Iterator[None]:
    """Transformers' own progress bars (loading and writing weights) off inside the block, as they were after."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """With `enabled`, only deterministic kernels inside the block; PyTorch's settings are restored after it.

    On CUDA flash attention's backward otherwise sums dQ over key blocks with atomics, in a different order each run
    (long full-attention rows; the Infini arm's short segments fit one block), and cuBLAS needs a fixed workspace
    (CUBLAS_WORKSPACE_CONFIG, read when the process first uses cuBLAS, which a fresh process does in this block).
    An op with no deterministic kernel raises.
    """
    if not enabled:
        yield
        return
    was = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)  # fmt: skip
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = was[2], was[3]


def uses_tf32(plan: RunPlan) -> bool:
    """Whether the run lets float32 matmuls use TF32: under bf16 autocast on CUDA, where the only float32 matmuls
    left are the memory op's (its state stays float32). TF32 inputs keep 3 more mantissa bits than the bf16 of every
    other matmul, accumulate in float32, and run on the tensor cores instead of at the float32 rate, about 8x
    slower."""
    return plan.precision == "bf16" and plan.info.device.type == "cuda"


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """With `enabled`, CUDA float32 matmuls may use TF32 inside the block; PyTorch's settings are restored after it,
    so an evaluation run later in the same process (a study reuses its worker processes) computes in the float32 it
    states, whatever ran before it."""
    if not enabled:
        yield
        return
    was = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        # The precision first: setting it also sets the matmul flag, which then gets its own value back.
        torch.set_float32_matmul_precision(was[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = was[1], was[2]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # all CUDA devices too


class _StepStats(NamedTuple):
    loss: torch.Tensor  # mean over every target token of the step, all processes (on the device)
    grad_norm: torch.Tensor  # before clipping
    tokens: int  # input tokens of the step, all processes
    lr: float  # learning rate of the step (gate group: gate_lr)
    gate_lr: float | None
    finite: bool  # False: loss or gradient not finite, no update made


def summed_loss(
    model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, loss_fn=causal_lm_loss
) -> torch.Tensor:
    """The summed next-token loss of one batch (`loss_fn` takes the logits, the labels and reduction="sum").

    Where at most half of the positions are targets (passkey fine-tuning on the answers), the output layer and the
    loss run at the targets only: the same sum, without the logits of every other position. Which path is decided
    on the labels where they are (a batch's labels stay on the host until here: no wait for the device).
    """
    return summed_losses(model, input_ids, [labels], loss_fn)[0]


def summed_losses(
    model: nn.Module, input_ids: torch.Tensor, labellings: list[torch.Tensor], loss_fn=causal_lm_loss
) -> torch.Tensor:
    """`summed_loss` of one batch under each of several labellings, from one forward pass: a tensor (len(labellings),).
    The output layer runs where any labelling has a target, or everywhere where more than half the positions are."""
    device = input_ids.device
    targets = [labels[:, 1:] != -100 for labels in labellings]
    anywhere = functools.reduce(torch.logical_or, targets)
    if 2 * int(anywhere.sum()) > anywhere.numel():
        logits = model(input_ids=input_ids, use_cache=False).logits
        return torch.stack([loss_fn(logits, labels.to(device), reduction="sum") for labels in labellings])
    at = nn.functional.pad(anywhere, (0, 1)).to(device)  # the logits at t predict labels[t + 1]
    logits = model(input_ids=input_ids, use_cache=False, logits_at=at).logits  # (positions where `anywhere`, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    losses = []
    for labels, mine in zip(labellings, targets, strict=True):
        at_mine = logits if mine is anywhere else logits[mine[anywhere].to(device)]
        losses.append(nn.functional.cross_entropy(at_mine, labels[:, 1:][mine].to(device), reduction="sum"))
    return torch.stack(losses)


class _Trainer:
    def __init__(self, plan: RunPlan) -> None:
        self.plan, self.cfg, self.info = plan, plan.cfg, plan.info
        self.device = plan.info.device
        bf16 = plan.precision == "bf16"
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else None
        self.loss_fn = causal_lm_loss  # compiled by _build_model when compiling
        self.eval_eagerly = False  # set when the compiled model failed in evaluation

    # ------------------------------------------------------------------ setup
    def _prepare_folder(self) -> None:
        plan = self.plan
        if self.info.is_main:
            if plan.mode == "overwrite":
                clear_run_dir(plan.run_dir)
            plan.run_dir.mkdir(parents=True, exist_ok=True)
            for folder in (plan.run_dir, plan.run_dir / ckpt.CHECKPOINTS):  # final/ and run.json; checkpoints
                ckpt.recover_interrupted_writes(folder)
            if plan.mode != "resume" or not (plan.run_dir / RUN_FILE).is_file():
                write_json_atomically(
                    plan.run_dir / RUN_FILE,
                    {
                        "train": config_dict(self.cfg),
                        "model": model_fields(plan.model_config),
                        "world_size": self.info.world_size,
                        "grad_accum": plan.grad_accum,
                        "micro_batch": plan.micro_batch,
                        "precision": plan.precision,
                        "data": plan.source.state_dict() if hasattr(plan.source, "state_dict") else None,
                        "env": environment(self.device, self.info.world_size),
                    },
                )
        barrier(self.info)

    def _build_model(self) -> InfiniLlamaForCausalLM:
        plan, cfg = self.plan, self.cfg
        seed_everything(cfg.seed)
        # Weights only ever come from safetensors: a pickled weights file could run code when loaded.
        if plan.checkpoint is not None:
            model = ckpt.load_weights(plan.checkpoint, dtype=torch.float32)
        elif cfg.init_from is not None:
            model = ckpt.load_weights(cfg.init_from, config=plan.model_config, dtype=torch.float32)
        else:
            model = InfiniLlamaForCausalLM(plan.model_config)
        model.to(self.device).train()
        if cfg.checkpointing:
            # renamed in recent transformers; older ones (e.g. 5.17) only have the gradient_ name
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if plan.compile:
            autocast_dtype = torch.bfloat16 if plan.precision == "bf16" else None
            compile_decoder_layers(model.model.layers, cfg.batch_size, cfg.seq_len, autocast_dtype=autocast_dtype)
            self.loss_fn = compile_loss(
                cfg.batch_size, cfg.seq_len, model.config.vocab_size, self.device, autocast_dtype=autocast_dtype
            )
        return model

    # ------------------------------------------------------------------ steps
    def _forward_loss(
        self, model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, loss_fn=None
    ) -> torch.Tensor:
        with self.autocast or contextlib.nullcontext():
            return summed_loss(model, input_ids.to(self.device), labels, loss_fn or self.loss_fn)

    def _train_step(self, step: int) -> _StepStats:
        """One optimizer step on the batches of `step`, or none if its loss or gradient is not finite. Where an
        automatic micro-batch runs out of GPU memory, it is halved and the step done again from its start."""
        while (accumulated := self._accumulate(step)) is None:
            self._halve_micro_batch(step)
        micro, targets, total = accumulated
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        loss = all_reduce_sum(total, self.info) / targets
        lrs = {group.get("name"): group["lr"] for group in self.optimizer.param_groups}
        # One wait for the device per step: whether to update must be known before updating. The loss is
        # summed over processes and the norm is global, so every process decides alike.
        finite = bool(torch.isfinite(torch.stack([loss.float(), grad_norm.float().to(loss.device)])).all())
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()  # also after a skipped step: the LR stays a function of the step number
        return _StepStats(
            loss=loss,
            grad_norm=grad_norm,
            tokens=sum(input_ids.numel() for input_ids, _ in micro) * self.info.world_size,
            lr=lrs["decay"],
            gate_lr=lrs.get("gates"),
            finite=finite,
        )

    def _accumulate(self, step: int) -> tuple[list[Batch], float, torch.Tensor] | None:
        """Forward and backward passes over the batches of `step`, their gradients summed into the parameters':
        (the batches, the step's target tokens on all processes, the summed loss on this process). None, with
        the gradients cleared, where the GPU ran out of memory and the micro-batch can be halved."""
        micro = self.ahead.batches(step)
        for m, (input_ids, labels) in enumerate(micro):
            check_token_ids(input_ids, labels, self.plan.model_config.vocab_size, f"batch {m} of step {step + 1}")
        targets = torch.tensor(
            float(sum(count_targets(labels) for _, labels in micro)), dtype=torch.float64, device=self.device
        )
        targets = float(all_reduce_sum(targets, self.info).item())
        if targets == 0:
            raise ValueError(f"step {step} has no target tokens: every label of its batches is -100")
        # Gradients of the summed loss / all targets of the step; DDP and FSDP average over processes.
        scale = self.info.world_size / targets
        total = torch.zeros((), device=self.device)
        try:
            for m, (input_ids, labels) in enumerate(micro):
                with gradient_sync(self.wrapped, enabled=m == len(micro) - 1):
                    loss_sum = self._forward_loss(self.wrapped, input_ids, labels)
                    (loss_sum * scale).backward()
                total += loss_sum.detach()
        except torch.OutOfMemoryError as exc:
            refusal = self._cannot_halve(step)
            if refusal:
                raise RunError(refusal) from exc
        else:
            return micro, targets, total
        # Out of the except block, so that the traceback no longer holds the failed pass's activations.
        self.optimizer.zero_grad(set_to_none=True)
        return None

    def _cannot_halve(self, step: int) -> str | None:
        """Why the micro-batch cannot be halved after running out of memory in `step` (None: it can)."""
        cfg, world_size = self.cfg, self.info.world_size
        size = f"{cfg.batch_size} × {cfg.seq_len} tokens per forward pass"
        if self.plan.micro_batch is None:
            return (
                f"out of GPU memory in step {step + 1} with batch_size {cfg.batch_size} as given (--batch-size; "
                f"{size}): pass a smaller --batch-size, or leave it out (with --global-batch) for the largest "
                "micro-batch that fits, or add --checkpointing"
            )
        smaller = halved(cfg.batch_size, cfg.batch_size * self.plan.grad_accum)
        if smaller is None:
            return (
                f"out of GPU memory in step {step + 1} with one sequence of {cfg.seq_len} tokens per forward pass: "
                "add --checkpointing, or train on shorter sequences (--seq-len) or a larger GPU"
            )
        if world_size > 1:
            return (
                f"out of GPU memory in step {step + 1} at the automatic micro-batch ({size}); with {world_size} "
                f"processes it cannot be halved part-way: start again with --batch-size {smaller}"
            )
        return None

    def _halve_micro_batch(self, step: int) -> None:
        """Split the steps into passes of half as many sequences (the next candidate; the same sequences per step),
        after `step` ran out of memory: the batch source and its workers anew, the change in the run's log,
        metrics.jsonl and run.json."""
        plan, old = self.plan, self.cfg.batch_size
        per_process = old * plan.grad_accum
        new = halved(old, per_process)
        self.ahead.close()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.cfg = plan.cfg = dataclasses.replace(self.cfg, batch_size=new)  # checkpoints record the new split
        plan.grad_accum = per_process // new
        plan.source = plan.source.split(new, plan.grad_accum)
        self.ahead = PrefetchedBatches(plan.source, plan.grad_accum, plan.data_workers)
        change = {"step": step + 1, "from": old, "to": new, "grad_accum": plan.grad_accum}
        plan.micro_batch.setdefault("changes", []).append(change)
        note = (
            f"out of GPU memory in step {step + 1}: micro-batch {old} -> {new} sequences ({plan.grad_accum} passes "
            "per step), the step starts over"
        )
        self.logger.log({"kind": "event", "step": step + 1, "event": note, "batch_size": new,
                         "grad_accum": plan.grad_accum})  # fmt: skip
        if self.info.is_main:
            tqdm.write(note)
            run_file = plan.run_dir / RUN_FILE
            write_json_atomically(run_file, {**json.loads(run_file.read_text()), "micro_batch": plan.micro_batch})

    def evaluate(self, batches: Callable[[], Iterable[Batch]] | None = None) -> float:
        """Mean validation loss per target token over every process's validation batches (those `batches()`
        yields; the source's `validation_batches` by default); NaN where they hold no target."""
        batches = batches or self.plan.source.validation_batches
        return self.evaluate_labellings(lambda: ((input_ids, [labels]) for input_ids, labels in batches()))[0]

    @torch.no_grad()
    def evaluate_labellings(
        self, batches: Callable[[], Iterable[tuple[torch.Tensor, list[torch.Tensor]]]]
    ) -> list[float]:
        """`evaluate` of batches that each hold their sequences once and several labellings of them (all batches
        as many): the mean loss under each labelling, from one forward pass per batch.

        Compiled layers build their evaluation graphs (no grad, validation shapes) here, outside the up-front
        probe of `compile_decoder_layers`: if that fails, evaluation runs eagerly from then on, with a warning.
        """
        model = unwrap(self.wrapped)
        if self.plan.compile and not self.eval_eagerly:
            try:
                return self._evaluate(model, batches())
            except Exception as exc:  # noqa: BLE001 - a compiler failure must not end the run; others recur below
                self.eval_eagerly = True
                warn_evaluation_falls_back(exc)
        with eager_layers(model.model.layers) if self.plan.compile else contextlib.nullcontext():
            return self._evaluate(model, batches(), causal_lm_loss if self.plan.compile else None)

    def _evaluate(
        self, model: InfiniLlamaForCausalLM, batches: Iterable[tuple[torch.Tensor, list[torch.Tensor]]], loss_fn=None
    ) -> list[float]:
        model.eval()
        sums = None
        try:
            for input_ids, labellings in batches:
                for labels in labellings:
                    check_token_ids(input_ids, labels, self.plan.model_config.vocab_size, "a validation batch")
                if sums is None:  # (labellings, loss and targets)
                    sums = torch.zeros(len(labellings), 2, dtype=torch.float64, device=self.device)
                with self.autocast or contextlib.nullcontext():
                    losses = summed_losses(model, input_ids.to(self.device), labellings, loss_fn or self.loss_fn)
                sums[:, 0] += losses.double()
                sums[:, 1] += torch.tensor([count_targets(labels) for labels in labellings], device=self.device)
        finally:
            model.train()
        if sums is None:  # no batches: one labelling, no target (every process reduces alike)
            sums = torch.zeros(1, 2, dtype=torch.float64, device=self.device)
        totals = all_reduce_sum(sums, self.info).tolist()
        return [total / count if count else float("nan") for total, count in totals]

    def gate_values(self) -> list[list[float]] | None:
        """g = act(β) per layer and head (a collective under FSDP2: every process calls it)."""
        config = self.plan.model_config
        if config.attention != "infini":
            return None
        rows = []
        for layer in self.model.model.layers:
            beta = full_tensor(layer.self_attn.memory_gate.detach()).float().cpu()
            rows.append([round(g, 6) for g in gate_value(beta, config.gate_activation).tolist()])
        return rows

    # ------------------------------------------------------------------ checkpoints
    def _save_hf(self, folder: Path, model_state: dict) -> None:
        self.model.save_pretrained(folder, state_dict=model_state)
        self.plan.tokenizer.save_pretrained(folder)

    def save_checkpoint(self, step: int, tokens: int) -> Path:
        model_state, optim_state = full_state_dicts(self.wrapped, self.optimizer)
        rng_states = gather_objects(ckpt.capture_rng(self.device), self.info)
        path = ckpt.checkpoint_path(self.plan.run_dir, step)
        if self.info.is_main:
            source = self.plan.source
            state = {
                "step": step,
                "tokens": tokens,
                "scheduler": self.scheduler.state_dict(),
                "data": source.state_dict() if hasattr(source, "state_dict") else None,
                "world_size": self.info.world_size,
                "train_config": config_dict(self.cfg),
                "model_config": model_fields(self.plan.model_config),
                "non_finite": self.guard.state_dict(),  # a run of bad steps goes on counting after a resume
            }
            ckpt.save_checkpoint(
                path,
                save_model=lambda folder: self._save_hf(folder, model_state),
                optimizer_state=optim_state,
                trainer_state=state,
                rng_states=rng_states,
            )
            ckpt.prune_checkpoints(self.plan.run_dir, self.cfg.keep, newest=path)
        barrier(self.info)
        return path

    def save_final(self) -> Path:
        model_state, _ = full_state_dicts(self.wrapped, self.optimizer)
        path = self.plan.run_dir / FINAL_DIR
        if self.info.is_main:
            ckpt.write_atomically(path, lambda folder: self._save_hf(folder, model_state))
        barrier(self.info)
        return path

    def _restore(self) -> tuple[int, int]:
        """Load the optimizer, schedule, RNG and bad-step count of the checkpoint being resumed: (step, tokens)
        done."""
        path = self.plan.checkpoint
        state = ckpt.read_trainer_state(path)
        load_full_optimizer_state(self.wrapped, self.optimizer, ckpt.load_optimizer_state(path))
        self.scheduler.load_state_dict(state["scheduler"])
        self.guard.load_state_dict(state.get("non_finite"))  # absent from checkpoints written before it was kept
        rng_states = ckpt.load_rng_states(path)
        if len(rng_states) == self.info.world_size:
            ckpt.restore_rng(rng_states[self.info.rank], self.device)
        return state["step"], state["tokens"]

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        result = TrainResult(run_dir=self.plan.run_dir, step=0, checkpoint=self.plan.checkpoint)
        try:
            self._run(result)
        except OSError as exc:  # a full disk, a folder made read-only under the run, ...
            where = exc.filename or self.plan.run_dir
            kept = f"its last checkpoint, {result.checkpoint}, is intact" if result.checkpoint else "no checkpoint"
            raise RunError(
                f"{where}: {exc.strerror or exc}; the run stopped after step {result.step} and {kept}. Free some "
                "space or fix the folder's permissions, then continue with --resume"
            ) from exc
        return result

    @contextlib.contextmanager
    def _timed(self, result: TrainResult, part: str) -> Iterator[None]:
        """Add the block's seconds to `result.seconds[part]`: the device's work queued before it is waited for
        first (the steps' time, not the block's), its own at the end. Not around every step: that would stop the
        host from queueing the next step while the device runs this one."""
        synchronize(self.device)
        began = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            result.seconds[part] = result.seconds.get(part, 0.0) + time.perf_counter() - began

    def _run(self, result: TrainResult) -> None:
        plan = self.plan
        self._began = time.perf_counter()
        self._prepare_folder()
        # The batch workers start, and build the first steps' batches, while the model is built and compiled.
        self.ahead = PrefetchedBatches(plan.source, plan.grad_accum, plan.data_workers)
        try:
            self.ahead.prefetch(ckpt.checkpoint_step(plan.checkpoint) if plan.checkpoint is not None else 0)
            self._build_and_loop(result)
        finally:
            self.ahead.close()  # the one in use then: halving replaces it

    def _build_and_loop(self, result: TrainResult) -> None:
        cfg, plan, info = self.cfg, self.plan, self.info
        self.model = self._build_model()
        param_dtype = torch.bfloat16 if plan.precision == "bf16" else None
        self.wrapped = wrap_model(self.model, cfg.dist, info, param_dtype)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.guard = NonFiniteGuard(cfg.max_bad_steps)
        start, tokens = self._restore() if plan.checkpoint is not None else (0, 0)
        result.step = start
        logger = open_logger(
            plan.run_dir if info.is_main else None,
            tensorboard=cfg.tensorboard,
            wandb_project=cfg.wandb_project if cfg.wandb else None,
            config={"train": config_dict(cfg), "model": model_fields(plan.model_config)},
            purge_step=start or None,
        )
        self.logger = logger
        try:
            with stop_on_signals() as stop:
                self._loop(start, tokens, result, logger, stop)
        except RunError as exc:
            logger.log({"kind": "event", "step": result.step, "event": f"stopped: {exc}"})
            raise
        finally:
            logger.close()

    def _log_eval(self, step: int, logger: MetricsLogger, bar: tqdm, result: TrainResult) -> float:
        source = self.plan.source
        with self._timed(result, "validation"):
            if hasattr(source, "answer_token_validation"):
                val_loss, *by_token = self.evaluate_labellings(source.answer_token_validation)
            else:
                val_loss, by_token = self.evaluate(), []
            extras = {name: self.evaluate(getattr(source, method)) for name, (method, _) in EXTRA_VALIDATIONS.items()
                      if hasattr(source, method)}  # fmt: skip
        gates = self.gate_values()
        record = {"kind": "val", "step": step, "loss": val_loss, "gates": gates}
        record.update((name, loss) for name, loss in extras.items() if math.isfinite(loss))
        result.copy_loss = record.get("copy_loss", result.copy_loss)
        if by_token:
            record["answer_token_losses"] = [loss if math.isfinite(loss) else None for loss in by_token]
        logger.log(record)
        if self.info.is_main:
            extra = "".join(f", {what} {record[name]:.4f}" for name, (_, what) in EXTRA_VALIDATIONS.items()
                            if name in record)  # fmt: skip
            if by_token:
                extra += ", by answer token " + " / ".join("–" if math.isnan(x) else f"{x:.2f}" for x in by_token)
            bar.write(f"step {step}: validation loss {val_loss:.4f}{extra}")
        return val_loss

    def _loop(
        self,
        start: int,
        tokens: int,
        result: TrainResult,
        logger: MetricsLogger,
        stop: StopRequest,
    ) -> None:
        cfg, info = self.cfg, self.info
        meter = Throughput(
            flops_per_token(self.plan.model_config, cfg.seq_len),
            peak_flops(self.device, self.plan.precision),
            info.world_size,
        )
        logger.log({"kind": "event", "step": start, "event": "resume" if start else "start"})
        if self.plan.micro_batch is not None and info.is_main:
            how = self.plan.micro_batch["how"]
            print(f"micro-batch: {cfg.batch_size} × {cfg.seq_len} tokens, {self.plan.grad_accum} per step ({how})")
        if info.is_main and (reading := getattr(self.plan.source, "reading", None)):
            print(f"data: {reading(cfg.steps)}", flush=True)
        bar = tqdm(
            total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
            disable=not (cfg.progress and info.is_main),
        )  # fmt: skip
        synchronize(self.device)
        result.seconds["setup"] = time.perf_counter() - self._began
        if start == 0:
            result.val_loss = self._log_eval(0, logger, bar, result)
        pending: list[tuple[int, torch.Tensor]] = []  # losses not yet read back from the device
        status = StatusLines(start, cfg.steps) if bar.disable and info.is_main else None  # logs, not a terminal
        saved_at = start if self.plan.checkpoint else None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        for step in range(start, cfg.steps):
            began = time.perf_counter()
            with self._timed(result, "first_step") if step == start else contextlib.nullcontext():
                stats = self._train_step(step)
            done = result.step = step + 1
            tokens += stats.tokens
            pending.append((done, stats.loss))
            stopping = any_process(stop.signal_name is not None, info)
            last = done == cfg.steps
            if not stats.finite:
                result.skipped_steps.append(done)
                note = f"skipped step {done}: loss {float(stats.loss)}, gradient norm {float(stats.grad_norm)}"
                logger.log({"kind": "event", "step": done, "event": note})
                if info.is_main:
                    bar.write(note + " (not finite; no update made)")
            if done % cfg.log_every == 0 or last or stopping or not stats.finite:
                losses = torch.stack([loss for _, loss in pending]).tolist()  # waits for the device
                result.losses.update({s: v for (s, _), v in zip(pending, losses, strict=True)})
                pending.clear()
                meter.add(stats.tokens, time.perf_counter() - began)
                record = {
                    "kind": "train", "step": done, "loss": losses[-1], "lr": stats.lr,
                    "gate_lr": stats.gate_lr, "grad_norm": float(stats.grad_norm), "tokens": tokens,
                    **meter.read(self.device),
                }  # fmt: skip
                logger.log(record)
                rate = record["tokens_per_s"]
                bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{rate:,.0f}", refresh=False)
                result.tokens_per_s = record["tokens_per_s"]
                if status is not None:
                    status.maybe_print(done, losses[-1], rate, force=last)
            else:
                meter.add(stats.tokens, time.perf_counter() - began)
            bar.update(1)
            self.guard.record(done, stats.finite, result.checkpoint)
            if last:
                break
            if cfg.eval_every and done % cfg.eval_every == 0 and not stopping:
                result.val_loss = self._log_eval(done, logger, bar, result)
            if stopping or (cfg.save_every and done % cfg.save_every == 0):
                with self._timed(result, "checkpoints"):
                    result.checkpoint = self.save_checkpoint(done, tokens)
                saved_at = done
            if stopping:
                result.stopped_by = stop.signal_name or "a signal on another process"
                logger.log({"kind": "event", "step": done, "event": f"stopped by {result.stopped_by}"})
                bar.close()
                if info.is_main:
                    print(
                        f"stopped by {result.stopped_by} after step {done}; checkpoint {result.checkpoint}; "
                        "continue with the same command and --resume"
                    )
                return
        bar.close()
        if result.step == cfg.steps:
            if start < cfg.steps:
                result.val_loss = self._log_eval(cfg.steps, logger, bar, result)
            if saved_at != cfg.steps:
                with self._timed(result, "checkpoints"):
                    result.checkpoint = self.save_checkpoint(cfg.steps, tokens)
            with self._timed(result, "final"):
                result.final_dir = self.save_final()
            # The steps after the first: the whole run less every part timed on its own.
            result.seconds["steps"] = time.perf_counter() - self._began - sum(result.seconds.values())
            seconds = {part: round(value, 2) for part, value in result.seconds.items()}
            logger.log({"kind": "event", "step": cfg.steps, "event": "finished", "seconds": seconds})
