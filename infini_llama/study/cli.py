"""`infini-llama study`: both arms pretrained, fine-tuned, evaluated and reported, in one command."""

from __future__ import annotations

import argparse
import sys

from infini_llama.study.config import STUDY_PRESETS, parse_sweep, parse_value, study_config


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="reproduce the Infini-attention study: both arms, pretraining to report",
        description=(
            "Pretrain the Infini-attention arm and the full-attention baseline on the same data, tokens, seeds "
            "and recipe; fine-tune both on passkey retrieval; evaluate passkey accuracy from the training length "
            "to many times it (and, for Infini, with the memory switched off), perplexity by position and the "
            "gates; write OUT/REPORT.md and OUT/results.json. Run the same command again to continue a study "
            "that was stopped."
        ),
    )
    parser.add_argument("--preset", default="tiny", choices=sorted(STUDY_PRESETS))
    parser.add_argument("--out", required=True, help="study folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sweep", action="append", default=[], metavar="KEY=V1,V2",
        help="run one arm per value, e.g. gate_activation=sigmoid,hard_sigmoid, memory_update=linear,delta, "
        "segment_len=64,128,256, gate_lr=0.01,none; training values (lr, ...) are given to both arms",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override a study field, e.g. pretrain.steps=100, finetune.lr=3e-4, model.segment_len=32, "
        "eval_samples=8",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--overwrite", action="store_true", help="delete a study already in --out and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--jobs", type=int, default=None,
        help="arms trained at once, each in its own process with a share of the CPU threads (default: one per "
        "CPU core up to the number of arms on CPU, 1 on a GPU)",
    )  # fmt: skip
    parser.set_defaults(func=main, command_line=None)


def parse_sets(items: list[str]) -> dict:
    """["pretrain.steps=100", "eval_samples=8"] -> {"pretrain": {"steps": 100}, "eval_samples": 8}."""
    overrides: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes FIELD=VALUE, got {item!r}")
        section, dot, name = key.partition(".")
        if dot:
            overrides.setdefault(section, {})[name] = parse_value(value)
        else:
            overrides[key] = parse_value(value)
    return overrides


def main(args: argparse.Namespace) -> int:
    from infini_llama.study.runner import StudyError, run_study

    try:
        sweeps = dict(parse_sweep(s) for s in args.sweep)
        cfg = study_config(args.preset, sweeps=sweeps, seed=args.seed, **parse_sets(args.set))
        run_study(
            cfg,
            args.out,
            overwrite=args.overwrite,
            device=args.device,
            progress=not args.no_progress,
            jobs=args.jobs,
            command=args.command_line,
        )
    except (StudyError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"infini-llama study: error: {exc}", file=sys.stderr)
        return 2
    return 0
