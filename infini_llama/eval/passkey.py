"""Passkey retrieval samples: the classic prompt (task line, filler, needle, more filler, question), built token-exact.

Every sample is a pure function of (tokenizer, length, depth, seed stream, grid seed, sample index): the key and
the haystack come from the per-sample seed, so the cells of a grid differ only in length and depth. Evaluation
and fine-tuning draw from separate seed streams, so no evaluation prompt is ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from infini_llama.eval.prompts import (
    FILLER_BLOCK,
    Haystack,
    SampleSeed,
    bos_ids,
    build_prompt,
    encode,
    encode_continuation,
    last_token_of,
)

TASK = (
    "A pass key is hidden somewhere in the long text below, among many sentences that do not matter. "
    "Find the pass key and keep it in mind: you will be asked for it at the end."
)
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
ANSWER = " {key}"
LENGTH_UNITS = ("tokens", "chars")
# One default for fine-tuning and evaluation: five digits, uniform over 10000-99999, so every answer of a grid has
# the same token count (the 300M study fine-tuned on 4-digit keys; its preset sets key_digits=4 for both).
DEFAULT_KEY_DIGITS = 5

# Seed streams: the first word of every per-sample seed. Evaluation and training never share one.
EVAL_STREAM = 0
TRAIN_STREAM = 1
TRAIN_VALIDATION_STREAM = 2
SELECTION_STREAM = 3  # the validation prompts on which a study chooses each arm's fine-tuning LR
GRID_VALIDATION_STREAM = 4  # grids of the validation split: for choosing a recipe without looking at the test grid
# Evaluation grids: the test split (the reported numbers) and a validation split of the same design.
GRID_SPLITS = {"test": EVAL_STREAM, "validation": GRID_VALIDATION_STREAM}


def sample_seed(stream: int, seed: int, index: int) -> SampleSeed:
    """The seed of sample `index` of seed `seed` in seed stream `stream`: `.rng(quantity)` gives the generator of
    each of its random quantities (key, depth, haystack, ...), each its own."""
    return SampleSeed((stream, seed, index))


def sample_rng(stream: int, seed: int, index: int, quantity: str = "key") -> np.random.Generator:
    """The generator of `quantity` (`prompts.QUANTITIES`) of sample `index` of seed `seed` in stream `stream`."""
    return sample_seed(stream, seed, index).rng(quantity)


def draw_key(rng: np.random.Generator, digits: int) -> str:
    """A key of exactly `digits` digits, uniform over 10^(digits-1) .. 10^digits - 1 (so every key of a grid has
    the same number of characters and, for digit-by-digit tokenizers, of tokens)."""
    return str(int(rng.integers(*key_range(digits))))


def key_range(digits: int) -> tuple[int, int]:
    """[low, high) of the keys with `digits` digits."""
    if not 1 <= digits <= 18:
        raise ValueError(f"key_digits must be between 1 and 18, got {digits}")
    return (10 ** (digits - 1) if digits > 1 else 0), 10**digits


@dataclass(frozen=True)
class PasskeySample:
    """One passkey prompt. `length` is what was asked (tokens, or characters in "chars" mode); `input_ids` is what
    the model reads; `needle_start`/`needle_end` are the needle's token span in it, and `key_last_token` is the
    position of the last token of the key's last copy in the needle (the needle holds the key twice).
    `slot_starts[s]` is where the needle would start at depth s / (len(slot_starts) - 1), the same filler around it
    (`prompts.Prompt`; empty for a prompt built by characters)."""

    input_ids: list[int]
    answer_ids: list[int]
    key: str
    length: int
    depth: float
    seed: int
    index: int
    stream: int
    needle_start: int
    needle_end: int
    key_last_token: int
    haystack: str
    roundtrip: bool
    text: str
    haystack_draws: dict[str, int] = field(default_factory=dict)
    slot_starts: tuple[int, ...] = ()


def answer_ids(tokenizer: PreTrainedTokenizerBase, key: str) -> list[int]:
    """Ids of the answer as they follow the question (the question's own ids removed from their joint encoding,
    so tokenizers that merge across the join are handled)."""
    question = encode_continuation(tokenizer, QUESTION)
    joint = encode_continuation(tokenizer, QUESTION + ANSWER.format(key=key))
    if joint[: len(question)] == question:
        return joint[len(question) :]
    return encode_continuation(tokenizer, ANSWER.format(key=key))


def make_passkey_sample(
    tokenizer: PreTrainedTokenizerBase,
    length: int,
    depth: float,
    *,
    seed: int = 0,
    index: int = 0,
    stream: int = EVAL_STREAM,
    key_digits: int = DEFAULT_KEY_DIGITS,
    haystack: str = "repeat",
    unit: str = "tokens",
    bos: bool | None = None,
    book_text: str | None = None,
    key: str | None = None,
) -> PasskeySample:
    """Sample `index` of a passkey grid with seed `seed` (its key, and its haystack's draws, each from a generator of
    its own): a prompt of exactly `length` tokens (unit="tokens") with
    the needle after the fraction `depth` of the filler (0: right after the task line; 1: right before the
    question). unit="chars" reproduces the character-based construction of Landmark Attention (length in
    characters, needle at a character offset that may fall inside a word; repeated filler only); the resulting
    token count is in `len(input_ids)`. `key` replaces the drawn key (the haystack stays the one of this seed).
    `haystack` is the kind of filler (`prompts.HAYSTACKS`); distractor numbers are never the key."""
    if unit not in LENGTH_UNITS:
        raise ValueError(f"unit must be one of {LENGTH_UNITS}, got {unit!r}")
    sample = sample_seed(stream, seed, index)
    drawn = draw_key(sample.rng("key"), key_digits)
    key = drawn if key is None else key
    draws: dict[str, int] = {}
    needle = NEEDLE.format(key=key)
    if unit == "chars":
        if haystack != "repeat":
            raise ValueError("the character-based (Landmark) mode uses the repeated filler only: haystack='repeat'")
        ids, text, start, end = _character_prompt(tokenizer, length, depth, needle, bos)
        roundtrip, slot_starts = True, ()
    else:
        hay = Haystack(tokenizer, haystack, sample, book_text=book_text, distractor_digits=key_digits, avoid=key)
        draws = hay.draws
        prompt = build_prompt(
            tokenizer, length, task=TASK, needles=[(depth, needle)], question=QUESTION, haystack=hay, bos=bos
        )
        ids, text, roundtrip, slot_starts = prompt.input_ids, prompt.text, prompt.roundtrip, tuple(prompt.slot_starts)
        (start, end) = prompt.needle_spans[0]
    return PasskeySample(
        ids,
        answer_ids(tokenizer, key),
        key,
        length,
        depth,
        seed,
        index,
        stream,
        start,
        end,
        last_token_of(tokenizer, ids, start, end, key),
        haystack,
        roundtrip,
        text,
        draws,
        slot_starts,
    )


def _character_prompt(
    tokenizer: PreTrainedTokenizerBase, length: int, depth: float, needle: str, bos: bool | None
) -> tuple[list[int], str, int, int]:
    filler_chars = length - len(TASK) - len(needle) - len(QUESTION)
    if filler_chars < 0:
        raise ValueError(
            f"length {length} characters is shorter than the prompt template ({length - filler_chars} characters)"
        )
    block = "".join(FILLER_BLOCK)
    filler = (block * (filler_chars // len(block) + 1))[:filler_chars]
    cut = round(depth * filler_chars)
    before = TASK + filler[:cut]
    text = before + needle + filler[cut:] + QUESTION
    prefix = bos_ids(tokenizer, bos)
    start = len(prefix) + len(encode(tokenizer, before))
    end = len(prefix) + len(encode(tokenizer, before + needle))
    return prefix + encode(tokenizer, text), text, start, end


def shortest_prompt(tokenizer: PreTrainedTokenizerBase, key_digits: int, bos: bool | None = None) -> int:
    """Tokens of a passkey prompt without filler (task line, needle, question), for the longest-encoding key."""
    needle = max(len(encode_continuation(tokenizer, NEEDLE.format(key=d * key_digits))) for d in "0123456789")
    task = len(bos_ids(tokenizer, bos)) + len(encode(tokenizer, TASK))
    return task + needle + len(encode_continuation(tokenizer, QUESTION))


def evaluation_keys(seed: int, samples: int, key_digits: int, split: str = "test") -> list[str]:
    """The keys of an evaluation grid of `split` with this seed: sample i has the same key in every cell."""
    return [draw_key(sample_rng(GRID_SPLITS[split], seed, i), key_digits) for i in range(samples)]


def memory_updates(key_last_token: int, prompt_len: int, segment_len: int | None) -> int | None:
    """Segment boundaries (memory updates) between the segment holding the last token of the key's last copy and
    the segment of the last prompt token, from which the answer is predicted: 0 means that key copy ends in the
    question's own segment, within local attention's reach. (Counted from the needle's first token instead, a
    needle longer than a segment would add one or two updates the key never went through.)"""
    if segment_len is None:
        return None
    return (prompt_len - 1) // segment_len - key_last_token // segment_len
