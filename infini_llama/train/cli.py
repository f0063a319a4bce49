"""`infini-llama train` (its parser: `infini_llama.cli.train`): resolve the config, check it, train."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    """Resolve the config and train. A setting error raises before anything is written (the command turns it into
    one line on stderr and exit status 2; a run that had to stop part-way, or a checkpoint it refused: 1)."""
    from infini_llama.train.loop import time_line, train
    from infini_llama.train.manifest import MANIFEST, verify_folder
    from infini_llama.train.overrides import resolve_config

    flags = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config", "sets")}
    if "attention" in flags:
        flags["model.attention"] = flags.pop("attention")
    main_process = os.environ.get("RANK", "0") == "0"
    cfg = resolve_config(flags, config_file=args.config, sets=args.sets)
    if cfg.init_from and (Path(cfg.init_from) / MANIFEST).is_file():  # a folder the trainer wrote: check it first
        verify_folder(Path(cfg.init_from))
    if main_process:
        print(f"model: {describe_model(cfg)}", flush=True)
    result = train(cfg)
    if result.stopped_by:
        return 130 if result.stopped_by == "SIGINT" else 143
    if main_process:
        print(f"done: {result.step} steps, val loss {result.val_loss:.4f}, model in {result.final_dir}")
        print(time_line(result.seconds))
    return 0


def describe_model(cfg) -> str:
    """The model a TrainConfig builds, in one line: its preset's model with the overrides applied."""
    from infini_llama.models import config_from_preset

    if cfg.init_from:
        return f"the one in {cfg.init_from} (--init-from)"
    model = config_from_preset(cfg.preset, **cfg.model)
    text = (
        f"preset {cfg.preset} of `train`: {model.num_hidden_layers} layers, width {model.hidden_size:,} "
        f"({model.num_attention_heads} heads), vocabulary {model.vocab_size:,}, {model.attention} attention"
    )
    if model.attention != "full":
        text += f", segment {model.segment_len:,}"
    if model.attention == "infini":
        text += f", {model.memory_update} memory, {model.gate_activation} gate"
    return text
