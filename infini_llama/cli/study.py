"""Parser of `infini-llama study` (what it runs: `infini_llama.study.cli`)."""

from __future__ import annotations

import argparse

from infini_llama.cli.names import STUDY_PRESET_MODELS, STUDY_PRESETS, preset_lines

DESCRIPTION = """Reproduce the Infini-attention study in one command.

Pretrain the Infini-attention arm and the full-attention baseline on the same data, tokens, seeds and recipe;
fine-tune both on passkey retrieval (varied haystacks; with an LR grid, the LR chosen per arm at the training
length); evaluate passkey accuracy from below the training length to many times it on the classic filler and on
held-out text (Infini also with its memory switched off, the baseline also with RoPE scaled), perplexity by
position and the gates; write OUT/REPORT.md and OUT/results.json, and print a summary table. With --seeds, all of
it once per seed in OUT/seed-<s>/, and a report across seeds. Run the same command again to continue a study that
was stopped. Every --set / --config value is checked before anything is written."""
EPILOG = f"""presets (the model each trains; `train --preset tiny` is another, larger model):
{preset_lines(STUDY_PRESET_MODELS)}
  tiny runs on 2 CPU cores in about 9 minutes per seed; mini wants one GPU (18 minutes for 3 seeds on an H200),
  paper-h200 one H200, paper-short two, paper-300m hours of GPUs.

examples:
  infini-llama study --preset tiny --out runs/study                      # run again to continue a stopped study
  infini-llama study --preset tiny --seeds 0,1,2,3,4 --out runs/tiny-5
  infini-llama study --preset tiny --out runs/seg --sweep segment_len=8,16,32
  infini-llama study --preset tiny --control-arm --ablate gate_trainable=false --ablate gate_init=2 --out runs/gates
  infini-llama study --preset tiny --set pretrain.steps=100 --set eval_samples=8 --out runs/quick
  infini-llama study --preset mini --device cuda --out runs/mini
  infini-llama study --preset mini --out runs/m --arms infini      # one machine; --arms full on another, then
  infini-llama study --preset mini --out runs/m --report-only      #   copy its full/ into runs/m and report
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="reproduce the Infini-attention study: both arms, pretraining to report",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
    )
    parser.add_argument(
        "--preset", default="tiny", choices=STUDY_PRESETS, help="the study's model and recipes (listed below)"
    )
    parser.add_argument("--out", required=True, help="study folder")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="the seed of the whole study (default 0)")
    seeds.add_argument(
        "--seeds", type=parse_seeds, default=None, metavar="S1,S2,...",
        help="run the whole study once per seed (OUT/seed-<s>/) and report per seed and across seeds; a study of "
        "several seeds can be continued with more (0,1 then 0,1,2)",
    )  # fmt: skip
    parser.add_argument(
        "--sweep", action="append", default=[], metavar="KEY=V1,V2",
        help="run one arm per value, e.g. gate_activation=sigmoid,hard_sigmoid, memory_update=linear,delta, "
        "segment_len=64,128,256, gate_trainable=true,false (false: the gate frozen at gate_init), "
        "pretrain.gate_lr=0.01,none, pretrain.lr=1e-3,2e-3, finetune.lr=..., passkey.curriculum_steps=0,1000, "
        "seed=0,1; "
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
        help="override a study field, e.g. pretrain.steps=100, finetune.lr=3e-4, model.segment_len=32 (or "
        "segment_len=32, as train spells it), eval_samples=8, finetune_lr_grid=1e-3,2e-3,4e-3, "
        "eval_rope_scaling.rope_type=yarn (several rows: eval_rope_scaling=dynamic,yarn:16), eval_haystacks=repeat; "
        "checked before anything starts",
    )  # fmt: skip
    parser.add_argument(
        "--config", metavar="FILE",
        help="YAML or JSON file of the same settings as --set (sections nested or dotted); --set values win",
    )  # fmt: skip
    parser.add_argument(
        "--control-arm", action="store_true",
        help="also train the local control: the Infini arm's segment-local attention with no memory and no gate "
        "(the same as --set control_arm=true)",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the study in --out (a folder holding study.json) and start over; any other folder is refused",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--no-estimate", action="store_true",
        help="skip the probe (a few seconds) that prints the study's estimated duration on this host at its start, "
        "and the whole study's time left printed as it runs",
    )  # fmt: skip
    parser.add_argument(
        "--estimate-only", action="store_true",
        help="print the study's estimated duration on this host (the probe; the time left of a study continued) and "
        "stop, training nothing: whether it fits a GPU lease; --out is claimed as by a run, so the same command "
        "without this flag starts it",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=None,
        help="arms trained at once, each in its own process with a share of the CPU threads; an LR grid's "
        "fine-tunings also run at once, each as one job (default: one per CPU core up to the number of arms on CPU, "
        "one per GPU on GPUs: with several GPUs each process keeps one; a small model leaves a GPU room for several)",
    )  # fmt: skip
    parser.add_argument(
        "--arms", type=parse_names, default=None, metavar="ARM1,ARM2,...",
        help="run only these arms (of every seed), e.g. --arms infini on one machine and --arms full on another "
        "(names or shell patterns: --arms 'infini*' takes every Infini arm of a sweep; with several seeds "
        "--arms 'seed-1/*' takes one seed's arms); the report is written once every arm has finished (see "
        "--report-only)",
    )  # fmt: skip
    parser.add_argument(
        "--report-only", action="store_true",
        help="train and evaluate nothing: report the study in --out from its arms' finished stages (arm folders "
        "copied in from runs with --arms need no model weights); refused while an arm has stages left. With --arms, "
        "report those arms alone (a screen's arms finished so far), naming the others as left out",
    )  # fmt: skip
    parser.set_defaults(func="infini_llama.study.cli:main", command_line=None)


def parse_names(text: str) -> list[str]:
    """ "infini,full" -> ["infini", "full"]."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected arm names separated by commas, got {text!r}")
    return names


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers separated by commas, got {text!r}") from None
