"""TrainConfig, the single source of truth of a training run, and the recipe of each model preset.

A run is resolved in layers, each overriding the one before: the recipe of the model preset (`RECIPES`), a
`--config` file, explicit CLI flags, then `--set key=value` (see `infini_llama.train.overrides`). Model fields
(`segment_len`, `attention`, ...) live in `TrainConfig.model`, a dict of `InfiniLlamaConfig` overrides.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from infini_llama.models import PRESETS

PRECISIONS = ("auto", "bf16", "fp32")
DIST_MODES = ("ddp", "fsdp")
# Fields that may change between a run and its --resume: they do not change what the run computes.
RESUMABLE_CHANGES = frozenset(
    {
        "out", "resume", "overwrite", "progress", "tensorboard", "wandb", "wandb_project", "log_every",
        "eval_every", "eval_windows", "save_every", "keep", "compile", "checkpointing", "device", "dist",
        "cache_dir", "max_bad_steps", "data_workers",
    }
)  # fmt: skip


@dataclass
class TrainConfig:
    """Everything a training run needs. Resolve one with `recipe(preset)` or `resolve_config(...)`.

    Batch geometry: `batch_size` sequences of `seq_len` tokens per forward pass on each process, `grad_accum`
    forward passes per optimizer step, so one step sees batch_size × grad_accum × world_size sequences. When
    `global_batch` is set, `grad_accum` is derived from it (global_batch / (batch_size × world_size)), so a
    recipe keeps its global batch on any number of GPUs. `batch_size` None (with `global_batch`) is automatic: on
    CUDA the largest split of the global batch that fits the GPU, elsewhere the whole per-process batch
    (`infini_llama.train.microbatch`); the run logs the choice and writes it to run.json.

    Learning rate: linear warm-up over `warmup_steps` to `lr`, then cosine decay to `min_lr` at `steps` (over the
    last `decay_steps` steps only, the peak held before them, when that is set); the
    gate group (β of each Infini layer) follows the same shape scaled to its own peak `gate_lr` (None: `lr`),
    with no weight decay.
    """

    # model
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # InfiniLlamaConfig field overrides
    init_from: str | None = None  # HF model folder to start from; its config replaces the preset
    # data
    data: list[str] | None = None  # local .txt/.jsonl/.parquet files, globs or folders; None: embedded corpus
    dataset: str | None = None  # HF dataset name or local dataset folder
    dataset_config: str | None = None
    text_field: str = "text"
    repeat_fraction: float = 0.0  # share of the training windows of text whose second half copies the first
    tokenizer: str | None = None  # None: the built-in BPE trained on the embedded corpus
    cache_dir: str | None = None  # tokenizer and token caches; None: $INFINI_LLAMA_CACHE or ~/.cache
    # batch geometry and length of the run
    seq_len: int = 256
    batch_size: int | None = 16  # None: automatic (see above)
    grad_accum: int = 1
    global_batch: int | None = None
    steps: int = 500
    # optimizer and schedule
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    decay_steps: int | None = None  # None: the cosine spans every step after the warm-up
    gate_lr: float | None = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    max_bad_steps: int = 5  # steps with a non-finite loss or gradient are skipped; this many in a row stop the run
    # numerics and speed
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: bool | None = None  # torch.compile each decoder layer; None: on CUDA, off elsewhere
    checkpointing: bool = False  # activation checkpointing per decoder layer
    # deterministic kernels, so that a rerun on the same GPU is bit-exact (a little slower): flash attention's backward
    # without atomic sums, cuBLAS with a fixed workspace; CPU runs are bit-exact without it
    deterministic: bool = False
    # processes building batches ahead of the step (the same batches); None: 4 on CUDA for sources that build
    # batches slowly (passkey fine-tuning), else 0 (in the training process)
    data_workers: int | None = None
    device: str = "auto"  # auto: cuda if available, else cpu
    dist: str = "ddp"  # under torchrun: "ddp" or "fsdp" (FSDP2 fully_shard)
    seed: int = 0
    # evaluation, logging, checkpoints
    eval_every: int = 100  # steps between validation losses (also at the start and the end); 0: start and end
    eval_windows: int = 32  # validation windows of seq_len tokens per evaluation
    log_every: int = 10
    save_every: int = 250  # steps between checkpoints (one is always written at the end); 0: end only
    keep: int = 2  # checkpoints kept in <out>/checkpoints
    out: str | None = None  # run folder; None: runs/<preset>-<attention>
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "infini-llama"
    progress: bool = True
    resume: bool = False
    overwrite: bool = False

    @property
    def attention(self) -> str:
        return self.model.get("attention", PRESETS.get(self.preset, {}).get("attention", "infini"))

    @property
    def run_dir(self) -> str:
        return self.out if self.out is not None else f"runs/{self.preset}-{self.attention}"

    def accumulation(self, world_size: int) -> int:
        """Forward passes per optimizer step on each process, for `world_size` processes."""
        if self.global_batch is None:
            return self.grad_accum
        if self.batch_size is None:
            raise ValueError("batch_size is automatic (None): resolve it first (train.microbatch.resolve_micro_batch)")
        per_pass = self.batch_size * world_size
        if self.global_batch % per_pass:
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a multiple of batch_size × processes "
                f"({self.batch_size} × {world_size}); change --batch-size or --global-batch"
            )
        return self.global_batch // per_pass

    def validate(self) -> None:
        """Raise ValueError naming the first impossible value and what to do."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        positive = ("seq_len", "batch_size", "grad_accum", "steps", "log_every", "keep", "eval_windows")
        positive += ("max_bad_steps",)
        for name in positive:
            value = getattr(self, name)
            if name == "batch_size" and value is None:  # automatic
                continue
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "seed"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.data_workers is not None and (not _is_int(self.data_workers) or self.data_workers < 0):
            raise ValueError(f"data_workers must be None (automatic) or an integer >= 0, got {self.data_workers!r}")
        if self.decay_steps is not None and (
            not _is_int(self.decay_steps) or not 1 <= self.decay_steps <= self.steps - self.warmup_steps
        ):
            raise ValueError(
                f"decay_steps must be None (decay after the warm-up) or an integer in [1, steps - warmup_steps = "
                f"{self.steps - self.warmup_steps}], got {self.decay_steps!r}"
            )
        if self.global_batch is not None and (not _is_int(self.global_batch) or self.global_batch < 1):
            raise ValueError(f"global_batch must be None or an integer >= 1, got {self.global_batch!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr!r}")
        if self.gate_lr is not None and not self.gate_lr > 0:
            raise ValueError(f"gate_lr must be None (use lr) or > 0, got {self.gate_lr!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        for name in ("adam_eps",):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if (
            isinstance(self.repeat_fraction, bool)
            or not isinstance(self.repeat_fraction, (int, float))
            or not (0 <= self.repeat_fraction <= 1)
        ):
            raise ValueError(f"repeat_fraction must be a number in [0, 1], got {self.repeat_fraction!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.dist not in DIST_MODES:
            raise ValueError(f"dist must be one of {DIST_MODES}, got {self.dist!r}")
        if self.data is not None and self.dataset is not None:
            raise ValueError("pass either --data (local files) or --dataset (a HF dataset), not both")
        if self.data is not None and not self.data:
            raise ValueError("data is an empty list; pass at least one file, folder or glob, or drop --data")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite deletes it: pass only one")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Training recipes per model preset. Both arms (Infini and full attention) train with the same recipe.
RECIPES: dict[str, dict[str, Any]] = {
    # CPU demo, a few minutes on 2 cores: 16 × 256 tokens per step; the 4096-token vocabulary projection is
    # most of the cost at width 128, so a wider batch buys little.
    "tiny": dict(
        seq_len=256, batch_size=16, grad_accum=1, steps=500, lr=2e-3, min_lr=2e-4, warmup_steps=50,
        gate_lr=0.01, eval_every=100, eval_windows=32, log_every=10, save_every=250, keep=2,
    ),
    # One GPU, minutes: 16 × 2048 tokens per step (8 segments of 256).
    "mini": dict(
        seq_len=2048, batch_size=16, grad_accum=1, steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100,
        gate_lr=0.01, eval_every=250, eval_windows=64, log_every=10, save_every=1000, keep=2,
    ),
    # The 300M study (arXiv 2512.23862, its code's recipe): 4 × 8192 tokens per step (as many per pass as fit
    # the GPU: batch_size None), 30,000 steps
    # (≈ 983M tokens), AdamW (0.9, 0.95), eps 1e-8, wd 0.1, clip 1.0, LR 6e-5 after 500 warm-up steps, cosine
    # to 6e-6, gates on LR 0.01 without decay, bf16.
    "paper-300m": dict(
        seq_len=8192, batch_size=None, global_batch=4, steps=30_000, lr=6e-5, min_lr=6e-6, warmup_steps=500,
        gate_lr=0.01, adam_betas=(0.9, 0.95), adam_eps=1e-8, weight_decay=0.1, grad_clip=1.0,
        precision="bf16", eval_every=1000, eval_windows=16, log_every=10, save_every=1000, keep=3,
    ),
}  # fmt: skip


def recipe(preset: str, **overrides: Any) -> TrainConfig:
    """The training recipe of a model preset ("tiny", "mini", "paper-300m") with fields overridden."""
    if preset not in RECIPES:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(RECIPES)}")
    return TrainConfig(preset=preset, **{**RECIPES[preset], **overrides})


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain JSON data (tuples become lists), as written into the run folder."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_changes(saved: dict[str, Any], current: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (saved, current)} for the fields that differ and that a resumed run must keep."""
    now = config_dict(current)
    names = (set(saved) | set(now)) - RESUMABLE_CHANGES
    changed = sorted(name for name in names if saved.get(name) != now.get(name))
    return {name: (saved.get(name), now.get(name)) for name in changed}
