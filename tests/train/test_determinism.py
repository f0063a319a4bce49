"""Same seed and config, same losses and weights, bit for bit, on the CPU; another seed, other losses; on a GPU,
`deterministic` makes it hold for the full-attention arm too."""

import os

import pytest
import torch
from safetensors.torch import load_file

from infini_llama.train import train
from infini_llama.train.loop import deterministic_kernels


def test_same_seed_same_run_bit_for_bit(micro_cfg, tmp_path):
    first = train(micro_cfg(out=str(tmp_path / "a"), save_every=0))
    second = train(micro_cfg(out=str(tmp_path / "b"), save_every=0))
    assert first.losses == second.losses and first.val_loss == second.val_loss
    a, b = load_file(first.final_dir / "model.safetensors"), load_file(second.final_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)

    other = train(micro_cfg(out=str(tmp_path / "c"), save_every=0, seed=1))
    assert all(other.losses[s] != first.losses[s] for s in first.losses)


def test_deterministic_kernels_are_on_inside_and_as_before_after(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    with deterministic_kernels(False):
        assert torch.are_deterministic_algorithms_enabled() == before[0]
    with deterministic_kernels(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        assert torch.is_deterministic_algorithms_warn_only_enabled() is False  # a missing kernel raises
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before
    with pytest.raises(RuntimeError, match="inside"), deterministic_kernels(True):
        raise RuntimeError("inside")
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before


def test_a_deterministic_run_trains_as_the_default_on_cpu(micro_cfg, tmp_path):
    # On the CPU every kernel the trainer uses has a deterministic form, and the losses are the same bits.
    plain = train(micro_cfg(out=str(tmp_path / "plain"), steps=3, eval_every=0, save_every=0))
    strict = train(micro_cfg(out=str(tmp_path / "strict"), steps=3, eval_every=0, save_every=0, deterministic=True))
    assert strict.losses == plain.losses
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("attention", ["full", "infini"])
def test_deterministic_runs_on_one_gpu_are_bit_exact(micro_cfg, tmp_path, attention):
    """Full attention over 512 tokens spans several flash-attention key blocks, whose backward sums with atomics."""
    runs = [
        train(micro_cfg(out=str(tmp_path / name), device="cuda", precision="bf16", seq_len=512, save_every=0,
                        deterministic=True, model={"attention": attention}))
        for name in "ab"
    ]  # fmt: skip
    assert runs[0].losses == runs[1].losses and runs[0].val_loss == runs[1].val_loss
    a, b = (load_file(run.final_dir / "model.safetensors") for run in runs)
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_same_seed_same_losses_on_one_gpu(micro_cfg, tmp_path, precision):
    """Holds for these kernels on one GPU (H200, eager and compiled); docs/reliability.md says what is not promised."""
    runs = [train(micro_cfg(out=str(tmp_path / name), device="cuda", precision=precision)) for name in "ab"]
    assert runs[0].losses == runs[1].losses and runs[0].val_loss == runs[1].val_loss
