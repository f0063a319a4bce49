"""Token-exact long prompts: a task line, filler sentences with needles inserted between them, a question.

Every part is encoded on its own, as it reads after the end of a sentence, and whole filler sentences are added
until the prompt has exactly the asked number of tokens; only the last gap before the question takes a partial
sentence. A needle goes after round(depth · n) of the n whole filler sentences, so it never splits a sentence.
The concatenated ids are checked to be what the tokenizer itself makes of the decoded text; when they are not
(a tokenizer that merges across the joins), the whole text is encoded instead and the actual length recorded.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from infini_llama.data import held_out_book, load_corpus

# What every later part follows: the end of a sentence. Encoding "." + part and removing the ids of "." gives the
# ids the part has inside running text, also for tokenizers that mark word starts (SentencePiece's "▁").
_JOIN_ANCHOR = "."
# Haystack kinds. Evaluation uses "repeat" (the classic filler) and "book" (held-out text: a document used in
# neither pretraining nor fine-tuning); fine-tuning draws from the others too, so that retrieval is not learned
# inside one repeated filler only.
HAYSTACKS = ("repeat", "styles", "corpus", "distractors", "book")
HAYSTACK_LABELS = {
    "repeat": "classic filler",
    "styles": "filler styles",
    "corpus": "training-corpus text",
    "distractors": "filler with distractor numbers",
    "book": "held-out text",
}
# Book and corpus sentences longer than this are skipped: one such sentence could fill the whole haystack of a
# short prompt, and the needle could then not be placed at the asked depth.
MAX_SENTENCE_WORDS = 40

# Our own five-sentence filler block (same structure as the classic passkey prompt, different words).
FILLER_BLOCK = (
    " The grass grows green in the meadow.",
    " The sky stretches blue above the hills.",
    " The sun comes up and the sun goes down.",
    " On we walk, and here we go.",
    " Out we travel, there and back again.",
)
# Other blocks of the same shape in other settings: the "styles" and "distractors" haystacks of fine-tuning.
FILLER_STYLES = (
    (
        " The kettle sings on the old stove.",
        " Bread cools by the open window.",
        " A cat sleeps under the wooden table.",
        " Someone hums a tune while washing cups.",
        " The clock in the hall ticks on.",
    ),
    (
        " Boats rock against the long pier.",
        " Gulls circle over the drying nets.",
        " The tide rolls in and the tide rolls out.",
        " Ropes creak as the wind picks up.",
        " Lanterns glow along the quiet water.",
    ),
    (
        " Buses hum along the wide avenue.",
        " Shop lights flicker on at dusk.",
        " People hurry past with their umbrellas.",
        " A violin plays by the fountain.",
        " Trains rattle over the iron bridge.",
    ),
    (
        " Tall pines sway in the cold wind.",
        " A stream runs over smooth grey stones.",
        " Birds call to each other from the branches.",
        " Moss covers the fallen logs.",
        " The path winds up and over the ridge.",
    ),
)
# Distractor sentences hold numbers too, so a model cannot find the key by looking for any number.
DISTRACTOR_TEMPLATES = (
    " The old gate code was {n}, but nobody uses it now.",
    " Room {n} is at the end of the corridor.",
    " The ferry ticket said {n} in faded ink.",
)
DISTRACTOR_EVERY = 4  # one distractor sentence in every four

# The random quantities of one sample. Each is drawn from a generator of its own, seeded by the sample's seed words
# and the quantity: two draws from one generator rebuilt from the same seed would be the same bits, and a haystack
# drawn that way follows whatever was drawn before it (the needle's depth, say), which a model can learn to read.
QUANTITIES = (
    "key", "depth", "haystack", "part_lengths", "style", "text_start", "distractors", "needles", "boundary",
    "needle_cut",
)  # fmt: skip


@dataclass(frozen=True)
class SampleSeed:
    """The seed words of one sample (e.g. seed stream, grid or training seed, sample index): `rng(quantity)` is the
    generator of one of its QUANTITIES. The key's generator is seeded by the words alone (keys are those of earlier
    releases); every other quantity's by the words and the quantity's number."""

    words: tuple[int, ...]

    def rng(self, quantity: str) -> np.random.Generator:
        if quantity not in QUANTITIES:
            raise ValueError(f"unknown sample quantity {quantity!r}; one of {QUANTITIES}")
        if quantity == "key":
            return np.random.default_rng(list(self.words))
        return np.random.default_rng([*self.words, 1000 + QUANTITIES.index(quantity)])


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    backend = _backend(tokenizer)
    if backend is not None:
        return backend.encode(text, add_special_tokens=False).ids
    return list(tokenizer.encode(text, add_special_tokens=False))


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Text of `ids` exactly as the tokens spell it (no clean-up of spaces before punctuation)."""
    backend = _backend(tokenizer)
    if backend is not None:
        return backend.decode(list(ids), skip_special_tokens=False)
    return tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)


def _backend(tokenizer: PreTrainedTokenizerBase):
    """The Rust tokenizer of a fast tokenizer, else None. Fine-tuning builds prompts from hundreds of small pieces
    per step, and the Python wrapper's per-call work was a good share of a CPU fine-tuning step's batch building;
    the wrapper adds nothing to these calls (no special tokens, no clean-up), and a test holds the two equal."""
    return getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None


@functools.lru_cache(maxsize=1 << 16)
def encode_continuation(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of `text` as it reads right after the end of a sentence (falls back to encoding it alone). Cached per
    (tokenizer, text), the tokenizer by identity (a tokenizer object is not changed once built): fine-tuning builds
    tens of prompts per step from the same sentences, questions and answers. Callers never mutate the list."""
    anchor = _anchor_ids(tokenizer)
    joined = encode(tokenizer, _JOIN_ANCHOR + text)
    if joined[: len(anchor)] == anchor:
        return joined[len(anchor) :]
    return encode(tokenizer, text)


@functools.lru_cache(maxsize=8)
def _anchor_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids of _JOIN_ANCHOR alone, once per tokenizer (as `encode_continuation`'s cache, by identity)."""
    return encode(tokenizer, _JOIN_ANCHOR)


def bos_ids(tokenizer: PreTrainedTokenizerBase, bos: bool | None) -> list[int]:
    """[bos_token_id] when asked (None: whenever the tokenizer has a BOS token), else []. Added once, by us:
    parts are encoded without special tokens, so it is never doubled."""
    use = tokenizer.bos_token_id is not None if bos is None else bos
    if use and tokenizer.bos_token_id is None:
        raise ValueError("bos=True but the tokenizer has no bos_token; pass bos=False or None")
    return [tokenizer.bos_token_id] if use else []


class Haystack:
    """Filler sentences for one sample, already encoded, in the order they are used.

    kinds: "repeat" (the classic five-sentence block over and over), "styles" (another block of the same shape,
    drawn per sample), "corpus" (consecutive sentences of the embedded corpus's training split from a seeded
    start), "distractors" (the classic or a styled block, with a sentence holding another number in every four;
    never the number `avoid`), "book" (consecutive sentences of `book_text`, by default the held-out book, from a
    seeded start). The filler style, the text's start and the distractors are drawn from the sample's generators of
    those quantities (`seed`), each its own. `draws` records what was drawn (style, start), for tests and records.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        kind: str,
        seed: SampleSeed,
        *,
        book_text: str | None = None,
        distractor_digits: int = 5,
        avoid: str | None = None,
    ):
        if kind not in HAYSTACKS:
            raise ValueError(f"haystack must be one of {HAYSTACKS}, got {kind!r}")
        self.tokenizer, self.kind = tokenizer, kind
        self.distractor_digits, self.avoid = distractor_digits, avoid
        self._distractors = seed.rng("distractors")
        self._sentences: list[str] = []
        self._text_pool: Sequence[str] = ()
        self._start = 0
        self._block = FILLER_BLOCK
        self.draws: dict[str, int] = {}
        if kind in ("book", "corpus"):
            if kind == "corpus":
                self._text_pool = training_sentences()
            else:
                self._text_pool = book_sentences(book_text) if book_text is not None else default_book_sentences()
            self._start = self.draws["text_start"] = int(seed.rng("text_start").integers(len(self._text_pool)))
        elif kind in ("styles", "distractors"):
            # "styles" draws one of the other blocks; "distractors" the classic block or one of the others.
            blocks = FILLER_STYLES if kind == "styles" else (FILLER_BLOCK, *FILLER_STYLES)
            style = self.draws["style"] = int(seed.rng("style").integers(len(blocks)))
            self._block = blocks[style]

    def _text(self, i: int) -> str:
        if self._text_pool:
            return self._text_pool[(self._start + i) % len(self._text_pool)]
        if self.kind == "distractors" and i % DISTRACTOR_EVERY == DISTRACTOR_EVERY - 1:
            low = 10 ** (self.distractor_digits - 1)
            template = DISTRACTOR_TEMPLATES[int(self._distractors.integers(len(DISTRACTOR_TEMPLATES)))]
            number = str(int(self._distractors.integers(low, 10 * low)))
            while number == self.avoid:
                number = str(int(self._distractors.integers(low, 10 * low)))
            return template.format(n=number)
        return self._block[i % len(self._block)]

    def sentence(self, i: int) -> tuple[str, list[int]]:
        """The i-th filler sentence and its ids (generated lazily, so the rng is consumed in order)."""
        while len(self._sentences) <= i:
            self._sentences.append(self._text(len(self._sentences)))
        text = self._sentences[i]
        return text, encode_continuation(self.tokenizer, text)


@functools.lru_cache(maxsize=4)
def book_sentences(text: str) -> tuple[str, ...]:
    """Sentences of a long text of 3 to MAX_SENTENCE_WORDS words, whitespace collapsed, each with one leading space
    (filler form). Cached: a sample of a book haystack asks for them every time."""
    parts = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text).strip())
    sentences = tuple(" " + p for p in parts if 3 <= len(p.split()) <= MAX_SENTENCE_WORDS)
    if not sentences:
        raise ValueError(f"book text has no sentences of 3 to {MAX_SENTENCE_WORDS} words to use as filler")
    return sentences


@functools.lru_cache(maxsize=1)
def default_book_sentences() -> tuple[str, ...]:
    """Filler sentences of the embedded corpus's held-out book (split once per process). The book is in the
    corpus's validation split: neither the tokenizer, pretraining nor fine-tuning ever reads it."""
    return book_sentences(held_out_book().text)


@functools.lru_cache(maxsize=1)
def training_sentences() -> tuple[str, ...]:
    """Filler sentences of every document of the embedded corpus's training split, in document order (never the
    held-out book: it is in the validation split)."""
    return tuple(s for document in load_corpus("train") for s in book_sentences(document.text))


@dataclass(frozen=True)
class Prompt:
    """A built prompt. `needle_spans[i]` = token [start, end) of needle i (in the order given); `filler_before[i]`
    = whole filler sentences before needle i, out of `num_sentences`; `roundtrip` = the ids are the tokenizer's
    own encoding of `text` (if False they were replaced by it and `len(input_ids)` may differ from the asked
    length). `slot_starts[s]` (s = 0 .. num_sentences) = the token where a needle at slot s (before filler sentence
    s, where depth s / num_sentences puts it) starts when no other needle is before it, in the ids as built (before
    any re-encoding): the filler sentences do not depend on the depths."""

    input_ids: list[int]
    text: str
    needle_spans: list[tuple[int, int]]
    filler_before: list[int]
    num_sentences: int
    roundtrip: bool
    slot_starts: list[int]


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    length: int,
    *,
    task: str,
    needles: Sequence[tuple[float, str]],
    question: str,
    haystack: Haystack,
    bos: bool | None = None,
) -> Prompt:
    """A prompt of exactly `length` tokens: [BOS] task, filler with each (depth, needle text) inserted at its depth
    (fraction of the whole filler sentences before it), question. Needle and question texts start with a space;
    `task` starts the document."""
    for depth, _ in needles:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"needle depth must be in [0, 1], got {depth}")
    prefix = bos_ids(tokenizer, bos)
    head = prefix + encode(tokenizer, task)
    needle_ids = [encode_continuation(tokenizer, text) for _, text in needles]
    question_ids = encode_continuation(tokenizer, question)
    fill = length - len(head) - len(question_ids) - sum(map(len, needle_ids))
    if fill < 0:
        raise ValueError(
            f"length {length} is shorter than the prompt template, which needs {length - fill} tokens with this "
            f"tokenizer before any filler; ask for a length >= {length - fill}"
        )
    sentences: list[tuple[str, list[int]]] = []
    used = 0
    while True:
        text, ids = haystack.sentence(len(sentences))
        if used + len(ids) > fill:
            break
        sentences.append((text, ids))
        used += len(ids)
    partial = _partial_sentence(tokenizer, haystack, len(sentences), fill - used)
    slot_starts = list(itertools.accumulate((len(ids) for _, ids in sentences), initial=len(head)))
    slots = [round(depth * len(sentences)) for depth, _ in needles]
    order = sorted(range(len(needles)), key=lambda i: (slots[i], i))

    ids, spans = list(head), [(0, 0)] * len(needles)
    placed = 0
    for s in range(len(sentences) + 1):
        while placed < len(order) and slots[order[placed]] == s:
            i = order[placed]
            spans[i] = (len(ids), len(ids) + len(needle_ids[i]))
            ids += needle_ids[i]
            placed += 1
        if s < len(sentences):
            ids += sentences[s][1]
    ids += partial + question_ids
    assert len(ids) == length, (len(ids), length)

    start = len(prefix)  # the BOS id is not text: keep it out of the round trip
    text = decode(tokenizer, ids[start:])
    roundtrip = encode(tokenizer, text) == ids[start:]
    if not roundtrip:
        # Where each needle lands in the tokenizer's own encoding: the length of the encoded text before it.
        moved = []
        for b, e in spans:
            new_start = start + len(encode(tokenizer, decode(tokenizer, ids[start:b])))
            moved.append((new_start, new_start + e - b))
        spans = moved
        ids = ids[:start] + encode(tokenizer, text)
    return Prompt(ids, text, spans, slots, len(sentences), roundtrip, slot_starts)


def _partial_sentence(tokenizer: PreTrainedTokenizerBase, haystack: Haystack, first: int, size: int) -> list[int]:
    """`size` tokens to close the last gap: a token prefix of the next filler sentence, preferring one that ends
    at a word boundary (so re-encoding the text gives the same ids) among the next few sentences."""
    if size == 0:
        return []
    candidates = []
    for i in range(first, first + 2 * len(FILLER_BLOCK)):
        _, ids = haystack.sentence(i)
        if len(ids) > size:
            candidates.append(ids[:size])
    for prefix in candidates:
        rest = encode_continuation(tokenizer, decode(tokenizer, prefix))
        if rest == prefix:
            return prefix
    if candidates:
        return candidates[0]
    # Every nearby sentence is shorter than the gap (only possible for unusual haystacks): repeat one.
    _, ids = haystack.sentence(first)
    return (ids * (size // len(ids) + 1))[:size]


def last_token_of(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], start: int, end: int, text: str) -> int:
    """Position of the token that completes the last occurrence of `text` in the tokens ids[start:end] (a needle).

    What a model must carry to the question is the needle's answer, which a needle may hold more than once: the
    last token of its last copy is the last position from which it can be read. The occurrences in a decoded
    prefix only grow with the prefix, so the first prefix holding all of them is found by bisection."""
    total = decode(tokenizer, ids[start:end]).count(text)
    if total == 0:
        raise ValueError(f"{text!r} does not occur in the tokens [{start}, {end})")
    low, high = start, end - 1
    while low < high:
        mid = (low + high) // 2
        if decode(tokenizer, ids[start : mid + 1]).count(text) == total:
            high = mid
        else:
            low = mid + 1
    return low
