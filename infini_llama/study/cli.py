"""`infini-llama study` (its parser: `infini_llama.cli.study`): both arms pretrained, fine-tuned, evaluated and
reported, in one command."""

from __future__ import annotations

import argparse
import sys

from infini_llama.cli import debugging


def main(args: argparse.Namespace) -> int:
    """Check every setting, then run the study. A setting error is one line on stderr and exit status 2, before
    anything is written; a training stage that had to stop part-way (or a checkpoint it refused) one line and exit
    status 1: the same command continues from there."""
    from infini_llama.study.config import study_config
    from infini_llama.study.runner import StudyError, run_study
    from infini_llama.study.settings import check_study, study_settings, typed_sweep_value
    from infini_llama.study.sweeps import parse_ablation, parse_sweep
    from infini_llama.train import CheckpointError, RunError

    try:
        sweeps = {key: [typed_sweep_value(key, v) for v in values] for key, values in map(parse_sweep, args.sweep)}
        seeds = args.seeds if args.seeds is not None else [0 if args.seed is None else args.seed]
        sets = study_settings(args.set, args.config)
        if args.control_arm:
            sets["control_arm"] = True
        if args.ablate:
            sets["ablations"] = [
                {key: typed_sweep_value(key, v) for key, v in parse_ablation(a).items()} for a in args.ablate
            ]
        cfg = study_config(args.preset, sweeps=sweeps, seeds=seeds, **sets)
        check_study(cfg)
        run_study(
            cfg,
            args.out,
            overwrite=args.overwrite,
            device=args.device,
            progress=not args.no_progress,
            jobs=args.jobs,
            command=args.command_line,
            estimate=not (args.no_estimate or args.report_only),
            arms=args.arms,
            report_only=args.report_only,
            estimate_only=args.estimate_only,
        )
    except (StudyError, ValueError, TypeError, FileNotFoundError) as exc:
        if debugging():
            raise
        print(f"infini-llama study: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except (RunError, CheckpointError) as exc:
        if debugging():
            raise
        print(f"infini-llama study: stopped: {exc} (run the same command again to continue)", file=sys.stderr)
        return 1
    return 0
