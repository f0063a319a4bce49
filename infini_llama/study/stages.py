"""The stages of one arm of a single-seed study, in order: pretraining → passkey fine-tuning at each LR of the grid
→ choosing the LR on held-apart fine-tuning prompts at the fine-tuning length → passkey grids on every haystack
(and, for Infini arms, with the memory switched off; for the baseline, with RoPE scaled; the local control has the
plain grid only) → perplexity by position → gates (Infini arms) → the memory switched off in one layer at a time
(Infini arms, one length, the first haystack).

Layout of an arm's folder:

    pretrain/                   a training run (see infini_llama.train.rundir); final/ is a HF model folder; an
                                arm whose pretraining is an earlier arm's (`arms.pretraining_source`) copies it
    finetune-lr=<lr>/           a passkey fine-tuning run from pretrain/final, one per LR of the grid
    eval/<task>/                evaluation runs (summary.json + samples.jsonl): passkey-<haystack>,
                                passkey-memory-off-<haystack>, passkey-rope[<i>]-<haystack>, perplexity, gates,
                                passkey-memory-off-layer<l>-<haystack> (one per Infini layer)
    <stage>.done                written when a stage finished (select.done names the chosen LR)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from infini_llama.data import held_out_book
from infini_llama.eval import (
    ChunkedLM,
    PasskeyGridConfig,
    PerplexityConfig,
    evaluate_passkey,
    load_eval_tokenizer,
    load_model,
    perplexity_by_position,
    run_gates,
    run_passkey_grid,
)
from infini_llama.eval.checkpoint import default_device
from infini_llama.eval.diagnostics import gate_parameters
from infini_llama.eval.passkey import DEFAULT_KEY_DIGITS
from infini_llama.eval.rope_scaling import rope_scaling, rope_scaling_label
from infini_llama.eval.scoring import mean_and_stderr, proportion
from infini_llama.models.presets import PRESETS as MODEL_PRESETS
from infini_llama.study.arms import Arm, expand_arms, pretraining_source
from infini_llama.study.config import StudyConfig
from infini_llama.train import PasskeyBatchSource, TrainConfig, launch_env, recipe, train
from infini_llama.train import checkpoint as ckpt
from infini_llama.train.loop import tf32_matmuls
from infini_llama.train.microbatch import initial_split
from infini_llama.train.setup import resolve_precision

Stage = tuple[str, Callable[[], dict | None]]


def train_recipe(cfg: StudyConfig, arm: Arm, stage: str, **extra: Any) -> TrainConfig:
    """The resolved TrainConfig of `stage` ("pretrain" or "finetune") for `arm`: the preset's recipe, the study's
    values for that stage, the arm's own, then `extra`; the arm's seed."""
    study_values = cfg.pretrain if stage == "pretrain" else cfg.finetune
    return recipe(cfg.model_preset, **{**study_values, **getattr(arm, stage), **extra, "seed": arm.seed})


def training_length(cfg: StudyConfig, arm: Arm) -> int:
    """The training length: the pretraining `seq_len`, the longest context the arm ever trained on."""
    return train_recipe(cfg, arm, "pretrain").seq_len


def selection_length(cfg: StudyConfig, arm: Arm) -> int:
    """The length the LR selection scores at: the fine-tuning length, never beyond the training length. What the LRs
    taught, not how far beyond it the arm reaches (the 302M study fine-tunes at half its training length)."""
    return min(training_length(cfg, arm), train_recipe(cfg, arm, "finetune").seq_len)


def eval_lengths(cfg: StudyConfig, arm: Arm) -> list[int]:
    """Passkey lengths in tokens: the multiples of the training length."""
    return [round(m * training_length(cfg, arm)) for m in cfg.eval_multiples]


def candidate_lrs(cfg: StudyConfig, arm: Arm) -> tuple[float, ...]:
    """The fine-tuning LRs this arm tries: the study's grid, or its one fine-tuning LR."""
    return cfg.finetune_lr_grid or (train_recipe(cfg, arm, "finetune").lr,)


def finetune_recipe(cfg: StudyConfig, arm: Arm, lr: float, **extra: Any) -> TrainConfig:
    """Fine-tuning at `lr` with the same budget and schedule shape for every LR (the floor scales with it)."""
    base = train_recipe(cfg, arm, "finetune")
    return train_recipe(cfg, arm, "finetune", lr=lr, min_lr=base.min_lr * lr / base.lr, **extra)


FINETUNE_PREFIX = "finetune-lr="  # the fine-tuning stages (and their folders): one per LR
STAGE_GROUPS = ("pretraining", "fine-tuning", "evaluation")


def stage_group(name: str) -> str:
    """Which of STAGE_GROUPS a stage is in: pretraining, fine-tuning (one stage per LR), or evaluation (the LR
    selection and everything after it)."""
    return "pretraining" if name == "pretrain" else "fine-tuning" if name.startswith(FINETUNE_PREFIX) else "evaluation"


def finetune_dir(root: Path, lr: float) -> Path:
    return root / f"{FINETUNE_PREFIX}{lr:g}"


def chosen_checkpoint(root: Path) -> Path:
    """The fine-tuned model the evaluations use: the one of the LR the selection stage chose."""
    chosen = json.loads((root / "select.done").read_text())["chosen_lr"]
    return finetune_dir(root, chosen) / "final"


def passkey_source(cfg: StudyConfig, arm: Arm, tokenizer, tcfg: TrainConfig) -> PasskeyBatchSource:
    """The fine-tuning data: seeded by the arm's seed, never using a key of the arm's evaluation grid. With an
    automatic batch_size it holds the whole per-process batch in one pass; the trainer splits it anew. Its segment
    length (where `passkey.boundary_share` puts answers, and the `boundary_loss` validation) is the study's model's,
    or the arm's own where a sweep gives the Infini arm another: the baseline's data are the Infini arm's."""
    rank, world_size, _ = launch_env()
    segment_len = {**MODEL_PRESETS[tcfg.preset], **cfg.model, **arm.model}.get("segment_len")
    return PasskeyBatchSource(
        tokenizer, tcfg.seq_len, *initial_split(tcfg, world_size), seed=arm.seed, rank=rank,
        world_size=world_size, exclude_eval_seed=arm.seed, exclude_eval_samples=cfg.eval_samples * len(cfg.eval_depths),
        segment_len=segment_len, **{**cfg.passkey, **arm.passkey},
    )  # fmt: skip


def rope_rows(cfg: StudyConfig, arm: Arm) -> dict[str, dict]:
    """The baseline's RoPE-scaled rows: {task: scaling} (original length: the training length), one per scaling of
    `eval_rope_scaling` in its order, "passkey-rope" for the first and "passkey-rope<i>" for the i-th after it;
    empty for other arms or without scaling."""
    if arm.attention != "full":
        return {}
    rows = {}
    for i, options in enumerate(cfg.rope_scalings):
        options = dict(options)
        task = "passkey-rope" if i == 0 else f"passkey-rope{i + 1}"
        rows[task] = rope_scaling(options.pop("rope_type"), training_length(cfg, arm), **options)
    return rows


def layer_off_folder(layer: int, haystack: str) -> str:
    """The eval folder of the grid with the memory switched off in `layer` only."""
    return f"passkey-memory-off-layer{layer}-{haystack}"


def layer_off_length(cfg: StudyConfig, arm: Arm) -> int:
    """The length of the one-layer memory-off grids: `layer_off_multiple` × the training length."""
    return eval_lengths(cfg, arm)[cfg.eval_multiples.index(float(cfg.layer_off_multiple))]


def passkey_label(arm: Arm, task: str, cfg: StudyConfig) -> str:
    """How reports name the row of `task` (one of `passkey_tasks`) of `arm`."""
    if task == "passkey-memory-off":
        return f"{arm.name} (memory off)"
    scaled = rope_rows(cfg, arm)
    if task in scaled:
        return f"{arm.name} ({rope_scaling_label(scaled[task])})"
    return arm.name


def passkey_tasks(cfg: StudyConfig, arm: Arm) -> list[str]:
    """The passkey grids of `arm` (each run on every haystack of the study): Infini with the memory on and off; the
    baseline plain and RoPE-scaled once per scaling the study names; the local control plain."""
    if arm.attention == "infini":
        return ["passkey", "passkey-memory-off"]
    return ["passkey", *rope_rows(cfg, arm)]


@contextlib.contextmanager
def evaluation_numerics(precision: str, device: torch.device | str | None) -> Iterator[None]:
    """Inside the block, the numerics `precision` (a study's `eval_precision`) gives an evaluation on `device` (None
    or "auto": a GPU if there is one): float32 as it is; float32 with TF32 matmuls on a GPU ("tf32": the inputs of
    each matmul rounded to 10 mantissa bits, float32 accumulation; float32 elsewhere); or the training's bf16 autocast
    (the memory's state and matmuls stay float32, as in training, with TF32 on a GPU)."""
    device = torch.device(default_device() if device in (None, "auto") else device)  # where load_model puts it
    if precision == "tf32":
        with tf32_matmuls(device.type == "cuda"):
            yield
        return
    if resolve_precision(precision, device) != "bf16":
        yield
        return
    with torch.autocast(device.type, dtype=torch.bfloat16), tf32_matmuls(device.type == "cuda"):
        yield


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {part: round(value, 1) for part, value in seconds.items()}


def arm_stages(cfg: StudyConfig, arm: Arm, root: Path, device: str, progress: bool) -> list[Stage]:
    """(name, callable) for every stage of `arm`, whose folder is `root`, in order."""
    pretrain_dir = root / "pretrain"
    on = None if device == "auto" else device

    def run_config(tcfg: TrainConfig, run_dir: Path) -> TrainConfig:
        resume = (run_dir / "run.json").is_file()
        return dataclasses.replace(tcfg, out=str(run_dir), resume=resume, device=device, progress=progress)

    def pretrain():
        source = pretraining_source(expand_arms(cfg), arm)
        source_root = root.parent / source.name if source is not None else None
        if source_root is not None and (source_root / "pretrain.done").is_file() and not pretrain_dir.exists():
            # The same pretraining as an earlier arm's, which has finished it: its run, not another one.
            _copy_run(source_root / "pretrain", pretrain_dir)
            done = json.loads((source_root / "pretrain.done").read_text())
            kept = ("val_loss", "copy_loss", "tokens_per_s", "steps")
            return {**{k: done.get(k) for k in kept if k in done}, "shared_from": source.name}
        model = {**cfg.model, **arm.model, "attention": arm.attention}
        result = train(run_config(train_recipe(cfg, arm, "pretrain", model=model), pretrain_dir))
        _check_finished(result, "pretraining")
        _keep_newest_checkpoint(pretrain_dir)
        return {"val_loss": result.val_loss, "copy_loss": result.copy_loss, "tokens_per_s": result.tokens_per_s,
                "steps": result.step, "split_seconds": _rounded(result.seconds)}  # fmt: skip

    def finetune(lr: float):
        def run():
            tokenizer = load_eval_tokenizer(pretrain_dir / "final")
            tcfg = finetune_recipe(cfg, arm, lr, init_from=str(pretrain_dir / "final"))
            result = train(run_config(tcfg, finetune_dir(root, lr)), batches=passkey_source(cfg, arm, tokenizer, tcfg),
                           tokenizer=tokenizer)  # fmt: skip
            _check_finished(result, "passkey fine-tuning")
            _keep_newest_checkpoint(finetune_dir(root, lr))
            return {"lr": lr, "val_loss": result.val_loss, "tokens_per_s": result.tokens_per_s, "steps": result.step,
                    "split_seconds": _rounded(result.seconds)}  # fmt: skip

        return run

    loaded: dict[Path, nn.Module] = {}

    def model_of(checkpoint: Path) -> nn.Module:
        """The model of `checkpoint`, loaded once for the arm's evaluation stages (each grid restores what it
        changes: closed gates, scaled RoPE), one at a time: the chosen LR's is the last the selection loads."""
        if checkpoint not in loaded:
            loaded.clear()
            loaded[checkpoint] = load_model(checkpoint, device=on)
        return loaded[checkpoint]

    def select():
        # Each LR's model on the same held-apart fine-tuning prompts at the selection length.
        tokenizer = load_eval_tokenizer(pretrain_dir / "final")
        length, lrs = selection_length(cfg, arm), candidate_lrs(cfg, arm)
        source = passkey_source(cfg, arm, tokenizer, finetune_recipe(cfg, arm, lrs[0]))
        prompts = source.selection_prompts(length, cfg.selection_samples)
        candidates = []
        for lr in lrs:
            model = model_of(finetune_dir(root, lr) / "final")
            rows = evaluate_passkey(
                ChunkedLM(model), tokenizer, prompts, cfg.eval_batch_size, batch_tokens=cfg.eval_batch_tokens
            )
            trained = json.loads((root / f"{finetune_dir(root, lr).name}.done").read_text())
            candidates.append({
                "lr": lr, "exact": proportion(sum(r["exact"] for r in rows), len(rows)),
                "digit_acc": mean_and_stderr([r["digit_acc"] for r in rows]), "val_loss": trained.get("val_loss"),
            })  # fmt: skip
        best = best_candidate(candidates)
        return {"chosen_lr": lrs[best], "length": length, "samples": len(prompts), "candidates": candidates}

    def evaluate(task: str, haystack: str | None = None):
        def run():
            checkpoint = chosen_checkpoint(root)
            model, tokenizer = model_of(checkpoint), load_eval_tokenizer(checkpoint)
            target = root / "eval" / (f"{task}-{haystack}" if haystack else task)
            label = passkey_label(arm, task, cfg)
            if haystack:
                grid = PasskeyGridConfig(
                    lengths=eval_lengths(cfg, arm),
                    depths=cfg.eval_depths,
                    samples=cfg.eval_samples,
                    seed=arm.seed,
                    key_digits=cfg.passkey.get("key_digits", DEFAULT_KEY_DIGITS),
                    haystack=haystack,
                    memory_off=task == "passkey-memory-off",
                    rope_scaling=rope_rows(cfg, arm).get(task),
                    split=cfg.eval_split,
                    batch_size=cfg.eval_batch_size,
                    batch_tokens=cfg.eval_batch_tokens,
                    progress=progress,
                )
                run_passkey_grid(model, tokenizer, grid, target, label=label, checkpoint=checkpoint)
            elif task == "perplexity":
                ppl = PerplexityConfig(
                    train_len=training_length(cfg, arm), max_len=max(eval_lengths(cfg, arm)),
                    bucket_len=cfg.perplexity_bucket, windows=cfg.perplexity_windows, batch_size=cfg.eval_batch_size,
                    batch_tokens=cfg.eval_batch_tokens, progress=progress,
                )  # fmt: skip
                book = held_out_book()
                perplexity_by_position(model, tokenizer, ppl, target, documents=[book.text], source=book.name,
                                       label=label, checkpoint=checkpoint)  # fmt: skip
            else:
                run_gates(model, tokenizer, target, label=label, checkpoint=checkpoint.parent)

        return run

    def layers_off():
        # What each layer's memory adds: the plain grid's design at one length, one layer's gates closed at a time.
        checkpoint = chosen_checkpoint(root)
        model, tokenizer = model_of(checkpoint), load_eval_tokenizer(checkpoint)
        haystack = cfg.eval_haystacks[0]
        for layer in range(len(gate_parameters(model))):
            grid = PasskeyGridConfig(
                lengths=[layer_off_length(cfg, arm)], depths=cfg.eval_depths, samples=cfg.eval_samples, seed=arm.seed,
                key_digits=cfg.passkey.get("key_digits", DEFAULT_KEY_DIGITS), haystack=haystack, memory_off=[layer],
                split=cfg.eval_split, batch_size=cfg.eval_batch_size, batch_tokens=cfg.eval_batch_tokens,
                progress=progress,
            )  # fmt: skip
            target = root / "eval" / layer_off_folder(layer, haystack)
            label = f"{arm.name} (memory off in layer {layer})"
            run_passkey_grid(model, tokenizer, grid, target, label=label, checkpoint=checkpoint)

    def evaluated(run: Callable[[], dict | None]) -> Callable[[], dict | None]:
        """An evaluation stage, run in the numerics of the study's `eval_precision`."""

        def numerics():
            with evaluation_numerics(cfg.eval_precision, on):
                return run()

        return numerics

    evaluations = [("select", select)]
    evaluations += [(f"{task}-{h}", evaluate(task, h)) for h in cfg.eval_haystacks for task in passkey_tasks(cfg, arm)]
    evaluations.append(("perplexity", evaluate("perplexity")))
    if arm.attention == "infini":
        evaluations.append(("gates", evaluate("gates")))
        if cfg.layer_off_multiple is not None:
            evaluations.append(("layers-off", layers_off))
    stages: list[Stage] = [("pretrain", pretrain)]
    stages += [(finetune_dir(root, lr).name, finetune(lr)) for lr in candidate_lrs(cfg, arm)]
    return stages + [(name, evaluated(run)) for name, run in evaluations]


def best_candidate(candidates: list[dict]) -> int:
    """The index of the LR a study evaluates: most often exactly right on the selection prompts, then the higher
    digit accuracy, then the lower fine-tuning validation loss (models that are all right on every prompt are told
    apart by how sure they are, not by their place in the grid), then the first in the grid."""

    def rank(i: int) -> tuple:
        c = candidates[i]
        loss = c.get("val_loss")
        return (c["exact"]["rate"], c["digit_acc"]["mean"], -(float("inf") if loss is None else loss), -i)

    return max(range(len(candidates)), key=rank)


def _copy_run(source: Path, target: Path) -> None:
    """Copy the run folder `source` to `target` (hard links where the file system allows, so model weights take no
    more space), through a temporary folder renamed at the end: an interrupted copy leaves no `target`."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, partial, copy_function=link)
    partial.rename(target)


def _keep_newest_checkpoint(run_dir: Path) -> None:
    """A finished training stage keeps its final model and its newest checkpoint (from which it could go on), not
    the `keep` - 1 before it: for the 302M model each is 3.6 GB (weights and optimizer state), and a study of a few
    arms and LRs would otherwise fill a GPU machine's disk. The stage never resumes from the others."""
    newest = ckpt.list_checkpoints(run_dir)
    if newest and launch_env()[0] == 0:
        ckpt.prune_checkpoints(run_dir, 1, newest=newest[-1])


def _check_finished(result, what: str) -> None:
    if result.stopped_by is not None:
        raise SystemExit(f"[study] {what} stopped by {result.stopped_by}; run the same command again to continue")
