"""`infini-llama generate` (its parser: `infini_llama.cli.generate`): continue a (long) prompt file with a
checkpoint, printing the continuation.

The prompt is fed chunk by chunk into the model's cache (an InfiniCache for our models: one memory plus one
unfinished segment per layer, whatever the prompt length; a DynamicCache for other causal LMs), with a progress
bar, then `generate` continues from that cache.

Examples:
  infini-llama generate --checkpoint runs/tiny-infini/final --prompt-file book.txt --max-new-tokens 200
  infini-llama generate --checkpoint converted/ --prompt-file q.txt --temperature 0.8 --top-k 50 --chunk-size 512
"""

from __future__ import annotations

import argparse
import unicodedata
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import DynamicCache, PreTrainedTokenizerBase, TextStreamer
from transformers.cache_utils import Cache

from infini_llama.data import load_tokenizer
from infini_llama.models import InfiniLlamaForCausalLM
from infini_llama.models.cache import InfiniCache
from infini_llama.models.hf_compat import GENERATE_CACHE_NAME, forward_cache_name

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_arguments(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    if args.top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0: no top-k filter), got {args.top_k}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {args.chunk_size}")


def load_checkpoint(path: str, dtype: str, device: str) -> nn.Module:
    """The model in `path`, in eval mode on `device`; a folder the trainer wrote is checked against its manifest
    first (see `eval.checkpoint.load_model`)."""
    from infini_llama.eval.checkpoint import load_model

    return load_model(path, dtype=dtype, device=device)


def read_prompt(path: str) -> str:
    """The prompt file's text, or an error naming what is wrong with it (checked before the model loads)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"prompt file {path!r} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"prompt file {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ValueError(f"prompt file {path!r} is empty; write the text to continue into it")
    return text


def printable(text: str) -> str:
    """`text` with control characters (escape sequences, carriage returns, NUL, ...) escaped, new lines and tabs
    kept: generated text must not drive the terminal."""
    return "".join(
        ch if ch in "\n\t" or not unicodedata.category(ch).startswith("C") else ch.encode("unicode_escape").decode()
        for ch in text
    )


class SafeStreamer(TextStreamer):
    """A TextStreamer that prints through `printable`."""

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        super().on_finalized_text(printable(text), stream_end)


def load_generation_tokenizer(checkpoint: str, tokenizer: str | None, vocab_size: int) -> PreTrainedTokenizerBase:
    """--tokenizer; else the tokenizer saved with the checkpoint; else the built-in BPE at the model's vocab."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if any((Path(checkpoint).expanduser() / name).is_file() for name in TOKENIZER_FILES):
        return load_tokenizer(checkpoint)
    return load_tokenizer(None, vocab_size=vocab_size)


@torch.no_grad()
def prefill(model: nn.Module, input_ids: torch.Tensor, chunk_size: int, progress: bool = True) -> Cache:
    """Feed `input_ids` (1, T) into a new cache, `chunk_size` tokens per forward call, computing only the last
    position's logits. The cache of an InfiniLlama does not grow past one segment per layer."""
    cache = InfiniCache() if isinstance(model, InfiniLlamaForCausalLM) else DynamicCache()
    chunks = input_ids.split(chunk_size, dim=1)
    for chunk in tqdm(chunks, desc="prompt", unit="chunk", disable=not progress or len(chunks) < 2):
        model(input_ids=chunk, **{forward_cache_name(model): cache}, use_cache=True, logits_to_keep=1)
    return cache


def run(args: argparse.Namespace) -> int:
    """Check the options, the checkpoint folder and the prompt file, then load the model and generate."""
    from infini_llama.eval.checkpoint import check_manifest

    check_arguments(args)
    check_manifest(args.checkpoint)
    text = read_prompt(args.prompt_file)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_checkpoint(args.checkpoint, args.dtype, device)
    tokenizer = load_generation_tokenizer(args.checkpoint, args.tokenizer, model.config.vocab_size)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}: "
            "pass the tokenizer the model was trained with (--tokenizer)"
        )
    input_ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)
    if input_ids.shape[1] == 0:
        raise ValueError(f"prompt file {args.prompt_file!r} holds no tokens")
    chunk_size = args.chunk_size or getattr(model.config, "segment_len", 1024)
    # generate() feeds the last prompt token itself, to get the logits the first new token is drawn from.
    cache = prefill(model, input_ids[:, :-1], chunk_size)
    torch.manual_seed(args.seed)
    sampling = args.temperature > 0
    model.generate(
        input_ids,
        **{GENERATE_CACHE_NAME: cache},
        max_new_tokens=args.max_new_tokens,
        do_sample=sampling,
        temperature=args.temperature if sampling else None,
        top_k=args.top_k if sampling else None,
        pad_token_id=tokenizer.pad_token_id,
        streamer=SafeStreamer(tokenizer, skip_prompt=True),
    )
    return 0
