"""`infini-llama study`: both arms pretrained, fine-tuned, evaluated and reported, in one command."""

from __future__ import annotations

import argparse
import sys

from infini_llama.study.config import STUDY_PRESETS, study_config
from infini_llama.study.sweeps import parse_ablation, parse_sweep, parse_value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="reproduce the Infini-attention study: both arms, pretraining to report",
        description=(
            "Pretrain the Infini-attention arm and the full-attention baseline on the same data, tokens, seeds "
            "and recipe; fine-tune both on passkey retrieval (on varied haystacks, at each LR of the grid, the LR "
            "chosen per arm at the training length); evaluate passkey accuracy from below the training length to "
            "many times it on the classic filler and on held-out text (and, for Infini, with the memory switched "
            "off; for the baseline, with RoPE scaled), perplexity by position and the gates; write OUT/REPORT.md "
            "and OUT/results.json. With --seeds, all of it once per seed in OUT/seed-<s>/, and a report across "
            "seeds. Run the same command again to continue a study that was stopped."
        ),
    )
    parser.add_argument("--preset", default="tiny", choices=sorted(STUDY_PRESETS))
    parser.add_argument("--out", required=True, help="study folder")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="the seed of the whole study (default 0)")
    seeds.add_argument(
        "--seeds", type=parse_seeds, default=None, metavar="S1,S2,...",
        help="run the whole study once per seed (OUT/seed-<s>/) and report per seed and across seeds",
    )  # fmt: skip
    parser.add_argument(
        "--sweep", action="append", default=[], metavar="KEY=V1,V2",
        help="run one arm per value, e.g. gate_activation=sigmoid,hard_sigmoid, memory_update=linear,delta, "
        "segment_len=64,128,256, gate_trainable=true,false (false: the gate frozen at gate_init), "
        "pretrain.gate_lr=0.01,none, pretrain.lr=1e-3,2e-3, finetune.lr=..., seed=0,1; "
        "training values name their stage; values the baseline does not have multiply the Infini arm only",
    )  # fmt: skip
    parser.add_argument(
        "--ablate", action="append", default=[], metavar="KEY=VALUE[+KEY=VALUE]",
        help="one more arm per --ablate, changing these values alone (keys as for --sweep; the baseline is not "
        "repeated for values it does not have), e.g. --ablate gate_trainable=false --ablate gate_init=2 --ablate "
        "pretrain.gate_lr=none+finetune.gate_lr=none",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override a study field, e.g. pretrain.steps=100, finetune.lr=3e-4, model.segment_len=32, "
        "eval_samples=8, finetune_lr_grid=1e-3,2e-3,4e-3, eval_rope_scaling.rope_type=yarn, eval_haystacks=repeat",
    )  # fmt: skip
    parser.add_argument(
        "--control-arm", action="store_true",
        help="also train the local control: the Infini arm's segment-local attention with no memory and no gate "
        "(the same as --set control_arm=true)",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--overwrite", action="store_true", help="delete a study already in --out and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--jobs", type=int, default=None,
        help="arms trained at once, each in its own process with a share of the CPU threads (default: one per "
        "CPU core up to the number of arms on CPU, one per GPU on GPUs: with several GPUs each process keeps one)",
    )  # fmt: skip
    parser.set_defaults(func=main, command_line=None)


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers separated by commas, got {text!r}") from None


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
    """Run the study; a setting error is one line on stderr and exit status 2, a training stage that had to stop
    part-way (or a checkpoint it refused) one line and exit status 1: the same command continues from there."""
    from infini_llama.study.runner import StudyError, run_study
    from infini_llama.train import CheckpointError, RunError

    try:
        sweeps = dict(parse_sweep(s) for s in args.sweep)
        seeds = args.seeds if args.seeds is not None else [0 if args.seed is None else args.seed]
        sets = parse_sets(args.set)
        if args.control_arm:
            sets["control_arm"] = True
        if args.ablate:
            sets["ablations"] = [parse_ablation(a) for a in args.ablate]
        cfg = study_config(args.preset, sweeps=sweeps, seeds=seeds, **sets)
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
    except (RunError, CheckpointError) as exc:
        print(f"infini-llama study: stopped: {exc} (run the same command again to continue)", file=sys.stderr)
        return 1
    return 0
