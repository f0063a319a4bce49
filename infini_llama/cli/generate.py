"""Parser of `infini-llama generate` (what it runs: `infini_llama.generate`)."""

from __future__ import annotations

import argparse

from infini_llama.cli.names import GENERATE_DTYPES

DESCRIPTION = """Continue a (long) prompt file with a checkpoint, printing the continuation.

The prompt is fed chunk by chunk into the model's cache (an InfiniCache for our models: one memory plus one
unfinished segment per layer, whatever the prompt length; a DynamicCache for other causal LMs), with a progress
bar, then `generate` continues from that cache. Control characters in the output are printed escaped (\\x1b)."""
EXAMPLES = """examples:
  infini-llama generate --checkpoint runs/tiny-infini/final --prompt-file book.txt --max-new-tokens 200
  infini-llama generate --checkpoint converted/ --prompt-file q.txt --temperature 0.8 --top-k 50 --chunk-size 512
  infini-llama generate --checkpoint runs/tiny-infini/final --prompt-file q.txt --temperature 0   # greedy
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="continue a prompt file with a checkpoint",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="model folder written by save_pretrained (e.g. RUN/final)")
    parser.add_argument("--prompt-file", required=True, help="UTF-8 text file holding the prompt")
    parser.add_argument(
        "--tokenizer",
        help="tokenizer folder or name (default: the one saved in --checkpoint, else the built-in BPE)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding")
    parser.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (0: all)")
    parser.add_argument("--chunk-size", type=int, help="prompt tokens per forward call (default: the segment)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=GENERATE_DTYPES)
    parser.set_defaults(func="infini_llama.generate:run")
