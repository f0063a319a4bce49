"""The name `transformers` gives the cache, read from the installed release rather than from its version number.

transformers 5.24 renamed `past_key_values` to `cache`: in model outputs, in the keyword `generate` takes and in
the one it passes to `forward` at every step. A model that reads only the old keyword silently loses its cache
there (the first new token is right, the rest are not). Everything in this package that hands a cache to a model
or takes one from an output goes through the names detected here, so one code path serves both ends of the
supported range.
"""

from __future__ import annotations

import inspect

from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

NEW_NAME, OLD_NAME = "cache", "past_key_values"

# What `generate` calls its cache (its keyword, and the keyword it passes to `forward`).
GENERATE_CACHE_NAME = (
    NEW_NAME if NEW_NAME in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters else OLD_NAME
)
# The field of model outputs that holds the cache.
OUTPUT_CACHE_NAME = NEW_NAME if NEW_NAME in CausalLMOutputWithPast.__dataclass_fields__ else OLD_NAME


def pick_cache(cache, past_key_values):
    """The cache given under either name; both at once is an error."""
    if cache is not None and past_key_values is not None:
        raise ValueError(f"pass the cache as `{NEW_NAME}` or as `{OLD_NAME}`, not both")
    return past_key_values if cache is None else cache


def forward_cache_name(model: nn.Module) -> str | None:
    """The keyword under which `model.forward` takes a cache (the new name first), or None if it takes none."""
    params = inspect.signature(model.forward).parameters
    return next((name for name in (NEW_NAME, OLD_NAME) if name in params), None)


def output_cache(output):
    """The cache held by a model output (`CausalLMOutputWithPast` and friends), under this release's field name."""
    return getattr(output, OUTPUT_CACHE_NAME)
