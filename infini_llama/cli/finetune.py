"""`infini-llama finetune passkey`: its parser, and the run that resolves its settings and calls
`infini_llama.train.passkey.finetune_passkey` (imported when the command runs, so `--help` stays fast).

Defaults depend on where it runs: on a CUDA device the 300M study's recipe (500 steps of 64 × 4,096 tokens), on a
CPU the `tiny` study preset's fine-tuning recipe, so that a first try on a laptop does not ask for a quarter of a
million tokens per step.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from infini_llama.cli.names import DEFAULT_KEY_DIGITS, FINETUNE_HAYSTACKS, FINETUNE_LOSSES, PRECISIONS, STUDY_DEPTHS

DESCRIPTION = """Passkey fine-tuning of a checkpoint with the trainer of `infini-llama train`.

Each training sequence holds token-exact passkey prompts, each followed by its answer and EOS. Samples come from a
seed stream of their own, and the keys of the evaluation grids are never trained on. Haystacks vary from prompt to
prompt (the classic filler, other filler styles, training-corpus text, distractor numbers); the held-out text that
evaluation also uses is never trained on.

Defaults: on a CUDA device the 300M study's recipe (500 steps of 64 × 4,096 tokens, LR 7.5e-5 after 50 warm-up
steps, cosine to 3e-6, gate LR 1.5e-4); on a CPU the `tiny` study preset's fine-tuning recipe (a few thousand
tokens per step). The command prints the recipe it uses as it starts. Flags, then --config, then --set override
them. Keys have 5 digits, as in evaluation (the 300M study's had 4: --key-digits 4, and evaluate with the same)."""
EXAMPLES = """examples:
  infini-llama finetune passkey --checkpoint runs/tiny-infini/final --out runs/tiny-infini-pk --steps 500
  infini-llama finetune passkey --checkpoint runs/tiny-infini/final --out runs/pk --haystacks repeat,styles \\
      --curriculum-steps 1000 --loss answer
  infini-llama finetune passkey --checkpoint runs/p300/final --out runs/p300-pk --device cuda --key-digits 4
  infini-llama finetune passkey --checkpoint runs/tiny-infini/final --out runs/pk --set gate_lr=0.05
"""
# flag -> (TrainConfig field, type, help); None defaults: the recipe of the device (see the description).
TRAIN_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--steps", "steps", int, "optimizer steps"),
    ("--seq-len", "seq_len", int, "tokens per training sequence"),
    ("--global-batch", "global_batch", int, "sequences per optimizer step"),
    ("--batch-size", "batch_size", int, "sequences per forward pass on each process"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--min-lr", "min_lr", float, "learning rate at the end of the cosine decay"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up steps"),
    ("--decay-steps", "decay_steps", int, "cosine decay over the last N steps only, the peak LR held before them"),
    ("--gate-lr", "gate_lr", float, "peak learning rate of the memory gates β"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a checkpoint on a synthetic task (passkey)",
        description="Fine-tune a checkpoint with the trainer of `infini-llama train` on synthetic data.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    passkey = tasks.add_parser(
        "passkey",
        help="passkey fine-tuning (defaults: the 300M study's recipe on CUDA, the tiny study's on CPU)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    passkey.add_argument("--checkpoint", required=True, help="model folder to start from (e.g. RUN/final)")
    passkey.add_argument("--out", required=True, help="run folder (the fine-tuned model lands in OUT/final)")
    passkey.add_argument("--tokenizer", help="tokenizer folder or name (default: the one in --checkpoint)")
    for flag, name, kind, text in TRAIN_FLAGS:
        passkey.add_argument(flag, dest=name, type=kind, help=f"{text} (default: the device's recipe)")
    passkey.add_argument("--weight-decay", type=float, default=0.1)
    passkey.add_argument("--key-digits", type=int, default=DEFAULT_KEY_DIGITS)
    passkey.add_argument(
        "--depths", type=_floats, default=list(STUDY_DEPTHS), help="needle depths; each prompt draws one"
    )
    passkey.add_argument(
        "--haystacks",
        type=_names,
        default=list(FINETUNE_HAYSTACKS),
        help=f"haystack kinds, one drawn per prompt, any of {', '.join(FINETUNE_HAYSTACKS)}",
    )
    passkey.add_argument("--loss", default="all", choices=FINETUNE_LOSSES, help="all tokens (the study) or the answer")
    passkey.add_argument(
        "--pack-min-len",
        type=int,
        help="pack prompts of random lengths, each at least this many tokens, into every sequence (default: "
        "seq-len / 8; 0: one prompt per sequence)",
    )
    passkey.add_argument(
        "--curriculum-steps",
        type=int,
        default=0,
        help="start with the needle close to the question and move it away over this many steps (0: no curriculum)",
    )
    passkey.add_argument(
        "--boundary-share",
        type=float,
        default=0.0,
        help="share of the packed prompts moved so that their answer starts a new segment of the model (as after an "
        "evaluation prompt of whole segments); the loss on such answers is logged at each validation either way",
    )
    passkey.add_argument(
        "--needle-boundary-share",
        type=float,
        default=0.0,
        help="share of the packed prompts built with their needle where a segment boundary of the model cuts it "
        "(the key's sentence split across a memory update); the loss on such answers is logged at each validation "
        "either way",
    )
    passkey.add_argument("--seed", type=int, default=0, help="seed of the training samples (their own stream)")
    passkey.add_argument(
        "--exclude-eval-seed", type=int, default=0, help="never train on the keys of the evaluation grid with this seed"
    )
    passkey.add_argument(
        "--exclude-eval-samples",
        type=int,
        default=1024,
        help="samples per cell of that evaluation grid whose keys are excluded",
    )
    passkey.add_argument("--validation-batches", type=int, default=2)
    passkey.add_argument("--eval-every", type=int, default=100)
    passkey.add_argument("--save-every", type=int, default=250)
    passkey.add_argument("--log-every", type=int, default=10)
    passkey.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    passkey.add_argument("--precision", default="auto", choices=PRECISIONS)
    passkey.add_argument("--config", metavar="FILE", help="YAML or JSON file of training fields (as for train)")
    passkey.add_argument(
        "--set",
        dest="sets",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="any training field, as train spells it (--set gate_lr=0.05 --set adam_betas=0.9,0.98)",
    )
    passkey.add_argument("--resume", action="store_true", help="continue the run in --out")
    passkey.add_argument("--overwrite", action="store_true", help="delete the run in --out and start over")
    passkey.add_argument("--no-progress", action="store_true")
    passkey.set_defaults(func="infini_llama.cli.finetune:run")


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def device_recipe(device: str) -> dict[str, Any]:
    """The TrainConfig fields a fine-tuning on `device` defaults to: the 300M study's on CUDA, the tiny study's on
    CPU (its passkey fine-tuning, without the fields that belong to the study: evaluation and save steps, compile)."""
    import torch

    from infini_llama.study.config import STUDY_PRESETS
    from infini_llama.train.passkey import STUDY_RECIPE

    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_cuda:
        return dict(STUDY_RECIPE)
    tiny = STUDY_PRESETS["tiny"]["finetune"]
    keys = ("steps", "seq_len", "batch_size", "lr", "min_lr", "warmup_steps", "gate_lr")
    return {**{key: tiny[key] for key in keys}, "global_batch": tiny["batch_size"]}


def resolve(args: argparse.Namespace):
    """The TrainConfig of this fine-tuning: the device's recipe, then the flags, then --config, then --set; checked."""
    from infini_llama.train.config import TrainConfig
    from infini_llama.train.overrides import apply_overrides, load_config_file, parse_assignments

    fields = device_recipe(args.device)
    fields.update({name: getattr(args, name) for _, name, _, _ in TRAIN_FLAGS if getattr(args, name) is not None})
    fields.update(
        weight_decay=args.weight_decay,
        seed=args.seed,
        eval_every=args.eval_every,
        save_every=args.save_every,
        log_every=args.log_every,
        device=args.device,
        precision=args.precision,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        init_from=str(args.checkpoint),
        out=str(args.out),
    )
    cfg = TrainConfig(**fields)
    if args.config:
        cfg = apply_overrides(cfg, load_config_file(args.config))
    cfg = apply_overrides(cfg, parse_assignments(args.sets))
    cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    """Check the settings and the checkpoint (its manifest too), then fine-tune."""
    from infini_llama.eval.checkpoint import check_manifest, load_eval_tokenizer
    from infini_llama.train.loop import time_line
    from infini_llama.train.passkey import finetune_passkey

    cfg = resolve(args)
    check_manifest(args.checkpoint)
    tokenizer = load_eval_tokenizer(args.checkpoint, args.tokenizer)
    # The tokenizer goes in as an object (finetune_passkey's own argument), not as the TrainConfig field.
    train_fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("init_from", "out", "tokenizer")}
    print(
        f"fine-tuning: {cfg.steps} steps of {cfg.global_batch or cfg.batch_size} × {cfg.seq_len} tokens, LR {cfg.lr:g}"
        f", gate LR {cfg.gate_lr if cfg.gate_lr is not None else cfg.lr:g}",
        flush=True,
    )
    result = finetune_passkey(
        args.checkpoint,
        args.out,
        tokenizer=tokenizer,
        source_options=dict(
            key_digits=args.key_digits,
            pack_min_len=args.pack_min_len,
            depths=args.depths,
            haystacks=args.haystacks,
            loss=args.loss,
            validation_batches=args.validation_batches,
            curriculum_steps=args.curriculum_steps,
            boundary_share=args.boundary_share,
            needle_boundary_share=args.needle_boundary_share,
            exclude_eval_seed=args.exclude_eval_seed,
            exclude_eval_samples=args.exclude_eval_samples,
        ),
        **train_fields,
    )
    if result.stopped_by:
        return 130 if result.stopped_by == "SIGINT" else 143
    print(f"done: {result.step} steps, validation loss {result.val_loss:.4f}; model in {result.final_dir}")
    print(time_line(result.seconds))
    return 0
