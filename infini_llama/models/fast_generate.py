"""`generate` for Infini-attention models on the fixed-shape decoder (`decode.py`), without transformers' loop.

transformers' loop runs the model's forward per token with a cache whose shapes change, plus its own Python
per step; for a 300M model that is most of the time of a token. Greedy and sampled decoding are a few lines on
top of `StaticDecoder`, so they run here: the settings are resolved by transformers (the model's generation
config, then the call's), the logits processors are the ones transformers builds for them (its own
`_get_logits_processor`: temperature, top-k, top-p, min-p, typical-p, repetition penalty, n-gram blocking,
minimum length, suppressed and bad words, ...), applied in its order, and the same random draws are made, so
the result is the one `GenerationMixin.generate` gives. End-of-sequence, pad tokens and a streamer are handled
here. Any other setting (beam search, returning scores, custom processors, stop strings, ...) leaves the call
to transformers, with a warning naming it the first time: `fast_generate` returns None.
"""

from __future__ import annotations

import warnings

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, NoRepeatNGramLogitsProcessor

from infini_llama.models.cache import InfiniCache
from infini_llama.models.decode import StaticDecoder

# Settings this loop implements itself; every other one must be a processor setting or keep its default.
HANDLED = frozenset(
    {
        "max_new_tokens", "max_length", "do_sample", "eos_token_id", "pad_token_id", "bos_token_id",
        "decoder_start_token_id", "use_cache", "transformers_version",
    }
)  # fmt: skip
# Settings that only add a logits processor reading the ids so far and the scores: transformers builds it.
PROCESSED = frozenset(
    {
        "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
        "repetition_penalty", "no_repeat_ngram_size", "min_length", "min_new_tokens", "suppress_tokens",
        "bad_words_ids", "sequence_bias", "renormalize_logits",
    }
)  # fmt: skip
EOS_CHECK_EVERY = 16  # steps between reading back whether every sequence ended (a wait for the device)
PREFILL_SEGMENTS = 8  # prompt chunk fed to `stream` at once, in segments
_warned: set[str] = set()  # fallback reasons already reported in this process


def fast_generate(
    model,
    inputs: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    *more_positional,
    streamer=None,
    cache: InfiniCache | None = None,
    **kwargs,
) -> torch.LongTensor | None:
    """`model.generate(inputs, ...)` through `StaticDecoder`, or None when a setting needs transformers' loop
    (a warning names it, once per process and setting).

    Applies to an Infini-attention model with a (B, T) prompt, `max_new_tokens` given, greedy or sampled
    decoding, plain RoPE, no padding, no autocast, and (optionally) an `InfiniCache` holding the first tokens of
    the prompt, which is left holding the state after the returned tokens, as `generate` leaves it.
    """
    if model.config.attention != "infini":
        return None  # no fast decoder for the other arms: nothing to fall back from
    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    attention_mask = kwargs.pop("attention_mask", None)
    reason = None
    if more_positional:
        reason = "positional arguments after generation_config"
    elif getattr(model.model.layers[0].self_attn, "rope_scaling", None) is not None:
        reason = "a model with rope_scaling"
    elif not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        reason = "inputs other than a (batch, length) tensor of ids"
    elif attention_mask is not None and not bool(attention_mask.all()):
        reason = "padding (an attention_mask with zeros)"
    elif cache is not None and not isinstance(cache, InfiniCache):
        reason = f"a {type(cache).__name__} cache"
    elif torch.is_autocast_enabled(input_ids.device.type):
        reason = "autocast"
    if reason is not None:
        return _fall_back(reason)
    try:
        config, model_kwargs = model._prepare_generation_config(generation_config, **kwargs)
    except (AttributeError, TypeError):  # a transformers release without this helper: its own loop decides
        return _fall_back("this transformers release (no _prepare_generation_config)")
    model_kwargs = {name: value for name, value in model_kwargs.items() if value is not None}
    model_kwargs.pop("use_cache", None)
    seen = 0 if cache is None else cache.get_seq_length()
    if model_kwargs:
        return _fall_back(", ".join(sorted(model_kwargs)))
    uncovered = _uncovered_settings(config)
    if uncovered:
        return _fall_back(", ".join(uncovered))
    if config.max_new_tokens is None:
        return _fall_back("max_length without max_new_tokens")
    if seen >= input_ids.shape[1]:
        return _fall_back("a cache that has already seen the whole prompt")
    processors = _processors(model, config, input_ids)
    if processors is None:
        return _fall_back("this transformers release (its logits-processor helpers differ)")
    return _generate(model, input_ids, config, processors, streamer, cache, seen)


def _fall_back(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"generate: {reason} is not covered by the fast decoder; using transformers' generation loop "
            "(much slower per token)",
            UserWarning,
            stacklevel=4,
        )
    return None


def _uncovered_settings(config: GenerationConfig) -> list[str]:
    """The settings neither HANDLED nor PROCESSED that differ from their defaults (beams, extra outputs, ...)."""
    defaults = {**GenerationConfig().to_dict(), **GenerationConfig._get_default_generation_params()}
    return [
        f"{name}={value!r}"
        for name, value in config.to_dict().items()
        if not (
            name in HANDLED
            or name in PROCESSED
            or name.startswith("_")
            or value in (None, False)
            or value == defaults.get(name)
        )  # fmt: skip
    ]


def _processors(model, config: GenerationConfig, input_ids: torch.Tensor) -> LogitsProcessorList | None:
    """The processors and warpers `generate` builds for `config`, in its order (transformers' own helpers, called
    as `generate` calls them); None if this transformers release's helpers differ."""
    device = input_ids.device
    try:
        try:
            model._prepare_special_tokens(config, True, device=device, batch_size=input_ids.shape[0])
        except TypeError:  # releases before the batch_size argument
            model._prepare_special_tokens(config, True, device=device)
        processors = model._get_logits_processor(
            generation_config=config,
            input_ids_seq_length=input_ids.shape[1],
            encoder_input_ids=input_ids,
            prefix_allowed_tokens_fn=None,
            logits_processor=LogitsProcessorList(),
            device=device,
            model_kwargs={"attention_mask": torch.ones_like(input_ids)},
        )
    except (AttributeError, TypeError):
        return None
    return LogitsProcessorList(
        NoRepeatNGramOnDevice(p.ngram_size) if isinstance(p, NoRepeatNGramLogitsProcessor) else p for p in processors
    )


class NoRepeatNGramOnDevice(LogitsProcessor):
    """transformers' NoRepeatNGramLogitsProcessor (same bans) without leaving the device: some releases build
    every n-gram of the sequence in Python at each step, seconds per token after a long prompt.

    The next token t is banned where (last n − 1 tokens, t) already occurs: every window of n tokens whose first
    n − 1 equal the current suffix bans its last token.
    """

    def __init__(self, ngram_size: int):
        self.ngram_size = ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        n, length = self.ngram_size, input_ids.shape[-1]
        if length < n:
            return scores
        suffix = input_ids[:, length + 1 - n :]  # (B, n - 1)
        windows = input_ids.unfold(1, n, 1)  # (B, length - n + 1, n)
        matches = (windows[..., :-1] == suffix[:, None]).all(dim=-1)
        vocab = scores.shape[-1]
        banned = scores.new_zeros(scores.shape[0], vocab + 1, dtype=torch.bool)  # column `vocab`: no ban
        banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
        return scores.masked_fill(banned[:, :vocab], -float("inf"))


def decoder_for(model, batch_size: int) -> StaticDecoder:
    """The model's StaticDecoder for `batch_size`, built (compiled and captured, on CUDA) on first use and kept
    with the model next to those of other batch sizes; all are rebuilt if the weights moved (device, dtype)."""
    decoders = model.__dict__.setdefault("_static_decoders", {})
    weight = model.get_input_embeddings().weight
    weights = (weight.device, weight.dtype, weight.data_ptr())
    for stale in [key for key in decoders if key[1:] != weights]:
        del decoders[stale]  # graphs of weights that moved would read freed memory
    key = (batch_size, *weights)  # decoders of other batch sizes stay: alternating sizes reuse their graphs
    if key not in decoders:
        decoders[key] = StaticDecoder(model, batch_size)
    return decoders[key]


@torch.no_grad()
def _generate(model, input_ids, config, processors, streamer, cache, seen) -> torch.LongTensor:
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
    # The whole sequence in one buffer: the processors read a view of it, no copy of the prompt per token.
    sequence = input_ids.new_empty(B, T + config.max_new_tokens)
    sequence[:, :T] = input_ids
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    token = input_ids[:, -1:]
    produced = config.max_new_tokens
    for i in range(config.max_new_tokens):
        scores = decoder.step(token).float()
        if processors:
            scores = processors(sequence[:, : T + i], scores)
        if config.do_sample:
            next_token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            next_token = scores.argmax(dim=-1)
        if eos is not None:
            next_token = torch.where(unfinished, next_token, pad)
            unfinished &= ~torch.isin(next_token, eos)
        sequence[:, T + i] = next_token
        token = next_token[:, None]
        if streamer is not None:
            streamer.put(next_token.cpu())
        last = i + 1 == config.max_new_tokens
        # Every step when tokens go out (streamer) or a cache must hold the state at the exact stopping step.
        every_step = streamer is not None or cache is not None
        if eos is not None and (every_step or (i + 1) % EOS_CHECK_EVERY == 0 or last):
            if not bool(unfinished.any()):
                produced = _first_step_all_done(sequence[:, T : T + i + 1], eos) + 1
                break
    if streamer is not None:
        streamer.end()
    if cache is not None:
        fed = (T - seen) + produced - 1  # generate never feeds the last new token
        cache.set_states(decoder.states(), fed)
    return sequence[:, : T + produced].clone()


def _first_step_all_done(new: torch.Tensor, eos: torch.Tensor) -> int:
    """The step at which the last sequence produced an end-of-sequence token (new: (B, n) tokens so far)."""
    ended = torch.isin(new, eos)
    first = torch.where(ended.any(dim=1), ended.int().argmax(dim=1), new.shape[1])
    return int(first.max())
