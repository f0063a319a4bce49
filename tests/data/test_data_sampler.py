from __future__ import annotations

import numpy as np
import pytest
import torch

from infini_llama.data import (
    WindowSampler,
    get_batch,
    get_windows,
    iter_validation_batches,
    validation_offsets,
)

N, L, B = 100_003, 64, 8


def _run(sampler, steps, batch=B):
    return [sampler.offsets(s, batch).tolist() for s in steps]


def test_pure_function_of_seed_and_step():
    a, b = WindowSampler(N, L, seed=3), WindowSampler(N, L, seed=3)
    assert _run(a, range(5)) == _run(b, range(5))
    assert _run(a, range(5)) != _run(WindowSampler(N, L, seed=4), range(5))
    assert a.offsets(7, B).dtype == np.int64 and a.offsets(7, B).shape == (B,)


def test_resume_replays_uninterrupted_run():
    steps = range(0, 400)  # several epochs: 1562 windows / 8 per step ~ 195 steps each
    full = _run(WindowSampler(N, L, seed=1), steps)
    resumed = WindowSampler(N, L, seed=1)
    resumed.load_state_dict(WindowSampler(N, L, seed=1).state_dict())
    assert _run(resumed, range(150, 400)) == full[150:]


def test_epoch_uses_every_window_once_across_ranks():
    world = 4
    samplers = [WindowSampler(N, L, seed=0, rank=r, world_size=world) for r in range(world)]
    n = samplers[0].num_windows
    per_epoch_steps = n // (B * world)
    seen = [o for s in samplers for step in range(per_epoch_steps) for o in s.offsets(step, B)]
    assert len(seen) == len(set(seen))  # ranks never share a window within an epoch
    shift = min(seen) % L
    assert all((o - shift) % L == 0 and 0 <= o and o + L + 1 <= N for o in seen)
    assert _run(samplers[0], range(3)) != _run(samplers[1], range(3))


def test_epochs_differ_in_order_and_grid():
    s = WindowSampler(N, L, seed=0)
    steps_per_epoch = s.num_windows // B
    assert _run(s, [0]) != _run(s, [steps_per_epoch + 1])
    assert s.epoch_of(steps_per_epoch * 2, B) == pytest.approx(2, abs=0.01)


def test_sequential_mode():
    s = WindowSampler(1000, 10, mode="sequential", rank=1, world_size=2)
    assert s.offsets(0, 3).tolist() == [30, 40, 50]  # rank 0 has 0, 10, 20
    assert s.offsets(1, 3).tolist() == [90, 100, 110]


def test_batch_spanning_epoch_boundary_is_in_bounds():
    s = WindowSampler(1000, 100, seed=5)
    for step in range(20):
        o = s.offsets(step, 7)
        assert ((o >= 0) & (o + 101 <= 1000)).all()


def test_bad_configs():
    with pytest.raises(ValueError, match="fewer than one window"):
        WindowSampler(10, 10)
    with pytest.raises(ValueError, match="rank"):
        WindowSampler(N, L, rank=2, world_size=2)
    with pytest.raises(ValueError, match="mode"):
        WindowSampler(N, L, mode="shuffle")
    with pytest.raises(ValueError, match="differs"):
        WindowSampler(N, L, seed=1).load_state_dict(WindowSampler(N, L, seed=2).state_dict())


def test_get_batch_and_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    offsets = np.array([0, 10, 500])
    w = get_windows(tokens, offsets, 16)
    assert w.shape == (3, 17) and w.dtype == torch.long
    x, y = get_batch(tokens, offsets, 16)
    assert x.shape == y.shape == (3, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[2], torch.arange(500, 516))
    with pytest.raises(ValueError, match="runs past"):
        get_windows(tokens, np.array([990]), 16)


def test_get_batch_from_memmap(tmp_path):
    np.arange(5000, dtype=np.uint32).tofile(tmp_path / "t.bin")
    mm = np.memmap(tmp_path / "t.bin", dtype=np.uint32, mode="r")
    x, _ = get_batch(mm, WindowSampler(len(mm), 32, seed=0).offsets(0, 4), 32)
    assert x.shape == (4, 32) and bool((x[:, 1:] - x[:, :-1] == 1).all())


def test_validation_iterator_is_fixed():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = list(iter_validation_batches(tokens, 100, 4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 1]  # 9 windows
    assert batches[0][0][1, 0].item() == 100
    again = list(iter_validation_batches(tokens, 100, 4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert validation_offsets(1000, 100, max_windows=5).tolist() == [0, 100, 200, 300, 400]
    r0 = validation_offsets(1000, 100, rank=0, world_size=2).tolist()
    r1 = validation_offsets(1000, 100, rank=1, world_size=2).tolist()
    assert sorted(r0 + r1) == validation_offsets(1000, 100).tolist() and not set(r0) & set(r1)
    with pytest.raises(ValueError, match="validation stream"):
        validation_offsets(50, 100)
