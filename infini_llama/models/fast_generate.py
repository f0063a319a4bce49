"""`generate` for Infini-attention models on the fixed-shape decoder (`decode.py`), without transformers' loop.

transformers' loop runs the model's forward per token with a cache whose shapes change, plus its own Python
per step; for a 300M model that is most of the time of a token. Greedy and sampled decoding (temperature, top-k,
top-p, end-of-sequence and pad tokens, a streamer) are a few lines on top of `StaticDecoder`, so they run here:
the settings are resolved by transformers (the model's generation config, then the call's), the same logits
processors are applied in the same order, and the same random draws are made, so the result is the one
`GenerationMixin.generate` gives. Any other setting (beam search, repetition penalty, returning scores, ...)
leaves the call to transformers: `fast_generate` returns None.
"""

from __future__ import annotations

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from infini_llama.models.cache import InfiniCache
from infini_llama.models.decode import StaticDecoder

# Settings this loop implements; every other one must keep its default for the fast path to apply.
HANDLED = frozenset(
    {
        "max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
        "pad_token_id", "bos_token_id", "decoder_start_token_id", "use_cache", "transformers_version",
    }
)  # fmt: skip
EOS_CHECK_EVERY = 16  # steps between reading back whether every sequence ended (a wait for the device)
PREFILL_SEGMENTS = 8  # prompt chunk fed to `stream` at once, in segments


def fast_generate(
    model,
    inputs: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    *more_positional,
    streamer=None,
    cache: InfiniCache | None = None,
    **kwargs,
) -> torch.LongTensor | None:
    """`model.generate(inputs, ...)` through `StaticDecoder`, or None when a setting needs transformers' loop.

    Applies to an Infini-attention model with a (B, T) prompt, `max_new_tokens` given, greedy or sampled
    decoding, plain RoPE, no padding, no autocast, and (optionally) an `InfiniCache` holding the first tokens of
    the prompt, which is left holding the state after the returned tokens, as `generate` leaves it.
    """
    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    attention_mask = kwargs.pop("attention_mask", None)
    if (
        more_positional
        or model.config.attention != "infini"
        or getattr(model.model.layers[0].self_attn, "rope_scaling", None) is not None
        or not isinstance(input_ids, torch.Tensor)
        or input_ids.dim() != 2
        or (attention_mask is not None and not bool(attention_mask.all()))
        or (cache is not None and not isinstance(cache, InfiniCache))
        or torch.is_autocast_enabled(input_ids.device.type)
    ):
        return None
    try:
        config, model_kwargs = model._prepare_generation_config(generation_config, **kwargs)
    except (AttributeError, TypeError):  # a transformers release without this helper: its own loop decides
        return None
    model_kwargs = {name: value for name, value in model_kwargs.items() if value is not None}
    model_kwargs.pop("use_cache", None)
    seen = 0 if cache is None else cache.get_seq_length()
    if model_kwargs or not _plain_decoding(config) or config.max_new_tokens is None or seen >= input_ids.shape[1]:
        return None
    return _generate(model, input_ids, config, streamer, cache, seen)


def _plain_decoding(config: GenerationConfig) -> bool:
    """True if every setting outside HANDLED is unset or at its default: no beams, penalties, extra outputs..."""
    defaults = {**GenerationConfig().to_dict(), **GenerationConfig._get_default_generation_params()}
    return all(
        name in HANDLED or name.startswith("_") or value in (None, False) or value == defaults.get(name)
        for name, value in config.to_dict().items()
    )


def _warpers(config: GenerationConfig) -> LogitsProcessorList:
    """The sampling processors `generate` builds for these settings, in its order."""
    warpers = LogitsProcessorList()
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None and config.top_k != 0:
            warpers.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
        if config.top_p is not None and config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
    return warpers


def decoder_for(model, batch_size: int) -> StaticDecoder:
    """The model's StaticDecoder for `batch_size`, built (compiled and captured, on CUDA) on first use and kept
    with the model; a new one if the weights moved (another device or dtype)."""
    decoders = model.__dict__.setdefault("_static_decoders", {})
    weight = model.get_input_embeddings().weight
    key = (batch_size, weight.device, weight.dtype, weight.data_ptr())
    if key not in decoders:
        decoders.clear()  # graphs of weights that moved would read freed memory
        decoders[key] = StaticDecoder(model, batch_size)
    return decoders[key]


@torch.no_grad()
def _generate(model, input_ids, config, streamer, cache, seen) -> torch.LongTensor:
    B, T = input_ids.shape
    device = input_ids.device
    states = None if cache is None else cache.states
    chunk = PREFILL_SEGMENTS * model.config.segment_len
    prompt = input_ids[:, seen:-1]  # the prompt's state, all but its last token (the first decode step)
    for part in prompt.split(chunk, dim=1) if prompt.shape[1] else ():
        _, states = model.stream(part, states)
    decoder = decoder_for(model, B)
    decoder.load(states)

    eos = config.eos_token_id
    eos = None if eos is None else torch.as_tensor(eos, device=device).view(-1)
    pad = config.pad_token_id if config.pad_token_id is not None else (None if eos is None else eos[0])
    warpers = _warpers(config)
    new = input_ids.new_empty(B, config.max_new_tokens)
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    token = input_ids[:, -1:]
    produced = config.max_new_tokens
    for i in range(config.max_new_tokens):
        scores = decoder.step(token).float()
        if warpers:
            scores = warpers(torch.cat([input_ids, new[:, :i]], dim=1), scores)
        if config.do_sample:
            next_token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            next_token = scores.argmax(dim=-1)
        if eos is not None:
            next_token = torch.where(unfinished, next_token, pad)
            unfinished &= ~torch.isin(next_token, eos)
        new[:, i] = next_token
        token = next_token[:, None]
        if streamer is not None:
            streamer.put(next_token.cpu())
        last = i + 1 == config.max_new_tokens
        # Every step when tokens go out (streamer) or a cache must hold the state at the exact stopping step.
        every_step = streamer is not None or cache is not None
        if eos is not None and (every_step or (i + 1) % EOS_CHECK_EVERY == 0 or last):
            if not bool(unfinished.any()):
                produced = _first_step_all_done(new[:, : i + 1], eos) + 1
                break
    if streamer is not None:
        streamer.end()
    if cache is not None:
        fed = (T - seen) + produced - 1  # generate never feeds the last new token
        cache.set_states(decoder.states(), fed)
    return torch.cat([input_ids, new[:, :produced]], dim=1)


def _first_step_all_done(new: torch.Tensor, eos: torch.Tensor) -> int:
    """The step at which the last sequence produced an end-of-sequence token (new: (B, n) tokens so far)."""
    ended = torch.isin(new, eos)
    first = torch.where(ended.any(dim=1), ended.int().argmax(dim=1), new.shape[1])
    return int(first.max())
