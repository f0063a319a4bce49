"""Same seed and config, same losses and weights, bit for bit, on the CPU; another seed, other losses."""

import torch
from safetensors.torch import load_file

from infini_llama.train import train


def test_same_seed_same_run_bit_for_bit(micro_cfg, tmp_path):
    first = train(micro_cfg(out=str(tmp_path / "a"), save_every=0))
    second = train(micro_cfg(out=str(tmp_path / "b"), save_every=0))
    assert first.losses == second.losses and first.val_loss == second.val_loss
    a, b = load_file(first.final_dir / "model.safetensors"), load_file(second.final_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)

    other = train(micro_cfg(out=str(tmp_path / "c"), save_every=0, seed=1))
    assert all(other.losses[s] != first.losses[s] for s in first.losses)
