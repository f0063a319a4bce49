"""TF32 is the training run's setting alone: on while the run trains under bf16 on a GPU, and PyTorch's float32
settings as they were once it returns or raises, so an evaluation later in the same process (a study's reused worker)
computes in float32."""

import pytest
import torch
from train_helpers import Wrapped, window_source

from infini_llama.train import loop, train
from infini_llama.train.loop import tf32_matmuls


def float32_settings() -> tuple:
    return torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture(autouse=True)
def _settings_kept():
    """A failing test must not leave TF32 on for the tests after it."""
    before = float32_settings()
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1], before[2]


class RecordTF32(Wrapped):
    """The run's batches; notes whether float32 matmuls may use TF32 while each one is fetched, and raises while
    fetching step `fail_at` (0-based) if given."""

    def __init__(self, inner, fail_at: int | None = None) -> None:
        super().__init__(inner)
        self.fail_at, self.seen = fail_at, []

    def batch(self, step: int, micro_step: int):
        self.seen.append(torch.backends.cuda.matmul.allow_tf32)
        if step == self.fail_at:
            raise RuntimeError(f"a broken batch at step {step}")
        return super().batch(step, micro_step)


def test_tf32_is_on_inside_the_block_and_as_before_after():
    before = float32_settings()
    with tf32_matmuls(False):
        assert float32_settings() == before
    with tf32_matmuls(True):
        assert torch.backends.cuda.matmul.allow_tf32
    assert float32_settings() == before
    with pytest.raises(RuntimeError, match="inside"), tf32_matmuls(True):
        raise RuntimeError("inside")
    assert float32_settings() == before


@pytest.mark.parametrize("fail_at", [None, 2], ids=["finished", "raised"])
def test_a_bf16_run_leaves_float32_settings_as_it_found_them(micro_cfg, tmp_path, monkeypatch, fail_at):
    # The flags can be set without a GPU: the run is told it wants TF32, as a bf16 run on CUDA is.
    monkeypatch.setattr(loop, "uses_tf32", lambda plan: True)
    torch.set_float32_matmul_precision("highest")
    before = float32_settings()
    cfg = micro_cfg(out=str(tmp_path / "run"), precision="bf16", steps=4, eval_every=0, save_every=0, data_workers=0)
    batches = RecordTF32(window_source(cfg), fail_at=fail_at)
    if fail_at is None:
        train(cfg, batches=batches)
    else:
        with pytest.raises(RuntimeError, match="broken batch"):
            train(cfg, batches=batches)
    assert batches.seen and all(batches.seen)  # TF32 while training
    assert float32_settings() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_bf16_gpu_run_trains_in_tf32_and_evaluation_after_it_does_not(micro_cfg, tmp_path):
    torch.set_float32_matmul_precision("highest")
    before = float32_settings()
    cfg = micro_cfg(out=str(tmp_path / "run"), device="cuda", precision="bf16", steps=3, eval_every=0, save_every=0,
                    data_workers=0)  # fmt: skip
    batches = RecordTF32(window_source(cfg))
    train(cfg, batches=batches)
    assert batches.seen and all(batches.seen)
    assert float32_settings() == before
    # A float32 matmul after the run is as exact as one before any run: TF32 would be ~1e-3 off.
    generator = torch.Generator("cuda").manual_seed(0)
    a, b = (torch.randn(512, 512, device="cuda", generator=generator) for _ in range(2))
    exact = (a.double() @ b.double()).float()
    assert ((a @ b - exact).norm() / exact.norm()).item() < 1e-5
