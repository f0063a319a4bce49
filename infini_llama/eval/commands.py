"""`infini-llama eval {passkey,multineedle,perplexity,gates}` (its parser: `infini_llama.cli.evaluate`): evaluate a
checkpoint folder into a run folder.

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

from infini_llama.cli import debugging, error_line, exit_status
from infini_llama.cli.evaluate import parse_floats, parse_layers, parse_lengths, parse_names  # noqa: F401
from infini_llama.eval.checkpoint import check_manifest, load_eval_tokenizer, load_model, training_length
from infini_llama.eval.diagnostics import run_gates
from infini_llama.eval.multineedle import MultiNeedleConfig, run_multineedle_grid
from infini_llama.eval.passkey_grid import PasskeyGridConfig, run_passkey_grid
from infini_llama.eval.perplexity import PerplexityConfig, perplexity_by_position
from infini_llama.eval.rope_scaling import rope_scaling

EVAL_TASKS = ("passkey", "multineedle", "perplexity", "gates")


def reports_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input (a missing checkpoint, a length the template does not fit in, …) ends the command with one line on
    stderr and exit status 2 instead of a traceback (a damaged checkpoint: 1), as `infini_llama.cli.main` does."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ValueError, FileNotFoundError) as exc:
            if debugging():
                raise
            name = " ".join(part for part in (args.command, getattr(args, "task", None)) if part)
            print(f"infini-llama {name}: {error_line(exc)}", file=sys.stderr)
            return exit_status(exc)

    return run


def _load(args: argparse.Namespace):
    check_manifest(args.checkpoint)  # a damaged folder is named before its tokenizer or weights are read
    tokenizer = load_eval_tokenizer(args.checkpoint, args.tokenizer)
    model = load_model(args.checkpoint, dtype=args.dtype, device=args.device)
    return model, tokenizer


def _grid_options(args: argparse.Namespace) -> dict:
    """The options every grid command takes (`cli.evaluate._common`): memory off, batching and the progress bar."""
    return dict(
        memory_off=args.memory_off,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        chunk_len=args.chunk_len,
        progress=not args.no_progress,
    )


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
        rope_scaling=scaling,
        split=args.split,
        segment_len=args.segment_len,
        **_grid_options(args),
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
        segment_len=args.segment_len,
        **_grid_options(args),
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
        **_grid_options(args),
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
