"""Choosing training windows from a token stream, and turning them into batches.

A *window* is ``seq_len + 1`` consecutive tokens starting at some offset.

**Contract with the trainer.**  The model computes its loss HF-style, shifting labels
internally.  So the trainer takes ``input_ids`` from :func:`get_batch` and calls
``model(input_ids=input_ids, labels=input_ids)``.  The second tensor :func:`get_batch`
returns (``labels``, already shifted: ``labels[:, t]`` is the token after
``input_ids[:, t]``) is for code that computes ``cross_entropy(logits, labels)`` without
shifting; passing it to an HF-style model would shift twice.  :func:`get_windows`
returns the raw ``(B, seq_len + 1)`` windows for anything else.

:class:`WindowSampler` is stateless: the offsets for a step are a pure function of
``(seed, step, rank, world_size, batch_size)`` and the stream length, so resuming at step
``i`` replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

MODES = ("random", "sequential")


class WindowSampler:
    """Start offsets of training windows for each step, per rank.

    The stream is cut into ``num_windows`` non-overlapping windows (consecutive windows
    share one token: the last label of one is the first input of the next).  Global
    sample ``g = (step * world_size + rank) * batch_size + b`` takes window
    ``g mod num_windows`` of epoch ``g // num_windows``, so within an epoch every window
    is used once and ranks never share a window.

    * ``mode="random"``: each epoch uses its own permutation of the windows and its own
      shift of the window grid (both from ``seed`` and the epoch), so epochs differ.
    * ``mode="sequential"``: windows in stream order, no shift (e.g. for debugging).

    Resuming requires the same ``seed``, ``batch_size``, ``world_size`` and stream.
    """

    def __init__(
        self,
        num_tokens: int,
        seq_len: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        mode: str = "random",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if num_tokens < seq_len + 1:
            raise ValueError(
                f"the token stream has {num_tokens} tokens, fewer than one window of "
                f"seq_len+1={seq_len + 1}; "
                "use a shorter seq_len or more data"
            )
        self.num_tokens, self.seq_len, self.seed = int(num_tokens), int(seq_len), int(seed)
        self.rank, self.world_size, self.mode = int(rank), int(world_size), mode
        # Random mode shifts the grid by up to max_shift tokens; keep the same number of
        # windows in every epoch so epoch boundaries stay a pure function of g.
        self.max_shift = min(seq_len - 1, num_tokens - 1 - seq_len) if mode == "random" else 0
        self.num_windows = (self.num_tokens - 1 - self.max_shift) // self.seq_len
        self._memo: dict[int, tuple[np.ndarray, int]] = {}

    def _epoch(self, epoch: int) -> tuple[np.ndarray, int]:
        """(window permutation, grid shift) of one epoch; memoised, since consecutive
        steps nearly always fall in the same epoch."""
        if epoch not in self._memo:
            if self.mode == "sequential":
                value = (np.arange(self.num_windows, dtype=np.int64), 0)
            else:
                rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
                shift = int(rng.integers(0, self.max_shift + 1))
                value = (rng.permutation(self.num_windows).astype(np.int64), shift)
            if len(self._memo) >= 2:  # a batch spans at most two epochs
                self._memo.pop(next(iter(self._memo)))
            self._memo[epoch] = value
        return self._memo[epoch]

    def offsets(self, step: int, batch_size: int) -> np.ndarray:
        """Start offsets (``int64``, shape ``(batch_size,)``) of this rank's windows at ``step``.

        Each window is ``tokens[o : o + seq_len + 1]``.
        """
        g = self.sample_ids(step, batch_size)
        out = np.empty(batch_size, dtype=np.int64)
        for epoch in np.unique(g // self.num_windows):
            sel = g // self.num_windows == epoch
            perm, shift = self._epoch(int(epoch))
            out[sel] = shift + perm[g[sel] % self.num_windows] * self.seq_len
        return out

    def sample_ids(self, step: int, batch_size: int) -> np.ndarray:
        """The global sample numbers ``g`` (``int64``, shape ``(batch_size,)``) of this rank's windows at ``step``."""
        if step < 0 or batch_size < 1:
            raise ValueError(f"need step >= 0 and batch_size >= 1, got step={step}, batch_size={batch_size}")
        return (step * self.world_size + self.rank) * batch_size + np.arange(batch_size, dtype=np.int64)

    def epoch_of(self, step: int, batch_size: int) -> float:
        """How many passes over the windows this rank's first sample at ``step`` is into."""
        return (step * self.world_size + self.rank) * batch_size / self.num_windows

    def state_dict(self) -> dict:
        """The sampler's configuration (it has no other state), for checkpoints."""
        return {
            "num_tokens": self.num_tokens,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "world_size": self.world_size,
            "mode": self.mode,
        }

    def load_state_dict(self, state: dict) -> None:
        """Check that a checkpoint's sampler matches this one; resuming needs equal configs."""
        mine = self.state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise ValueError(
                f"sampler config differs from the checkpoint (checkpoint, now): {diff}; resuming would "
                "not replay the same batches: use the same data, seq_len, seed and world size"
            )


def get_windows(tokens: np.ndarray, offsets: np.ndarray, seq_len: int) -> torch.Tensor:
    """Gather windows ``tokens[o : o + seq_len + 1]``: ``LongTensor (B, seq_len + 1)``."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.size and (offsets.min() < 0 or offsets.max() + seq_len + 1 > len(tokens)):
        raise ValueError(f"a window of {seq_len + 1} tokens at offsets {offsets} runs past the {len(tokens)} tokens")
    # Fancy-indexing a memmap reads only the needed pages.
    idx = offsets[:, None] + np.arange(seq_len + 1, dtype=np.int64)[None, :]
    return torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))


def get_batch(tokens: np.ndarray, offsets: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)``, both ``LongTensor (B, seq_len)``, ``labels`` pre-shifted.

    ``input_ids = window[:, :seq_len]`` and ``labels = window[:, 1:]``.  For this
    project's HF-style model (it shifts internally) use ``model(input_ids=input_ids,
    labels=input_ids)`` and ignore ``labels``; see the module docstring.
    """
    w = get_windows(tokens, offsets, seq_len)
    return w[:, :-1], w[:, 1:]


def validation_offsets(
    num_tokens: int, seq_len: int, *, rank: int = 0, world_size: int = 1, max_windows: int | None = None
) -> np.ndarray:
    """Fixed, non-overlapping validation window offsets ``0, seq_len, 2*seq_len, ...``.

    With ``max_windows``, the first ``max_windows`` windows; with several ranks, rank
    ``r`` gets windows ``r, r + world_size, ...`` of those.
    """
    n = (num_tokens - 1) // seq_len
    if n < 1:
        raise ValueError(
            f"the validation stream has {num_tokens} tokens, fewer than seq_len+1={seq_len + 1}; "
            "use a shorter seq_len or a larger validation split"
        )
    if max_windows is not None:
        n = min(n, max_windows)
    return np.arange(rank, n, world_size, dtype=np.int64) * seq_len


def iter_validation_batches(
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    *,
    max_windows: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic ``(input_ids, labels)`` batches over fixed validation windows.

    Same tensors as :func:`get_batch`; the last batch may be smaller than ``batch_size``.
    """
    offs = validation_offsets(len(tokens), seq_len, rank=rank, world_size=world_size, max_windows=max_windows)
    for i in range(0, len(offs), batch_size):
        yield get_batch(tokens, offs[i : i + batch_size], seq_len)
