"""Running long inputs through any causal LM chunk by chunk, greedy decoding and teacher forcing.

An Infini model carries its streaming state (memory plus the keys and values of the unfinished segment) from
chunk to chunk, so peak memory does not grow with the input length and any chunking gives the logits of one
forward pass. Other `transformers` causal LMs carry their KV cache the same way. A model whose forward takes no
cache is run on the whole sequence at once (and re-run for every generated token).
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from infini_llama.models.hf_compat import forward_cache_name, output_cache

DEFAULT_CHUNK_LEN = 1024


class ChunkedLM:
    """Feeds (B, T) token ids to `model` in chunks of `chunk_len` tokens, carrying the model's state between
    chunks. None: 1,024, rounded up to a whole number of the model's segments if it has them. Any chunking gives the
    same logits, and a chunk's memory does not grow with the input; a chunk much shorter than that costs one call
    per chunk per layer and, for full attention, a copy of the whole KV cache each time.

    The state is what `model.stream` passes around (`forward(cache=state, use_cache=True)`): calling
    the forward directly lets us ask for the logits of the last position only (`logits_to_keep`), which skips the
    vocabulary projection of every other prompt token.
    """

    def __init__(self, model: nn.Module, chunk_len: int | None = None):
        if chunk_len is not None and chunk_len < 1:
            raise ValueError(f"chunk_len must be >= 1 (or None for the default), got {chunk_len}")
        self.model = model
        segment = getattr(model.config, "segment_len", None) or 1
        self.chunk_len = chunk_len or -(-DEFAULT_CHUNK_LEN // segment) * segment
        self.cache_name = forward_cache_name(model)  # `cache` from transformers 5.24 on, `past_key_values` before
        self.cached = self.cache_name is not None
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, state=None, keep: int = 0) -> tuple[torch.Tensor, object]:
        """One call of the model on `input_ids` (B, n) continuing `state`: logits (B, n or keep, V) and the state
        after these tokens."""
        n = input_ids.shape[1]
        if not self.cached:
            seen = input_ids if state is None else torch.cat([state, input_ids], dim=1)
            logits = self.model(input_ids=seen).logits[:, -n:]
            return (logits[:, -keep:] if keep else logits), seen
        kwargs = {"logits_to_keep": keep} if keep and self.keeps_logits else {}
        kwargs[self.cache_name] = state
        out = self.model(input_ids=input_ids, use_cache=True, **kwargs)
        logits = out.logits[:, -keep:] if keep else out.logits
        return logits, output_cache(out)

    def prefill(self, input_ids: torch.Tensor, state=None) -> tuple[torch.Tensor, object]:
        """Run a long prompt (B, T) chunk by chunk; returns the last position's logits (B, V) and the state."""
        if not self.cached:
            logits, state = self.forward(input_ids, state, keep=1)
            return logits[:, -1], state
        logits = None
        for start in range(0, input_ids.shape[1], self.chunk_len):
            logits, state = self.forward(input_ids[:, start : start + self.chunk_len], state, keep=1)
        return logits[:, -1], state

    def chunks(self, input_ids: torch.Tensor, state=None):
        """Yield (start, logits (B, n, V), state) for every chunk of `input_ids` (B, T): all positions' logits,
        one chunk at a time."""
        step = self.chunk_len if self.cached else input_ids.shape[1]
        for start in range(0, input_ids.shape[1], step):
            logits, state = self.forward(input_ids[:, start : start + step], state)
            yield start, logits, state

    def fork(self, state):
        """A copy of `state` that later calls may extend without changing `state` itself.

        Our models' states are tuples of tensors that are never written in place (continuing a stream builds new
        tensors), so they are shared; a `transformers` Cache grows in place and is copied.
        """
        if state is None or isinstance(state, (tuple, torch.Tensor)):
            return state
        return copy.deepcopy(state)

    def greedy(
        self, first_logits: torch.Tensor, state, max_new_tokens: int, eos_token_id: int | None = None
    ) -> torch.Tensor:
        """Greedy continuation (B, ≤ max_new_tokens) from the logits (B, V) of the last prompt position, one
        token per call on top of the state (never re-reading the prompt); stops early once every row has
        produced `eos_token_id`."""
        token = first_logits.argmax(-1, keepdim=True)
        out = [token]
        finished = token[:, 0] == eos_token_id if eos_token_id is not None else None
        for _ in range(max_new_tokens - 1):
            if finished is not None and bool(finished.all()):
                break
            logits, state = self.forward(token, state, keep=1)
            token = logits[:, -1].argmax(-1, keepdim=True)
            out.append(token)
            if finished is not None:
                finished |= token[:, 0] == eos_token_id
        return torch.cat(out, dim=1)

    def teacher_forced(self, first_logits: torch.Tensor, state, targets: torch.Tensor) -> torch.Tensor:
        """Logits (B, A, V) predicting each of `targets` (B, A) when the true previous tokens are fed."""
        if targets.shape[1] == 1:
            return first_logits[:, None]
        rest, _ = self.forward(targets[:, :-1], state)
        return torch.cat([first_logits[:, None], rest], dim=1)


def batch_for(length: int, batch_size: int, batch_tokens: int | None = None) -> int:
    """Sequences per batch at `length` tokens: `batch_size`, or with a token budget `batch_tokens` as many as it holds
    (at least one), so short prompts run many to a batch and long ones few."""
    if batch_tokens is not None and batch_tokens < 1:
        raise ValueError(f"batch_tokens must be None or >= 1, got {batch_tokens}")
    return max(1, batch_tokens // length) if batch_tokens else batch_size


def equal_length_batches(lengths: list[int], batch_size: int, batch_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches whose sequences all have the same length, so nothing is ever padded (the memory
    would absorb pad tokens); each holds at most `batch_for(its length, batch_size, batch_tokens)` sequences."""
    by_length: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(n, []).append(i)
    batches = []
    for n, group in by_length.items():
        size = batch_for(n, batch_size, batch_tokens)
        batches += [group[i : i + size] for i in range(0, len(group), size)]
    return batches
