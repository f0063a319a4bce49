"""Batches built ahead of the step in worker processes (`data_workers`): the same batches, the same run."""

import pickle

import pytest
import torch

from infini_llama.data import load_token_data
from infini_llama.train import recipe, train
from infini_llama.train.loop import _Trainer
from infini_llama.train.setup import resolve_data_workers


def test_a_run_with_data_workers_is_the_run_without(micro_cfg, tmp_path):
    plain = train(micro_cfg(out=str(tmp_path / "plain"), save_every=0, data_workers=0))
    ahead = train(micro_cfg(out=str(tmp_path / "ahead"), save_every=0, data_workers=2))
    assert ahead.losses == plain.losses and ahead.val_loss == plain.val_loss


def test_the_workers_build_the_first_steps_while_the_model_is_built(micro_cfg, tmp_path, monkeypatch):
    """Starting a worker (a new Python process importing torch) and its first batch took seconds that the first
    steps waited for; the trainer now starts them before it builds and compiles the model."""
    seen = {}
    build = _Trainer._build_model

    def watched(self):
        seen["pending"] = sorted(self.ahead.pending)
        return build(self)

    monkeypatch.setattr(_Trainer, "_build_model", watched)
    train(micro_cfg(out=str(tmp_path / "run"), steps=2, save_every=0, data_workers=2))
    assert seen["pending"] == [0, 1, 2, 3], "steps 0 to depth - 1 (twice the workers) are being built"


def test_token_data_travels_to_a_worker_as_its_path(micro_cfg, tmp_path, cache_root):
    train(micro_cfg(out=str(tmp_path / "run"), steps=1, save_every=0))  # tokenizes the corpus into the cache
    data = load_token_data(next(cache_root.rglob("train.bin")).parent)
    payload = pickle.dumps(data)
    assert len(payload) < 2_000 and data.train.nbytes > 10 * len(payload), "the tokens are not copied"
    again = pickle.loads(payload)
    assert again.path == data.path and (again.train == data.train).all()


class _Slow:
    builds_slowly = True


@pytest.mark.parametrize(
    "setting,source,device,expected",
    [
        (None, _Slow(), "cuda", 4),  # passkey fine-tuning on a GPU: built ahead
        (None, object(), "cuda", 0),  # token windows: slices of a memory map
        (None, _Slow(), "cpu", 0),  # on CPU the cores train
        (3, object(), "cpu", 3),  # asked for
    ],
)
def test_default_data_workers(setting, source, device, expected):
    assert resolve_data_workers(setting, source, torch.device(device)) == expected


def test_negative_data_workers_are_refused():
    with pytest.raises(ValueError, match="data_workers must be"):
        recipe("tiny", data_workers=-1).validate()
