"""Parser of `infini-llama train` (what it runs: `infini_llama.train.cli`)."""

from __future__ import annotations

import argparse

from infini_llama.cli.names import ATTENTIONS, PRECISIONS, TRAIN_PRESET_MODELS, TRAIN_PRESETS, preset_lines

DESCRIPTION = """Pretrain a model from a preset's recipe, every value overridable.

Settings resolve as: the preset's recipe, then --config, then the flags, then --set (model fields too, as
`segment_len=32` or `model.segment_len=32`). The run prints the model it builds."""
EPILOG = f"""presets (the model each builds; `study --preset` names study presets, whose tiny is a smaller model):
{preset_lines(TRAIN_PRESET_MODELS)}

examples:
  infini-llama train --preset tiny --attention infini --out runs/tiny-infini
  infini-llama train --preset tiny --attention full --out runs/tiny-full --steps 300 --lr 3e-3
  infini-llama train --config my_run.yaml --set segment_len=32 --set gate_lr=0.02
  infini-llama train --out runs/tiny-infini --resume
  torchrun --nproc_per_node 2 -m infini_llama train --preset mini --dist fsdp --out runs/mini
"""

# (flag, TrainConfig field, type, help); flags left out keep the recipe's value.
VALUE_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--out", "out", str, "run folder (default runs/<preset>-<attention>)"),
    ("--steps", "steps", int, "optimizer steps"),
    ("--batch-size", "batch_size", int, "sequences per forward pass on each process"),
    (
        "--grad-accum",
        "grad_accum",
        int,
        "forward passes per optimizer step (drops the recipe's global batch)",
    ),
    ("--global-batch", "global_batch", int, "sequences per optimizer step over all processes"),
    ("--seq-len", "seq_len", int, "tokens per training sequence"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--min-lr", "min_lr", float, "learning rate at the end of the cosine decay"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up steps"),
    ("--decay-steps", "decay_steps", int, "cosine decay over the last N steps only, the peak LR held before them"),
    ("--gate-lr", "gate_lr", float, "peak learning rate of the memory gates β"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay of matrices"),
    ("--grad-clip", "grad_clip", float, "max gradient norm (0: no clipping)"),
    ("--seed", "seed", int, "seed of initialisation and data order"),
    ("--eval-every", "eval_every", int, "steps between validation losses (0: start and end only)"),
    ("--eval-windows", "eval_windows", int, "validation windows per evaluation"),
    ("--log-every", "log_every", int, "steps between log records"),
    ("--save-every", "save_every", int, "steps between checkpoints (0: at the end only)"),
    ("--keep", "keep", int, "checkpoints to keep"),
    ("--device", "device", str, "auto, cpu, cuda or cuda:N"),
    ("--data-workers", "data_workers", int, "processes building batches ahead (default: 4 for passkey data on CUDA)"),
    ("--dataset", "dataset", str, "HF dataset name or local dataset folder (instead of --data)"),
    ("--dataset-config", "dataset_config", str, "HF dataset configuration name"),
    ("--text-field", "text_field", str, "JSONL field / dataset column holding the text"),
    ("--repeat-fraction", "repeat_fraction", float, "share of training windows whose second half repeats the first"),
    ("--tokenizer", "tokenizer", str, "tokenizer folder or HF name (default: built-in BPE)"),
    ("--cache-dir", "cache_dir", str, "cache of tokenizers and tokenized data"),
    ("--init-from", "init_from", str, "start from the weights of this HF model folder"),
    ("--wandb-project", "wandb_project", str, "W&B project (with --wandb)"),
)
SWITCHES: tuple[tuple[str, str, bool, str], ...] = (
    ("--compile", "compile", True, "torch.compile each decoder layer (the default on CUDA; this flag: also on CPU)"),
    ("--no-compile", "compile", False, "run eagerly, also on CUDA"),
    ("--checkpointing", "checkpointing", True, "activation checkpointing (less memory, ~30%% more compute)"),
    ("--deterministic", "deterministic", True, "deterministic GPU kernels: a rerun is bit-exact (a little slower)"),
    ("--resume", "resume", True, "continue the run in --out from its latest checkpoint"),
    ("--overwrite", "overwrite", True, "delete the run in --out and start over"),
    ("--wandb", "wandb", True, "also log to Weights & Biases (needs `pip install wandb`)"),
    ("--no-tensorboard", "tensorboard", False, "do not write TensorBoard events"),
    ("--no-progress", "progress", False, "no progress bar"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="pretrain a model (Infini-attention or the full-attention baseline)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        choices=TRAIN_PRESETS,
        default=argparse.SUPPRESS,
        help="model and recipe (default tiny; the models are listed below)",
    )
    parser.add_argument(
        "--attention", choices=ATTENTIONS, default=argparse.SUPPRESS, help="the arm (local: the memory-free control)"
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=argparse.SUPPRESS, help="auto: bf16 on CUDA, else fp32"
    )
    for flag, name, kind, text in VALUE_FLAGS:
        parser.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, help=text)
    parser.add_argument(
        "--data",
        nargs="+",
        default=argparse.SUPPRESS,
        help="local .txt/.jsonl/.parquet files, folders or globs",
    )
    parser.add_argument("--dist", choices=("ddp", "fsdp"), default=argparse.SUPPRESS, help="under torchrun")
    for flag, name, value, text in SWITCHES:
        action = "store_true" if value else "store_false"
        parser.add_argument(flag, dest=name, action=action, default=argparse.SUPPRESS, help=text)
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings, or a run.json")
    parser.add_argument(
        "--set",
        dest="sets",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="any training or model field, repeatable: --set segment_len=32 --set adam_betas=0.9,0.98",
    )
    parser.set_defaults(func="infini_llama.train.cli:run")
