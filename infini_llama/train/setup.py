"""Everything a run checks before it writes a file: tokenizer, model config, data, run folder, resume.

`plan_run` either returns a RunPlan or raises ConfigError with one message naming what to do; a bad setting
therefore never touches an existing run folder.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedTokenizerBase

from infini_llama.data import load_tokenizer, prepare_tokens
from infini_llama.models import PRESETS, InfiniLlamaConfig, config_from_preset
from infini_llama.models.presets import CONFIG_FIELDS
from infini_llama.train.batches import BatchSource, TokenWindowSource
from infini_llama.train.checkpoint import latest_checkpoint, read_trainer_state
from infini_llama.train.compile import resolve_compile
from infini_llama.train.config import TrainConfig, config_changes
from infini_llama.train.distributed import DistInfo, main_process_first
from infini_llama.train.microbatch import resolve_micro_batch
from infini_llama.train.rundir import RUN_FILE, check_run_dir, read_run_file

# Fields that fix the shapes of a pretrained model's tensors: --init-from cannot change them.
SHAPE_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "tie_word_embeddings",
)  # fmt: skip


class ConfigError(ValueError):
    """A setting or input the run cannot use; the message says what to do instead."""


@dataclass
class RunPlan:
    """A checked run, ready to start."""

    cfg: TrainConfig
    info: DistInfo
    run_dir: Path
    mode: str  # "new", "resume" or "overwrite"
    checkpoint: Path | None  # the checkpoint a resumed run continues from
    tokenizer: PreTrainedTokenizerBase
    model_config: InfiniLlamaConfig
    source: BatchSource
    grad_accum: int
    precision: str  # "bf16" or "fp32"
    compile: bool  # compile the decoder layers (cfg.compile, resolved for the device)
    data_workers: int  # processes building batches ahead of the step (cfg.data_workers, resolved)
    micro_batch: dict | None = None  # how an automatic batch_size was chosen (None: given)


def plan_run(
    cfg: TrainConfig,
    info: DistInfo,
    *,
    batches: BatchSource | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> RunPlan:
    try:
        return _plan(cfg, info, batches, tokenizer)
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise ConfigError(str(exc)) from exc


def _plan(cfg, info, batches, tokenizer) -> RunPlan:
    cfg.validate()
    run_dir = Path(cfg.run_dir)
    mode = check_run_dir(run_dir, resume=cfg.resume, overwrite=cfg.overwrite)
    precision = resolve_precision(cfg.precision, info.device)
    if cfg.batch_size is not None:
        cfg.accumulation(info.world_size)  # an impossible split fails before any file or model is touched
    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--wandb needs the wandb package: pip install wandb (or drop --wandb)")
    if batches is not None and cfg.repeat_fraction:
        raise ConfigError(
            f"repeat_fraction repeats windows of text, but this run's batches come from {type(batches).__name__}: "
            "set it for pretraining on text only"
        )
    base = _pretrained_config(cfg.init_from) if cfg.init_from else None
    if tokenizer is None:
        with main_process_first(info):
            tokenizer = _load_tokenizer(cfg, base)
    model_config = build_model_config(cfg, tokenizer, base)
    checkpoint = latest_checkpoint(run_dir) if mode == "resume" else None
    automatic = cfg.batch_size is None
    micro_batch = None
    if automatic and mode == "resume":  # the split the run had at its checkpoint, and the record of its choice
        batch_size, micro_batch = _saved_split(run_dir, checkpoint)
        cfg = dataclasses.replace(cfg, batch_size=batch_size)
    if micro_batch is None:
        cfg, micro_batch = resolve_micro_batch(cfg, model_config, info.device, info.world_size, precision)
    grad_accum = cfg.accumulation(info.world_size)
    if batches is not None and automatic:
        if not hasattr(batches, "split"):
            raise ConfigError(
                f"batch_size is automatic (None) but the batch source ({type(batches).__name__}) has no "
                "split(batch_size, grad_accum) to split its steps anew; give batch_size"
            )
        batches = batches.split(cfg.batch_size, grad_accum)
    if batches is None:
        with main_process_first(info):
            data = prepare_tokens(
                tokenizer,
                data=cfg.data,
                dataset=cfg.dataset,
                dataset_config=cfg.dataset_config,
                text_field=cfg.text_field,
                cache_dir=cfg.cache_dir,
                show_progress=cfg.progress and info.is_main,
            )
        batches = TokenWindowSource(
            data, cfg.seq_len, cfg.batch_size, grad_accum, seed=cfg.seed, rank=info.rank,
            world_size=info.world_size, eval_windows=cfg.eval_windows, repeat_fraction=cfg.repeat_fraction,
        )  # fmt: skip
    if mode == "resume":
        check_resume(run_dir, checkpoint, cfg, model_config, batches, info.world_size)
    return RunPlan(
        cfg=cfg,
        info=info,
        run_dir=run_dir,
        mode=mode,
        checkpoint=checkpoint,
        tokenizer=tokenizer,
        model_config=model_config,
        source=batches,
        grad_accum=grad_accum,
        precision=precision,
        compile=resolve_compile(cfg.compile, info.device),
        micro_batch=micro_batch,
        data_workers=resolve_data_workers(cfg.data_workers, batches, info.device),
    )


def _saved_split(run_dir: Path, checkpoint: Path | None) -> tuple[int | None, dict | None]:
    """The batch_size of a run being resumed with an automatic one: that of its checkpoint (the micro-batch may
    have been halved mid-run), else the one it started with (run.json); and the record of the choice in run.json.
    (None, None) where they cannot be read: then it is chosen again."""
    try:
        run = read_run_file(run_dir)
        saved = read_trainer_state(checkpoint)["train_config"] if checkpoint is not None else run["train"]
        batch_size = saved.get("batch_size")
        return batch_size, (run.get("micro_batch") if batch_size else None)
    except (OSError, KeyError, ValueError):
        return None, None


def resolve_data_workers(setting: int | None, source: BatchSource, device: torch.device) -> int:
    """`data_workers` of a TrainConfig: None (the default) is 4 on CUDA for a source that builds its batches
    slowly (passkey prompts), else 0: token windows are slices of a memory map, and on CPU the cores train."""
    if setting is not None:
        return setting
    return 4 if device.type == "cuda" and getattr(source, "builds_slowly", False) else 0


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "auto" -> bf16 autocast on a GPU that has bf16, fp32 elsewhere."""
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if device.type == "cuda" and bf16_ok else "fp32"
    if precision == "bf16" and not bf16_ok:
        raise ConfigError(f"{torch.cuda.get_device_name(device)} has no bf16; use --precision fp32")
    return precision


def _pretrained_config(path: str) -> InfiniLlamaConfig:
    if not Path(path).is_dir():
        raise ConfigError(f"--init-from {path!r} is not a folder; pass a Hugging Face model folder")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--init-from {path!r} holds no readable model config.json ({exc})") from exc
    if not isinstance(config, InfiniLlamaConfig):
        raise ConfigError(
            f"--init-from {path!r} holds a {type(config).__name__}, not an infini_llama model; convert a "
            "Llama checkpoint first with InfiniLlamaForCausalLM.from_llama(...).save_pretrained(folder)"
        )
    return config


def _load_tokenizer(cfg: TrainConfig, base: InfiniLlamaConfig | None) -> PreTrainedTokenizerBase:
    """--tokenizer if given; else the tokenizer saved with --init-from; else the built-in BPE at the model's
    vocabulary size."""
    if cfg.tokenizer is not None:
        return load_tokenizer(cfg.tokenizer)
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json")
    if base is not None and any((Path(cfg.init_from) / name).is_file() for name in tokenizer_files):
        return load_tokenizer(cfg.init_from)
    vocab = cfg.model.get("vocab_size") or (base.vocab_size if base else PRESETS[cfg.preset]["vocab_size"])
    return load_tokenizer(None, vocab_size=vocab, cache_dir=cfg.cache_dir)


def build_model_config(
    cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase, base: InfiniLlamaConfig | None = None
) -> InfiniLlamaConfig:
    """The model of the run: the preset with `cfg.model` overrides, or the --init-from config with the
    overrides that keep its tensor shapes.

    Vocabulary: a fresh model takes `len(tokenizer)` unless `vocab_size` is set explicitly; a tokenizer with
    more tokens than an explicit or pretrained vocab_size is an error (its ids would run past the embedding).
    """
    overrides = dict(cfg.model)
    token_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if base is None:
        vocab_fixed = "vocab_size" in overrides
        overrides.setdefault("vocab_size", len(tokenizer))
        config = config_from_preset(cfg.preset, **{**token_ids, **overrides})
    else:
        vocab_fixed = True
        config = copy.deepcopy(base)
        for name, value in overrides.items():
            if name in SHAPE_FIELDS and value != getattr(base, name):
                raise ConfigError(
                    f"--init-from {cfg.init_from!r} has {name}={getattr(base, name)!r}; it cannot become "
                    f"{value!r} (tensor shapes would change): drop that override"
                )
            setattr(config, name, value)
        config.validate()
    if len(tokenizer) > config.vocab_size and vocab_fixed:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}; "
            "use a tokenizer with at most that many tokens, or (for a fresh model) drop the vocab_size "
            "setting so the model takes the tokenizer's size"
        )
    if config.attention == "infini" and cfg.seq_len < config.segment_len:
        raise ConfigError(
            f"seq_len ({cfg.seq_len}) is shorter than segment_len ({config.segment_len}): the memory would "
            f"never be written; use --seq-len >= {config.segment_len} or --set segment_len=<at most "
            f"{cfg.seq_len}>"
        )
    return config


def model_fields(config: InfiniLlamaConfig) -> dict[str, Any]:
    """The config's own fields (not the generic Hugging Face ones), as JSON data."""
    return {name: getattr(config, name) for name in sorted(CONFIG_FIELDS)}


def check_resume(
    run_dir: Path,
    checkpoint: Path | None,
    cfg: TrainConfig,
    model_config: InfiniLlamaConfig,
    source: BatchSource,
    world_size: int,
) -> None:
    """Refuse to continue a run whose checkpoint (or, before the first checkpoint, run.json) was made with
    settings that change what it computes; name every differing field."""
    if checkpoint is not None:
        saved = read_trainer_state(checkpoint)
        where = str(checkpoint)
    else:
        saved = read_run_file(run_dir)
        saved = {
            "train_config": saved["train"],
            "model_config": saved["model"],
            "world_size": saved["world_size"],
        }
        where = str(run_dir / RUN_FILE)
    diffs = config_changes(saved["train_config"], cfg)
    now_model = model_fields(model_config)
    for name in sorted(set(now_model) | set(saved["model_config"])):
        if saved["model_config"].get(name) != now_model.get(name):
            diffs[f"model.{name}"] = (saved["model_config"].get(name), now_model.get(name))
    if saved["world_size"] != world_size and cfg.global_batch is None:
        diffs["processes"] = (saved["world_size"], world_size)
    source_state = source.state_dict() if hasattr(source, "state_dict") else None
    if checkpoint is not None and saved.get("data") != source_state:
        diffs["data"] = (saved.get("data"), source_state)
    if diffs:
        listed = "; ".join(f"{k}: {old!r} then, {new!r} now" for k, (old, new) in diffs.items())
        raise ConfigError(
            f"cannot resume from {where}: the run was made with other settings ({listed}). Resume with the "
            "run's settings (they are in run.json), or start over with --overwrite or another --out"
        )
