"""A frozen gate (`gate_trainable=False`, the gate ablation) through training: β never moves, the optimizer has no
gates group, and resuming keeps both (and repeats the uninterrupted losses)."""

import signal

import torch
from train_helpers import SignalAt, window_source

from infini_llama.train import train
from infini_llama.train.checkpoint import list_checkpoints, load_optimizer_state, load_weights

FROZEN = {"gate_trainable": False, "gate_init": 0.0}  # g = 0.5 throughout


def betas(folder, frozen: bool = True) -> torch.Tensor:
    model = load_weights(folder)
    assert all(layer.self_attn.memory_gate.requires_grad is not frozen for layer in model.model.layers)
    return torch.stack([layer.self_attn.memory_gate.detach() for layer in model.model.layers])


def group_names(checkpoint) -> list[str]:
    return [group["name"] for group in load_optimizer_state(checkpoint)["param_groups"]]


def test_frozen_gate_is_unchanged_by_training_and_resuming(micro_cfg, tmp_path):
    # A gate LR as high as the tiny study's: a learned gate would move at once.
    straight = train(micro_cfg(out=str(tmp_path / "straight"), save_every=3, model=FROZEN, gate_lr=0.1))
    assert torch.equal(betas(straight.final_dir), torch.zeros(2, 2))
    assert group_names(list_checkpoints(straight.run_dir)[-1]) == ["decay", "no_decay"]

    cfg = micro_cfg(out=str(tmp_path / "split"), save_every=3, model=FROZEN, gate_lr=0.1)
    first = train(cfg, batches=SignalAt(window_source(cfg), at=3, signum=signal.SIGTERM))
    assert first.stopped_by == "SIGTERM" and first.step == 4
    second = train(micro_cfg(out=str(tmp_path / "split"), save_every=3, model=FROZEN, gate_lr=0.1, resume=True))
    assert {**first.losses, **second.losses} == straight.losses
    assert torch.equal(betas(second.final_dir), torch.zeros(2, 2))
    assert group_names(list_checkpoints(second.run_dir)[-1]) == ["decay", "no_decay"]


def test_learned_gate_moves_and_has_its_group(micro_cfg):
    result = train(micro_cfg(steps=4, save_every=4, gate_lr=0.1))
    assert not torch.equal(betas(result.final_dir, frozen=False), torch.zeros(2, 2))
    assert group_names(list_checkpoints(result.run_dir)[-1]) == ["decay", "no_decay", "gates"]
