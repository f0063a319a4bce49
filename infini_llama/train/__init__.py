"""Pretraining: one loop for both arms (Infini-attention and the full-attention baseline).

Library use::

    from infini_llama.train import recipe, train

    cfg = recipe("tiny", out="runs/tiny-infini", steps=300, model={"attention": "infini"})
    result = train(cfg)                  # TrainResult(run_dir, step, losses, val_loss, ..., final_dir)
    # result.final_dir is a Hugging Face folder: AutoModelForCausalLM / AutoTokenizer.from_pretrained load it
    # (after `import infini_llama`, which registers the model type).

`train(cfg, *, batches=None, tokenizer=None) -> TrainResult`
    `cfg` is a `TrainConfig` (the single source of truth; `recipe(preset, **fields)` or
    `resolve_config(flags, config_file=..., sets=[...])` build one). `batches` is any `BatchSource`: an
    object with `batch(step, micro_step) -> (input_ids, labels)`, both LongTensor (B, T), a pure function of
    (step, micro_step) and the process's rank, labels aligned with the inputs as for a Hugging Face causal LM
    (the model shifts them; -100 masks a position), and `validation_batches()` yielding the same batches on
    every call; optionally `state_dict()` (JSON data a resume must match) and `split(batch_size, grad_accum)`
    (the same steps in other passes, which an automatic `batch_size` needs). Default: `TokenWindowSource`,
    random windows of the tokenized corpus (`cfg.data` / `cfg.dataset`, else the embedded corpus).
    `tokenizer` (default: `cfg.tokenizer`, else the one in `cfg.init_from`, else the built-in BPE) is saved
    with every checkpoint. Under torchrun, call `train` on every process; build a custom source for this
    process's rank (`infini_llama.train.launch_env()` gives (rank, world_size, local_rank)).

    Each step's loss is the mean over all its target tokens, whatever the split into processes and
    accumulation steps. `cfg.resume` continues from the run's latest intact checkpoint (a damaged one is
    named in a warning and skipped) with the same losses an uninterrupted run would have had; SIGINT / SIGTERM
    end the current step, write a checkpoint and return a result with `stopped_by` set. A step whose loss or
    gradient is not finite makes no update and is listed in `skipped_steps`. With an automatic `batch_size`
    (None: as many sequences per pass as fit the GPU, `infini_llama.train.microbatch`), a step that runs out of
    GPU memory is done again at half the micro-batch. A setting or input that cannot
    work raises `ConfigError` (a ValueError) before any file is written; a run that has to stop part-way
    (`cfg.max_bad_steps` non-finite steps in a row, a full disk, a batch with ids outside the vocabulary)
    raises `RunError` with every checkpoint written before intact; a checkpoint holding anything but tensors
    and plain data raises `CheckpointError`.

Run folder: see `infini_llama.train.rundir`; checkpoint folders: see `infini_llama.train.checkpoint`.
"""

from infini_llama.train.batches import BatchSource, TokenWindowSource
from infini_llama.train.config import RECIPES, TrainConfig, recipe
from infini_llama.train.distributed import launch_env
from infini_llama.train.faults import RunError
from infini_llama.train.loop import TrainResult, hf_progress_bars_off, train
from infini_llama.train.manifest import CheckpointError
from infini_llama.train.metrics import flops_per_token, read_metrics
from infini_llama.train.optim import build_optimizer, build_scheduler, lr_factor
from infini_llama.train.overrides import resolve_config
from infini_llama.train.passkey import PasskeyBatchSource, finetune_passkey
from infini_llama.train.setup import ConfigError

__all__ = [
    "RECIPES",
    "BatchSource",
    "CheckpointError",
    "ConfigError",
    "PasskeyBatchSource",
    "RunError",
    "TokenWindowSource",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "finetune_passkey",
    "flops_per_token",
    "hf_progress_bars_off",
    "launch_env",
    "lr_factor",
    "read_metrics",
    "recipe",
    "resolve_config",
    "train",
]
