"""The `infini-llama` command: one subcommand per task, each defined next to the code it runs.

A command module exposes `add_parser(subparsers)`, which adds its subparser and sets `func` (called with the
parsed arguments, returning an exit code or None). Modules are imported only when their command runs, so
`infini-llama --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

# subcommand name -> module holding its add_parser()
COMMANDS: dict[str, str] = {
    "train": "infini_llama.train.cli",
    "eval": "infini_llama.eval.commands",
    "finetune": "infini_llama.eval.finetune",
    "report": "infini_llama.eval.report",
    "generate": "infini_llama.generate",
    "study": "infini_llama.study.cli",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infini-llama",
        description="Pretrain and study LLaMA models with Infini-attention.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, module in COMMANDS.items():
        if wanted is None or name == wanted:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=f"see `infini-llama {name} --help`")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if hasattr(args, "command_line"):  # a command that records its command line (set_defaults(command_line=None))
        args.command_line = shlex.join(["infini-llama", *argv])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
