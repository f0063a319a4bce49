"""The `infini-llama` command: one subcommand per task.

The parsers live in this package (`cli.train`, `cli.evaluate`, ...) and import nothing heavy, so `infini-llama
--help` and every `COMMAND --help` answer in well under two seconds; the code a command runs is named by its
parser as "module:function" and imported only when the command runs.

Every error a command meets ends it with one line on stderr and a non-zero exit status: 2 for a setting or input
that cannot work, 1 for a run that had to stop part-way (or a checkpoint it refused), 130 for Ctrl-C. `--debug`
(anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Callable

from infini_llama import __version__

# subcommand name -> module holding its add_parser()
COMMANDS: dict[str, str] = {
    "train": "infini_llama.cli.train",
    "eval": "infini_llama.cli.evaluate",
    "finetune": "infini_llama.cli.finetune",
    "report": "infini_llama.cli.report",
    "generate": "infini_llama.cli.generate",
    "study": "infini_llama.cli.study",
}
DEBUG_FLAG = "--debug"
DEBUG_ENV = "INFINI_LLAMA_DEBUG"
EXAMPLES = """examples:
  infini-llama study --preset tiny --out runs/study      # the whole study on 2 CPU cores (about 9 minutes)
  infini-llama train --preset tiny --attention infini --out runs/tiny-infini
  infini-llama eval passkey --checkpoint runs/tiny-infini/final --out ev/pk
  infini-llama generate --checkpoint runs/tiny-infini/final --prompt-file prompt.txt
  infini-llama COMMAND --help                            # each command's options and examples
"""


class Parser(argparse.ArgumentParser):
    """argparse's parser with a usage error as one line ("infini-llama eval passkey: error: ... (see --help)")
    instead of the usage block and the error; sub-command parsers are of the same class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = Parser(
        prog="infini-llama",
        description="Pretrain and study LLaMA models with Infini-attention.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"infini-llama {__version__}")
    parser.add_argument(
        DEBUG_FLAG, action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error (any position)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def debugging() -> bool:
    """Whether errors should show their traceback (`--debug`, or INFINI_LLAMA_DEBUG=1, which worker processes
    inherit)."""
    return os.environ.get(DEBUG_ENV) == "1"


def target(name: str) -> Callable[[argparse.Namespace], int | None]:
    """The function a parser names as "package.module:function", imported now."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if DEBUG_FLAG in argv:
        argv = [arg for arg in argv if arg != DEBUG_FLAG]
        os.environ[DEBUG_ENV] = "1"
    args = build_parser(argv).parse_args(argv)
    if hasattr(args, "command_line"):  # a command that records its command line (set_defaults(command_line=None))
        args.command_line = shlex.join(["infini-llama", *argv])
    name = " ".join(part for part in (args.command, getattr(args, "task", None)) if part)
    try:
        func = args.func if callable(args.func) else target(args.func)
        return int(func(args) or 0)
    except KeyboardInterrupt:
        if debugging():
            raise
        print(f"infini-llama {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debugging():
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process meets the same error: say it once
            print(f"infini-llama {name}: {error_line(exc)}", file=sys.stderr)
        return exit_status(exc)


def error_line(exc: BaseException) -> str:
    """One line for `exc`: its message for the errors a user can fix (bad settings, missing or damaged files), the
    exception's type too for anything else."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (ValueError, TypeError, OSError, KeyError, ImportError)):
        if isinstance(exc, KeyError):
            message = f"missing {message}"
        return f"error: {message}"
    return f"error: {type(exc).__name__}: {message} (run again with --debug for the traceback)"


def exit_status(exc: BaseException) -> int:
    """1 for a run that stopped part-way or a checkpoint refused (RunError, CheckpointError), else 2."""
    stopped = {"RunError", "CheckpointError"}
    if any(cls.__name__ in stopped for cls in type(exc).__mro__):
        return 1
    if isinstance(exc, (ValueError, TypeError, OSError, KeyError, ImportError)):
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
