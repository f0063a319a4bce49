"""Parser of `infini-llama eval {passkey,multineedle,perplexity,gates}` (what it runs: `infini_llama.eval.commands`)."""

from __future__ import annotations

import argparse

from infini_llama.cli.names import (
    DEFAULT_KEY_DIGITS,
    DTYPES,
    GRID_SPLITS,
    HAYSTACKS,
    LENGTH_UNITS,
    MULTI_TASKS,
    ROPE_SCALINGS,
)

DESCRIPTION = """Evaluate a checkpoint folder into a run folder.

Every command writes summary.json (all settings, model and tokenizer hashes, library versions, results) into
--out, and the grid commands write samples.jsonl (one row per sample); rerunning a killed command with the same
--out continues where it stopped. A folder the trainer wrote is checked against its manifest before it is
loaded. Compare runs with `infini-llama report RUN_DIR... --out REPORT_DIR`."""
EXAMPLES = """examples:
  infini-llama eval passkey --checkpoint runs/tiny-infini/final --lengths 256,512,1K,2K --samples 16 --out ev/pk
  infini-llama eval passkey --checkpoint runs/tiny-infini/final --memory-off --out ev/pk-off
  infini-llama eval multineedle --checkpoint runs/tiny-infini/final --lengths 512,1024 --out ev/mn
  infini-llama eval perplexity --checkpoint runs/tiny-infini/final --train-len 256 --out ev/ppl
  infini-llama eval gates --checkpoint runs/tiny-infini/final --out ev/gates
"""
TASKS: dict[str, tuple[str, str]] = {
    # task -> (description, examples)
    "passkey": (
        "Passkey retrieval: a key hidden in filler at each depth of each length, asked for at the end; scored by "
        "greedy exact match (also token-exact, substring and teacher-forced digit accuracy), with the number of "
        "memory updates between key and question recorded per sample. Prompts are token-exact.",
        "  infini-llama eval passkey --checkpoint runs/tiny-infini/final --lengths 256,512,1K,2K --out ev/pk\n"
        "  infini-llama eval passkey --checkpoint runs/tiny-infini/final --haystack book "
        "--memory-off 0,2 --out ev/pk0\n"
        "  infini-llama eval passkey --checkpoint runs/tiny-full/final --rope-scaling dynamic --train-len 256 "
        "--out ev/pk-ntk",
    ),
    "multineedle": (
        "RULER-style retrieval with several needles per prompt: several keys (multikey), several values of one key "
        "(multivalue) or several questions (multiquery); scored by the share of needles recalled.",
        "  infini-llama eval multineedle --checkpoint runs/tiny-infini/final --lengths 512,1024 --out ev/mn\n"
        "  infini-llama eval multineedle --checkpoint runs/tiny-infini/final --tasks multikey --needles 8 --out ev/mk",
    ),
    "perplexity": (
        "Loss and perplexity by position on long text (the held-out book by default, which no training reads), "
        "in buckets of positions, with the training length marked: does the model keep using its context?",
        "  infini-llama eval perplexity --checkpoint runs/tiny-infini/final --out ev/ppl\n"
        "  infini-llama eval perplexity --checkpoint runs/tiny-infini/final --text-file my.txt --max-len 4096 "
        "--out ev/ppl-mine",
    ),
    "gates": (
        "The memory gates: g = act(β) per layer and head (0: local attention only, 1: memory only), as a table, "
        "a heatmap and, for a trainer's folder, their values during training.",
        "  infini-llama eval gates --checkpoint runs/tiny-infini/final --out ev/gates",
    ),
}


def _task(tasks: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    description, examples = TASKS[name]
    return tasks.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=f"examples:\n{examples}\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def parse_lengths(text: str) -> list[int]:
    """ "256,1K,2k,4096" -> [256, 1024, 2048, 4096] (K = 1024 tokens)."""
    lengths = []
    for part in text.split(","):
        part = part.strip()
        try:
            lengths.append(int(part[:-1]) * 1024 if part[-1:] in ("k", "K") else int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"lengths must be integers or nK (e.g. 4K), got {part!r}") from None
    return lengths


def parse_floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def parse_layers(text: str) -> list[int]:
    """ "0,2" -> [0, 2]: layer indices."""
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        layers = []
    if not layers or min(layers) < 0:
        raise argparse.ArgumentTypeError(f"expected layer indices >= 0 separated by commas, got {text!r}")
    return layers


def _rope_factor(text: str) -> float | str:
    """A RoPE scaling factor: a number > 0, or "length" (YaRN stretched by each prompt's length)."""
    if text.strip().lower() == "length":
        return "length"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'length', got {text!r}") from None


def parse_names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _common(parser: argparse.ArgumentParser, *, grid: bool = True) -> None:
    parser.add_argument("--checkpoint", required=True, help="Hugging Face model folder (ours or any causal LM)")
    parser.add_argument("--tokenizer", help="tokenizer folder or name (default: the one in --checkpoint)")
    parser.add_argument("--out", required=True, help="run folder for summary.json / samples.jsonl")
    parser.add_argument("--label", help="name of this run in reports (default: the checkpoint folder's name)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="weights dtype")
    if not grid:
        return
    parser.add_argument("--batch-size", type=int, default=8, help="samples run together")
    parser.add_argument(
        "--batch-tokens",
        type=int,
        help="instead of --batch-size, as many samples together as this many tokens hold at each length (e.g. 65536)",
    )
    parser.add_argument(
        "--chunk-len", type=int, help="tokens per forward call (default: 1,024, rounded up to whole segments)"
    )
    parser.add_argument(
        "--memory-off",
        nargs="?",
        const=True,
        default=False,
        type=parse_layers,
        metavar="LAYERS",
        help="ablation: memory gates forced to g = 0, in every layer, or with LAYERS (e.g. 0,2) in those layers only",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _grid_options(parser: argparse.ArgumentParser, default_lengths: str) -> None:
    parser.add_argument(
        "--lengths",
        type=parse_lengths,
        default=parse_lengths(default_lengths),
        help=f"prompt lengths in tokens, K = 1024 (default {default_lengths})",
    )
    parser.add_argument("--samples", type=int, default=16, help="samples per cell (same seeds in every cell)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--haystack", default="repeat", choices=HAYSTACKS, help="filler between the needles")
    parser.add_argument(
        "--segment-len", type=int, help="segment used to count memory updates (default: the model's segment_len)"
    )
    parser.add_argument(
        "--no-bos",
        dest="bos",
        action="store_false",
        default=None,
        help="do not start prompts with the tokenizer's BOS token",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: passkey, multineedle, perplexity, gates",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    passkey = _task(tasks, "passkey", "passkey retrieval grid: lengths × depths × samples")
    _common(passkey)
    _grid_options(passkey, "256,512,1024")
    passkey.add_argument(
        "--depths",
        type=parse_floats,
        default=[0.0, 0.25, 0.5, 0.75, 1.0],
        help="needle depths, fractions of the filler before the needle",
    )
    passkey.add_argument("--key-digits", type=int, default=DEFAULT_KEY_DIGITS)
    passkey.add_argument(
        "--unit",
        default="tokens",
        choices=LENGTH_UNITS,
        help="length unit: tokens (exact), or chars (Landmark-style, token count recorded)",
    )
    passkey.add_argument(
        "--split",
        default="test",
        choices=GRID_SPLITS,
        help="test (the reported grid) or validation (the same design on other samples, for choosing a recipe)",
    )
    passkey.add_argument(
        "--rope-scaling",
        choices=ROPE_SCALINGS,
        help="full-attention models: RoPE scaled as transformers defines it (dynamic NTK or YaRN), no training",
    )
    passkey.add_argument(
        "--rope-factor", type=_rope_factor, default=1.0,
        help="the scaling's factor (default 1); for yarn, 'length': the prompt's length / the training length",
    )  # fmt: skip
    passkey.add_argument(
        "--train-len", type=int, help="length the model was trained at (default: from its training run's run.json)"
    )
    passkey.set_defaults(func="infini_llama.eval.commands:_passkey")

    multi = _task(tasks, "multineedle", "RULER-style multi-key / multi-value / multi-query retrieval")
    _common(multi)
    _grid_options(multi, "512,1024")
    multi.add_argument("--tasks", type=parse_names, default=list(MULTI_TASKS), help=f"any of {MULTI_TASKS}")
    multi.add_argument("--needles", type=int, default=4, help="needles per prompt")
    multi.add_argument("--max-new-tokens", type=int, default=128)
    multi.set_defaults(func="infini_llama.eval.commands:_multineedle")

    ppl = _task(tasks, "perplexity", "loss and perplexity by position on long held-out text")
    _common(ppl)
    ppl.add_argument(
        "--train-len", type=int, help="the model's training length (default: from its training run's run.json)"
    )
    ppl.add_argument("--max-len", type=int, help="tokens per window (default: 8 × --train-len)")
    ppl.add_argument("--bucket-len", type=int, default=256, help="positions per bucket")
    ppl.add_argument("--windows", type=int, default=4, help="windows of --max-len tokens to average over")
    ppl.add_argument("--text-file", action="append", help="text file(s) to use instead of the held-out book")
    ppl.set_defaults(func="infini_llama.eval.commands:_perplexity")

    gates = _task(tasks, "gates", "memory gate values g per layer and head (table + heatmap)")
    _common(gates, grid=False)
    gates.set_defaults(func="infini_llama.eval.commands:_gates")
