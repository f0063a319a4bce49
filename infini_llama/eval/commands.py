"""`infini-llama eval {passkey,multineedle,perplexity,gates}`: evaluate a checkpoint folder into a run folder.

Every command writes summary.json (all settings, model and tokenizer hashes, library versions, results) into
--out, and the grid commands write samples.jsonl (one row per sample); rerunning a killed command with the same
--out continues where it stopped. Compare runs with `infini-llama report RUN_DIR... --out REPORT_DIR`.

Examples:
  infini-llama eval passkey --checkpoint runs/tiny-infini/final --lengths 256,512,1K,2K --samples 16 --out ev/pk
  infini-llama eval passkey --checkpoint runs/tiny-infini/final --memory-off --out ev/pk-off
  infini-llama eval perplexity --checkpoint runs/tiny-infini/final --train-len 256 --out ev/ppl
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from infini_llama.eval.checkpoint import DTYPES, load_eval_tokenizer, load_model, training_length
from infini_llama.eval.diagnostics import run_gates
from infini_llama.eval.multineedle import MULTI_TASKS, MultiNeedleConfig, run_multineedle_grid
from infini_llama.eval.passkey import DEFAULT_KEY_DIGITS, GRID_SPLITS, LENGTH_UNITS
from infini_llama.eval.passkey_grid import PasskeyGridConfig, run_passkey_grid
from infini_llama.eval.perplexity import PerplexityConfig, perplexity_by_position
from infini_llama.eval.prompts import HAYSTACKS
from infini_llama.eval.rope_scaling import rope_scaling
from infini_llama.layers.rope import ROPE_SCALINGS

EVAL_TASKS = ("passkey", "multineedle", "perplexity", "gates")


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


def parse_names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _common(parser: argparse.ArgumentParser, *, grid: bool = True) -> None:
    parser.add_argument("--checkpoint", required=True, help="Hugging Face model folder (ours or any causal LM)")
    parser.add_argument("--tokenizer", help="tokenizer folder or name (default: the one in --checkpoint)")
    parser.add_argument("--out", required=True, help="run folder for summary.json / samples.jsonl")
    parser.add_argument("--label", help="name of this run in reports (default: the checkpoint folder's name)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weights dtype")
    if not grid:
        return
    parser.add_argument("--batch-size", type=int, default=8, help="samples run together")
    parser.add_argument("--chunk-len", type=int, help="tokens per forward call (default: the model's segment)")
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
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    passkey = tasks.add_parser("passkey", help="passkey retrieval grid: lengths × depths × samples")
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
        choices=tuple(GRID_SPLITS),
        help="test (the reported grid) or validation (the same design on other samples, for choosing a recipe)",
    )
    passkey.add_argument(
        "--rope-scaling",
        choices=ROPE_SCALINGS,
        help="full-attention models: RoPE scaled as transformers defines it (dynamic NTK or YaRN), no training",
    )
    passkey.add_argument("--rope-factor", type=float, default=1.0, help="the scaling's factor (default 1)")
    passkey.add_argument(
        "--train-len", type=int, help="length the model was trained at (default: from its training run's run.json)"
    )
    passkey.set_defaults(func=_passkey)

    multi = tasks.add_parser("multineedle", help="RULER-style multi-key / multi-value / multi-query retrieval")
    _common(multi)
    _grid_options(multi, "512,1024")
    multi.add_argument("--tasks", type=parse_names, default=list(MULTI_TASKS), help=f"any of {MULTI_TASKS}")
    multi.add_argument("--needles", type=int, default=4, help="needles per prompt")
    multi.add_argument("--max-new-tokens", type=int, default=128)
    multi.set_defaults(func=_multineedle)

    ppl = tasks.add_parser("perplexity", help="loss and perplexity by position on long held-out text")
    _common(ppl)
    ppl.add_argument(
        "--train-len", type=int, help="the model's training length (default: from its training run's run.json)"
    )
    ppl.add_argument("--max-len", type=int, help="tokens per window (default: 8 × --train-len)")
    ppl.add_argument("--bucket-len", type=int, default=256, help="positions per bucket")
    ppl.add_argument("--windows", type=int, default=4, help="windows of --max-len tokens to average over")
    ppl.add_argument("--text-file", action="append", help="text file(s) to use instead of the held-out book")
    ppl.set_defaults(func=_perplexity)

    gates = tasks.add_parser("gates", help="memory gate values g per layer and head (table + heatmap)")
    _common(gates, grid=False)
    gates.set_defaults(func=_gates)


def reports_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input (a missing checkpoint, a length the template does not fit in, …) ends the command with its
    message and exit code 2 instead of a traceback."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ValueError, FileNotFoundError) as exc:
            print(
                f"infini-llama {args.command} {getattr(args, 'task', '')}: error: {exc}".replace("  ", " "),
                file=sys.stderr,
            )
            return 2

    return run


def _load(args: argparse.Namespace):
    tokenizer = load_eval_tokenizer(args.checkpoint, args.tokenizer)
    model = load_model(args.checkpoint, dtype=args.dtype, device=args.device)
    return model, tokenizer


@reports_errors
def _passkey(args: argparse.Namespace) -> int:
    scaling = None
    if args.rope_scaling:
        train_len = args.train_len or training_length(args.checkpoint)
        if train_len is None:
            raise ValueError("--rope-scaling needs the training length: pass --train-len")
        scaling = rope_scaling(args.rope_scaling, train_len, args.rope_factor)
    config = PasskeyGridConfig(
        lengths=args.lengths,
        depths=args.depths,
        samples=args.samples,
        seed=args.seed,
        key_digits=args.key_digits,
        haystack=args.haystack,
        unit=args.unit,
        bos=args.bos,
        memory_off=args.memory_off,
        rope_scaling=scaling,
        split=args.split,
        segment_len=args.segment_len,
        batch_size=args.batch_size,
        chunk_len=args.chunk_len,
        progress=not args.no_progress,
    )
    model, tokenizer = _load(args)
    summary = run_passkey_grid(model, tokenizer, config, args.out, label=args.label, checkpoint=args.checkpoint)
    overall = summary["results"]["overall"]["exact"]
    print(f"passkey exact: {overall['successes']}/{overall['n']} -> {Path(args.out) / 'summary.json'}")
    return 0


@reports_errors
def _multineedle(args: argparse.Namespace) -> int:
    config = MultiNeedleConfig(
        tasks=args.tasks,
        lengths=args.lengths,
        samples=args.samples,
        seed=args.seed,
        num_needles=args.needles,
        max_new_tokens=args.max_new_tokens,
        haystack=args.haystack,
        bos=args.bos,
        memory_off=args.memory_off,
        segment_len=args.segment_len,
        batch_size=args.batch_size,
        chunk_len=args.chunk_len,
        progress=not args.no_progress,
    )
    model, tokenizer = _load(args)
    summary = run_multineedle_grid(model, tokenizer, config, args.out, label=args.label, checkpoint=args.checkpoint)
    score = summary["results"]["overall"]["score"]
    print(f"multi-needle mean score: {score['mean']:.3f} -> {Path(args.out) / 'summary.json'}")
    return 0


@reports_errors
def _perplexity(args: argparse.Namespace) -> int:
    config = PerplexityConfig(
        max_len=args.max_len,
        train_len=args.train_len or training_length(args.checkpoint),
        bucket_len=args.bucket_len,
        windows=args.windows,
        memory_off=args.memory_off,
        batch_size=args.batch_size,
        chunk_len=args.chunk_len,
        progress=not args.no_progress,
    )
    documents = [Path(p).read_text() for p in args.text_file] if args.text_file else None
    source = ", ".join(args.text_file) if args.text_file else None
    model, tokenizer = _load(args)
    summary = perplexity_by_position(
        model,
        tokenizer,
        config,
        args.out,
        documents=documents,
        source=source,
        label=args.label,
        checkpoint=args.checkpoint,
    )
    print(f"perplexity: {summary['results']['overall']['perplexity']:.3f} -> {Path(args.out) / 'summary.json'}")
    return 0


@reports_errors
def _gates(args: argparse.Namespace) -> int:
    model, tokenizer = _load(args)
    summary = run_gates(model, tokenizer, args.out, label=args.label, checkpoint=args.checkpoint)
    print(f"mean gate g = {summary['results']['mean']:.3f} -> {Path(args.out) / 'gates.png'}")
    return 0
