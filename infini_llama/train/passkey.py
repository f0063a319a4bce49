"""Passkey fine-tuning: synthetic passkey sequences as a BatchSource for the trainer, and `finetune_passkey`.

Each training sequence holds token-exact passkey prompts, each followed by its answer and EOS, `seq_len` tokens in
all. Samples come from the training seed stream (evaluation grids use others), and keys of the evaluation grids
(test and validation splits) named by `exclude_eval_seed` / `exclude_eval_samples` are never used as training
answers, so no evaluation answer is trained on. Haystacks vary from prompt to prompt (the classic filler, other
filler styles, training-corpus text, distractor numbers), so that retrieval is not learned inside one repeated
filler; the held-out text that evaluation also uses is never trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from infini_llama.data import tokenizer_fingerprint
from infini_llama.eval.checkpoint import load_eval_tokenizer, model_segment_len
from infini_llama.eval.passkey import (
    DEFAULT_KEY_DIGITS,
    EVAL_STREAM,
    GRID_SPLITS,
    GRID_VALIDATION_STREAM,
    SELECTION_STREAM,
    TRAIN_STREAM,
    TRAIN_VALIDATION_STREAM,
    PasskeySample,
    answer_ids,
    draw_key,
    evaluation_keys,
    key_range,
    make_passkey_sample,
    sample_rng,
    sample_seed,
    shortest_prompt,
)
from infini_llama.eval.prompts import HAYSTACKS, bos_ids
from infini_llama.train.batches import Batch, split_source
from infini_llama.train.config import TrainConfig
from infini_llama.train.distributed import launch_env
from infini_llama.train.loop import TrainResult, train
from infini_llama.train.microbatch import initial_split

LOSSES = ("all", "answer")
STUDY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_PACK_DIVISOR = 8  # packed prompts are at least seq_len / 8 tokens long
# Every haystack kind but the held-out text ("book"), which is kept for evaluation.
FINETUNE_HAYSTACKS = tuple(kind for kind in HAYSTACKS if kind != "book")
STREAMS = (EVAL_STREAM, TRAIN_STREAM, TRAIN_VALIDATION_STREAM, SELECTION_STREAM, GRID_VALIDATION_STREAM)
assert len(set(STREAMS)) == len(STREAMS), "seed streams must differ"

# The 300M study's passkey fine-tuning (TrainConfig fields): 500 steps of 64 × 4096 tokens (as many per pass as fit
# the GPU: batch_size None), LR 7.5e-5 after 50 warm-up steps, cosine to 3e-6, gate LR 1.5e-4.
STUDY_RECIPE: dict[str, Any] = dict(
    steps=500, seq_len=4096, global_batch=64, batch_size=None, lr=7.5e-5, min_lr=3e-6, warmup_steps=50,
    gate_lr=1.5e-4,
)  # fmt: skip


class PasskeyBatchSource:
    """Batches of passkey sequences (B = batch_size, T = seq_len) for one process.

    Sequence g = ((step · grad_accum + micro_step) · world_size + rank) · batch_size + b of the training stream,
    so the batches are a pure function of (step, micro_step, rank), and step s holds sequences [s · N, (s + 1) · N)
    with N = batch_size · grad_accum · world_size however they are split (`split` splits a source anew). The
    validation sequences are `validation_batches` batches of the batch_size the source is built with, whatever
    the split later. A sequence is [BOS] then passkey parts, each
    a prompt, its answer and EOS: several parts of random lengths packed back to back, as in the 300M study (each
    at least `pack_min_len` tokens, default seq_len / 8, raised to what the shortest prompt with its answer
    needs), or with pack_min_len=0 one part filling the sequence. Packing varies the distance between needle and
    question; with one part of fixed length there are only as many distances as depths, and a small model can
    learn those positions instead of retrieval. Depths are drawn from `depths` and haystack kinds from `haystacks`
    (never "book", the held-out text of evaluation); keys have `key_digits` digits, redrawn when they are keys of
    the excluded evaluation grid. loss="all" trains on every token (the study); loss="answer" masks everything
    but the answers' tokens with -100.

    Every random quantity of a prompt (key, depth, haystack kind, filler style, text start, distractors) and the
    lengths of a sequence's parts are drawn from generators of their own, so none of them follows another.

    `boundary_share` > 0 (with packing and `segment_len`) puts that share of the packed parts, drawn part by part
    (all but a sequence's last part, whose end is the sequence's), where an evaluation prompt of whole segments has
    its answer: the question's last token is a segment's last token, so the answer is written in a new segment,
    with the question and the needle behind a memory update. Each drawn part's end is moved by less than a
    segment, the next part's start with it, where both stay within the parts' bounds (a part that cannot be moved
    so stays where it was). A random packing puts an answer there once in `segment_len` parts:
    a 302M Infini arm fine-tuned at segments of 1,024 without it found every key's first digit at every length and
    wrote the rest wrong (reports/paper-h200-screen/).

    `needle_boundary_share` > 0 (with packing and `segment_len`) draws that share of the packed parts (from the same
    per-part draws, after `boundary_share`'s: the two shares add up to at most 1) and places each one's needle so
    that a segment boundary cuts it: the key's sentence is then split across a memory update. Of the filler slots
    (between whole sentences) where the needle would be cut by a boundary inside the part, and which the
    curriculum allows, one is drawn, and the part is built with the needle there: the same length, key, haystack
    and filler, only the needle's depth changed (a part with no such slot keeps its drawn depth). Every part can be
    drawn, the first and the last too. A random packing cuts a needle of n tokens once in about `segment_len` / n
    parts (the study's needle of 23 tokens at segments of 1,024: once in 45); a grid of whole segments at depths
    of quarters cuts it far more often (reports/paper-h200-screen/, leases D and E).

    `curriculum_steps` > 0 (with packing) starts fine-tuning with the needle close to the question and moves it
    away over that many steps: at step s, with p = min(1, (s + 1) / curriculum_steps), parts are at most
    `longest_part(p)` = pack_min_len + p · (seq_len − pack_min_len) tokens long (never below 2 · pack_min_len − 1,
    so that what is left of a sequence can always be cut to it) and needle depths are drawn from those ≥ 1 − p (the
    deepest one at least). From step curriculum_steps on, and in the validation batches, the draws are exactly
    those without a curriculum.
    """

    builds_slowly = True  # prompts are tokenized piece by piece: on CUDA the trainer builds batches ahead

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        seq_len: int,
        batch_size: int,
        grad_accum: int = 1,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        key_digits: int = DEFAULT_KEY_DIGITS,
        depths: Sequence[float] = STUDY_DEPTHS,
        haystacks: Sequence[str] = FINETUNE_HAYSTACKS,
        loss: str = "all",
        pack_min_len: int | None = None,
        validation_batches: int = 2,
        curriculum_steps: int = 0,
        segment_len: int | None = None,
        boundary_share: float = 0.0,
        needle_boundary_share: float = 0.0,
        exclude_eval_seed: int | None = 0,
        exclude_eval_samples: int = 1024,
    ):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        haystacks = (haystacks,) if isinstance(haystacks, str) else tuple(haystacks)
        if not haystacks or not set(haystacks) <= set(FINETUNE_HAYSTACKS):
            raise ValueError(
                f"haystacks must be one or more of {FINETUNE_HAYSTACKS}, got {haystacks!r} (the held-out text "
                "'book' is for evaluation only: a model trained on it would not be tested on unseen text)"
            )
        if not depths or not all(0.0 <= d <= 1.0 for d in depths):
            raise ValueError(f"depths must be fractions in [0, 1], got {depths}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token to end each training sequence with")
        pack_min_len = seq_len // DEFAULT_PACK_DIVISOR if pack_min_len is None else pack_min_len
        if not 0 <= pack_min_len <= seq_len:
            raise ValueError(f"pack_min_len must be in [0 (no packing), seq_len={seq_len}], got {pack_min_len}")
        self.tokenizer, self.seq_len, self.batch_size, self.grad_accum = tokenizer, seq_len, batch_size, grad_accum
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.key_digits, self.depths, self.haystacks, self.loss = key_digits, tuple(depths), haystacks, loss
        shortest = shortest_prompt(tokenizer, key_digits, bos=False) + key_digits + 2  # + answer (≤ digits + 1), EOS
        self.pack_min_len = max(pack_min_len, shortest) if pack_min_len else 0
        if not isinstance(curriculum_steps, int) or curriculum_steps < 0:
            raise ValueError(f"curriculum_steps must be an integer >= 0, got {curriculum_steps!r}")
        if curriculum_steps and not self.pack_min_len:
            raise ValueError("curriculum_steps grows the packed parts: it needs packing (pack_min_len > 0)")
        self.curriculum_steps = curriculum_steps
        for name, share in (("boundary_share", boundary_share), ("needle_boundary_share", needle_boundary_share)):
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {share!r}")
            if share and (segment_len is None or not self.pack_min_len):
                raise ValueError(
                    f"{name} moves packed parts to segment boundaries: it needs packing "
                    "(pack_min_len > 0) and the model's segment_len"
                )
        if boundary_share + needle_boundary_share > 1.0:
            raise ValueError(
                f"boundary_share + needle_boundary_share must be at most 1 (each part is moved one way or not at "
                f"all), got {boundary_share} + {needle_boundary_share}"
            )
        if segment_len is not None and (not isinstance(segment_len, int) or segment_len < 1):
            raise ValueError(f"segment_len must be a positive integer, got {segment_len!r}")
        self.segment_len, self.boundary_share = segment_len, boundary_share
        self.needle_boundary_share = needle_boundary_share
        self.num_validation_batches, self.validation_batch_size = validation_batches, batch_size
        # The validation sequences, built once: every validation scores the same ones (several times: labelled on
        # each answer token, and with their parts aligned with segment boundaries).
        self._validation_built: dict[tuple, tuple[list[int], list[list[int]], dict[int, str]]] = {}
        self.bos = bos_ids(tokenizer, None)
        excluded = [
            key
            for split in (GRID_SPLITS if exclude_eval_seed is not None else ())
            for key in evaluation_keys(exclude_eval_seed, exclude_eval_samples, key_digits, split)
        ]
        self.excluded_keys = frozenset(excluded)
        low, high = key_range(key_digits)
        if len(self.excluded_keys) >= high - low:
            raise ValueError(f"the {len(self.excluded_keys)} excluded evaluation keys leave no {key_digits}-digit key")
        self.exclusion = {
            "eval_seed": exclude_eval_seed,
            "eval_samples": 0 if exclude_eval_seed is None else exclude_eval_samples,
            "splits": [] if exclude_eval_seed is None else list(GRID_SPLITS),
        }
        # Fail now, not at step 1, if the shortest part cannot hold a prompt.
        self._part(TRAIN_STREAM, 0, min(self.pack_min_len or seq_len, seq_len - len(self.bos)))

    def progress(self, step: int) -> float:
        """How far the curriculum is at optimizer step `step`: from 1 / curriculum_steps to 1 (no curriculum: 1)."""
        return min(1.0, (step + 1) / self.curriculum_steps) if self.curriculum_steps else 1.0

    def sequence(self, stream: int, index: int, progress: float = 1.0) -> tuple[list[int], list[int]]:
        """Ids (seq_len,) of sequence `index` of `stream` at curriculum `progress`, and the positions of its
        answers' tokens."""
        ids, answers, _ = self._packed(stream, index, progress)
        return ids, [p for answer in answers for p in answer]

    def _packed(
        self, stream: int, index: int, progress: float = 1.0, shares: tuple[float, float] | None = None
    ) -> tuple[list[int], list[list[int]], dict[int, str]]:
        """`sequence`'s ids, the positions of each packed part's answer tokens (a list per part), and the parts
        moved to a segment boundary (`_aligned`: part -> "question" or "needle") with `shares` (of the two kinds;
        default: `boundary_share`, `needle_boundary_share`)."""
        ids, answers = list(self.bos), []
        lengths = self._part_lengths(sample_rng(stream, self.seed, index, "part_lengths"), progress)
        shares = (self.boundary_share, self.needle_boundary_share) if shares is None else shares
        built: dict[int, tuple[list[int], list[int], tuple[int, int], tuple[int, ...]]] = {}
        aligned = self._aligned(stream, index, lengths, progress, shares, built) if any(shares) else {}
        for part, length in enumerate(lengths):
            # Each part has its own sample index; parts never outnumber 2**20.
            part_ids, part_answers, _, _ = built.get(part) or self._part(stream, (index << 20) | part, length, progress)
            answers.append([len(ids) + p for p in part_answers])
            ids += part_ids
        assert len(ids) == self.seq_len
        return ids, answers, aligned

    def _validation_packed(
        self, stream: int, index: int, progress: float, shares: tuple[float, float] | None
    ) -> tuple[list[int], list[list[int]], dict[int, str]]:
        """`_packed`, kept for the next call: a validation sequence is built once per way of aligning it."""
        key = (stream, index, progress, shares)
        if key not in self._validation_built:
            self._validation_built[key] = self._packed(stream, index, progress, shares)
        return self._validation_built[key]

    def _aligned(
        self,
        stream: int,
        index: int,
        lengths: list[int],
        progress: float,
        shares: tuple[float, float],
        built: dict[int, tuple[list[int], list[int], tuple[int, int], tuple[int, ...]]],
    ) -> dict[int, str]:
        """Move a share of the parts (`lengths`, changed in place) to segment boundaries: "question" (the first
        share, `boundary_share`) moves a part's end so that its question ends at a segment's last token; "needle"
        (the next share, `needle_boundary_share`) places the part's needle where a boundary cuts it
        (`_needle_at_boundary`, which leaves the lengths as they are). Every part draws, from its own generator,
        which (if either) it is, so the draws of one part never follow another's; the parts moved, each with its
        kind. The parts whose needle was placed are left in `built`."""
        draws = sample_rng(stream, self.seed, index, "boundary").random(len(lengths))
        segment, longest = self.segment_len, self.longest_part(progress)
        moved: dict[int, str] = {}
        start = len(self.bos)
        for part in range(len(lengths)):
            if draws[part] < shares[0]:
                if part == len(lengths) - 1:
                    break  # the last part's end is the sequence's
                # The answer and EOS end the part: its question ends where they start.
                tail = len(answer_ids(self.tokenizer, self._draw(stream, (index << 20) | part)[0])) + 1
                shift = -(start + lengths[part] - tail) % segment
                for delta in sorted((shift, shift - segment), key=abs):
                    here, there = lengths[part] + delta, lengths[part + 1] - delta
                    if self.pack_min_len <= min(here, there) and max(here, there) <= longest:
                        lengths[part], lengths[part + 1] = here, there
                        moved[part] = "question"
                        break
            elif draws[part] < shares[0] + shares[1]:
                placed = self._needle_at_boundary(stream, (index << 20) | part, start, lengths[part], progress)
                if placed is not None:
                    built[part] = placed
                    moved[part] = "needle"
            start += lengths[part]
        return moved

    def _needle_at_boundary(
        self, stream: int, sample: int, start: int, length: int, progress: float
    ) -> tuple[list[int], list[int], tuple[int, int], tuple[int, ...]] | None:
        """Part `sample` (`length` tokens from sequence position `start`) built with its needle at a filler slot
        where a segment boundary cuts it, one drawn among those the curriculum allows (depths from the lowest it
        draws); None where there is none."""
        part = self._part(stream, sample, length, progress)
        (first, end), slots = part[2], part[3]
        sentences, size = len(slots) - 1, end - first
        lowest = min(1.0 - progress, max(self.depths))
        boundaries = range((start // self.segment_len + 1) * self.segment_len, start + length, self.segment_len)
        cut = [(s, b - start) for b in boundaries for s in range(sentences + 1)
               if slots[s] < b - start < slots[s] + size and s >= lowest * sentences]  # fmt: skip
        if not sentences or not cut:
            return None
        slot, boundary = cut[int(sample_rng(stream, self.seed, sample, "needle_cut").integers(len(cut)))]
        placed = self._part(stream, sample, length, progress, depth=slot / sentences)
        first, end = placed[2]
        # A tokenizer that merges across the needle's edges could move it: keep the drawn depth then.
        return placed if first < boundary < end else None

    def _part_lengths(self, rng: np.random.Generator, progress: float) -> list[int]:
        left = self.seq_len - len(self.bos)
        if not self.pack_min_len:
            return [left]
        shortest, longest = self.pack_min_len, self.longest_part(progress)
        lengths = []
        while left >= 2 * shortest:
            if left > longest:  # split off a part that leaves room for at least one more
                n = int(rng.integers(shortest, min(longest, left - shortest) + 1))
            else:
                n = int(rng.integers(shortest, left + 1))
                n = left if left - n < shortest else n
            lengths.append(n)
            left -= n
        return lengths + ([left] if left else [])

    def longest_part(self, progress: float) -> int:
        """The longest packed part at curriculum `progress`: pack_min_len + progress · (seq_len − pack_min_len),
        but never below 2 · pack_min_len − 1, the shortest cap any rest of a sequence can be cut to."""
        grown = self.pack_min_len + int(progress * (self.seq_len - self.pack_min_len))
        return max(grown, 2 * self.pack_min_len - 1)

    def _draw(self, stream: int, index: int, progress: float = 1.0) -> tuple[str, float, str]:
        """Key (never an excluded evaluation key), depth and haystack kind of prompt `index` of `stream`, each
        from its own generator (the haystack's own draws too: see `prompts.SampleSeed`)."""
        seed = sample_seed(stream, self.seed, index)
        keys = seed.rng("key")
        key = draw_key(keys, self.key_digits)
        while key in self.excluded_keys:
            key = draw_key(keys, self.key_digits)
        depths = [d for d in self.depths if d >= 1.0 - progress] or [max(self.depths)]
        depth = depths[int(seed.rng("depth").integers(len(depths)))]
        return key, depth, self.haystacks[int(seed.rng("haystack").integers(len(self.haystacks)))]

    def _prompt(
        self, stream: int, index: int, length: int, bos: bool | None, progress: float = 1.0, depth: float | None = None
    ) -> PasskeySample:
        """Prompt `index` of `stream` as drawn (`_draw`), its needle at `depth` instead of the drawn one if given."""
        key, drawn, haystack = self._draw(stream, index, progress)
        return make_passkey_sample(
            self.tokenizer,
            length,
            drawn if depth is None else depth,
            seed=self.seed,
            index=index,
            stream=stream,
            key_digits=self.key_digits,
            haystack=haystack,
            bos=bos,
            key=key,
        )

    def selection_prompts(self, length: int, count: int) -> list[PasskeySample]:
        """`count` prompts of exactly `length` tokens drawn like the training prompts (keys, depths, haystacks),
        from a seed stream of their own: the validation split on which a fine-tuning LR is chosen. They start with
        BOS as evaluation prompts do, and are scored as evaluation prompts are."""
        return [self._prompt(SELECTION_STREAM, index, length, bos=None) for index in range(count)]

    def _part(
        self, stream: int, index: int, length: int, progress: float = 1.0, depth: float | None = None
    ) -> tuple[list[int], list[int], tuple[int, int], tuple[int, ...]]:
        """`length` tokens: prompt (no BOS), answer, EOS; the answer's positions in them, the needle's span, and
        where the needle would start at each filler slot (`PasskeySample.slot_starts`). `depth` replaces the drawn
        depth."""
        answer = answer_ids(self.tokenizer, self._draw(stream, index)[0])
        prompt_len = target = length - len(answer) - 1
        for _ in range(4):  # a tokenizer that merges across the joins may move the length: aim again
            sample = self._prompt(stream, index, target, bos=False, progress=progress, depth=depth)
            if len(sample.input_ids) == prompt_len:
                break
            target -= len(sample.input_ids) - prompt_len
        else:
            raise ValueError(f"could not build a {length}-token passkey part with this tokenizer")
        ids = sample.input_ids + answer + [self.tokenizer.eos_token_id]
        answers = list(range(prompt_len, prompt_len + len(answer)))
        return ids, answers, (sample.needle_start, sample.needle_end), sample.slot_starts

    def _batch(self, stream: int, indices: Sequence[int], progress: float = 1.0, aligned: str | None = None) -> Batch:
        """The sequences `indices` of `stream`, labelled as `loss` says. With `aligned` ("question" or "needle"),
        every part that can be is aligned with a segment boundary that way (its share 1) and only those parts'
        answers are labelled."""
        input_ids, (labels,) = self._labelled(stream, indices, progress, (None,), aligned)
        return input_ids, labels

    def _labelled(
        self,
        stream: int,
        indices: Sequence[int],
        progress: float,
        tokens: Sequence[int | None],
        aligned: str | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`_batch`'s sequences with a labelling per entry of `tokens`: None, as `_batch` labels them; t, on each
        answer's token t alone, whatever `loss` is (with the package's tokenizer, 0 is the space before the key, 1
        its first digit, and so on)."""
        shares = None if aligned is None else (float(aligned == "question"), float(aligned == "needle"))
        packed = self._validation_packed if stream == TRAIN_VALIDATION_STREAM else self._packed
        rows, answers, moved = zip(*(packed(stream, i, progress, shares) for i in indices), strict=True)
        input_ids = torch.tensor(rows, dtype=torch.long)  # (B, T)
        labellings = []
        for token in tokens:
            if self.loss == "all" and token is None and aligned is None:
                labellings.append(input_ids.clone())
                continue
            labels = torch.full_like(input_ids, -100)
            for b, parts in enumerate(answers):
                kept = [answer for part, answer in enumerate(parts) if aligned is None or part in moved[b]]
                positions = [p for answer in kept for p in (answer if token is None else answer[token : token + 1])]
                labels[b, positions] = input_ids[b, positions]
            labellings.append(labels)
        return input_ids, labellings

    def batch(self, step: int, micro_step: int) -> Batch:
        first = ((step * self.grad_accum + micro_step) * self.world_size + self.rank) * self.batch_size
        return self._batch(TRAIN_STREAM, range(first, first + self.batch_size), self.progress(step))

    def split(self, batch_size: int, grad_accum: int) -> PasskeyBatchSource:
        """The same sequences per step, and the same validation sequences, in `grad_accum` passes of `batch_size`."""
        return split_source(self, batch_size, grad_accum)

    def validation_batches(self, aligned: str | None = None) -> Iterator[Batch]:
        """The validation sequences (the same every call), labelled as training labels; with `aligned`, as many of
        their parts as can be moved to a segment boundary that way, labelled on those answers alone (`_batch`)."""
        for indices in self._validation_indices():
            yield self._batch(TRAIN_VALIDATION_STREAM, indices, aligned=aligned)

    def _validation_indices(self) -> Iterator[list[int]]:
        """This process's validation sequences, a batch of `batch_size` at a time."""
        size = self.validation_batch_size
        indices = [(i * self.world_size + self.rank) * size + b for i in range(self.num_validation_batches)
                   for b in range(size)]  # fmt: skip
        for start in range(0, len(indices), self.batch_size):
            yield indices[start : start + self.batch_size]

    def boundary_batches(self) -> Iterator[Batch]:
        """The validation sequences with their parts at segment boundaries, scored on those parts' answers: the
        answer written in a new segment, as after an evaluation prompt of whole segments. The trainer logs their
        loss at each validation as `boundary_loss`. No batches without `segment_len` or packing."""
        return self._aligned_batches("question")

    def needle_boundary_batches(self) -> Iterator[Batch]:
        """The validation sequences with each part's needle placed where a segment boundary cuts it (where one can be),
        scored on those parts' answers: the key's sentence split across a memory update. The trainer logs their
        loss at each validation as `needle_boundary_loss`. No batches without `segment_len` or packing."""
        return self._aligned_batches("needle")

    def _aligned_batches(self, aligned: str) -> Iterator[Batch]:
        if self.segment_len is None or not self.pack_min_len:
            return iter(())
        return self.validation_batches(aligned=aligned)

    def answer_token_validation(self) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        """The validation batches, each with its labellings: as training labels (`validation_batches`'), then on
        each token an answer can have (the space and `key_digits` digits) alone, every answer's. The trainer scores
        them in one forward pass per batch and logs the validation loss and the loss on each answer token, which
        shows what a model knows of the key as it learns (the first digit: where the key is; the later ones, given
        the digits before them: their order). A token no answer has scores nothing (NaN)."""
        tokens = (None, *range(self.key_digits + 1))
        for indices in self._validation_indices():
            yield self._labelled(TRAIN_VALIDATION_STREAM, indices, 1.0, tokens)

    def state_dict(self) -> dict[str, Any]:
        """What fixes every batch (a resumed run refuses a source that differs)."""
        return {
            "kind": "passkey",
            "seed": self.seed,
            "seq_len": self.seq_len,
            "sequences_per_step": self.batch_size * self.grad_accum * self.world_size,
            "key_digits": self.key_digits,
            "depths": list(self.depths),
            "haystacks": list(self.haystacks),
            "loss": self.loss,
            "pack_min_len": self.pack_min_len,
            "curriculum_steps": self.curriculum_steps,
            # Only where parts are moved, so that runs from before the options resume.
            **{
                name: value
                for name, value in (
                    ("segment_len", self.segment_len),
                    ("boundary_share", self.boundary_share),
                    ("needle_boundary_share", self.needle_boundary_share),
                )
                if (self.boundary_share or self.needle_boundary_share) and (value or name == "segment_len")
            },
            "excluded": self.exclusion,
            "excluded_keys_sha256": hashlib.sha256(",".join(sorted(self.excluded_keys)).encode()).hexdigest()[:16],
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
        }


def finetune_passkey(
    checkpoint: str,
    out: str,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    source_options: dict[str, Any] | None = None,
    **train_fields: Any,
) -> TrainResult:
    """Fine-tune `checkpoint` on passkey sequences with `train`; returns its TrainResult.

    `train_fields` are TrainConfig fields (steps, seq_len, batch_size, global_batch, lr, ...; defaults: the
    study's recipe above, whose batch_size None is automatic); `source_options` go to PasskeyBatchSource
    (key_digits, depths, loss, pack_min_len, ...; segment_len defaults to the checkpoint's)."""
    fields = {**STUDY_RECIPE, **train_fields, "init_from": str(checkpoint), "out": str(out)}
    cfg = TrainConfig(**fields)
    cfg.validate()
    tokenizer = tokenizer if tokenizer is not None else load_eval_tokenizer(checkpoint)
    rank, world_size, _ = launch_env()
    source = PasskeyBatchSource(
        tokenizer,
        cfg.seq_len,
        *initial_split(cfg, world_size),  # the trainer splits it anew for an automatic micro-batch
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        **{"segment_len": model_segment_len(checkpoint), **(source_options or {})},
    )
    return train(cfg, batches=source, tokenizer=tokenizer)
