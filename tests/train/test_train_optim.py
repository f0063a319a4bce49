"""The learning-rate schedule and the optimizer's parameter groups (the gates' own LR, no decay)."""

import math

import pytest
import torch

from infini_llama import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.train import build_optimizer, build_scheduler, lr_factor, recipe
from infini_llama.train.optim import parameter_groups

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "step,expected",
    [
        (0, 0.01),  # warm-up starts at 1/warmup_steps: the first update is not at LR 0
        (49, 0.5),
        (99, 1.0),  # end of warm-up: the peak
        (100, 1.0),  # cosine starts at the peak
        (550, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 450 / 899))),
        (999, 0.1),  # last step: the floor
        (5000, 0.1),  # past the end: stays at the floor
    ],
    ids=lambda v: str(v) if isinstance(v, int) else "",
)
def test_lr_factor_warmup_cosine_floor(step, expected):
    got = lr_factor(step, warmup_steps=100, total_steps=1000, min_ratio=0.1)
    assert got == pytest.approx(expected, rel=1e-12)


def test_lr_factor_without_warmup_starts_at_peak():
    assert lr_factor(0, warmup_steps=0, total_steps=10, min_ratio=0.0) == 1.0
    assert lr_factor(9, warmup_steps=0, total_steps=10, min_ratio=0.0) == pytest.approx(0.0, abs=1e-12)


def micro_model(seed: int = 0) -> InfiniLlamaForCausalLM:
    torch.manual_seed(seed)
    return InfiniLlamaForCausalLM(
        config_from_preset("tiny", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=2, segment_len=8)
    )  # fmt: skip


def test_gate_group_has_own_lr_and_no_decay():
    cfg = recipe("tiny", lr=1e-3, gate_lr=0.02, weight_decay=0.1)
    model = micro_model()
    groups = {g["name"]: g for g in build_optimizer(model, cfg, CPU).param_groups}
    assert set(groups) == {"decay", "no_decay", "gates"}
    assert groups["gates"]["lr"] == 0.02 and groups["gates"]["weight_decay"] == 0.0
    assert groups["decay"]["lr"] == 1e-3 and groups["decay"]["weight_decay"] == 0.1
    assert groups["no_decay"]["weight_decay"] == 0.0
    betas = {id(p) for p in groups["gates"]["params"]}
    assert betas == {id(layer.self_attn.memory_gate) for layer in model.model.layers}
    assert all(p.dim() >= 2 for p in groups["decay"]["params"])


def test_scheduler_scales_every_group_by_the_same_shape():
    cfg = recipe("tiny", lr=1e-3, min_lr=1e-4, gate_lr=0.01, warmup_steps=4, steps=20)
    optimizer = build_optimizer(micro_model(), cfg, CPU)
    scheduler = build_scheduler(optimizer, cfg)
    seen = []
    for _ in range(cfg.steps):
        seen.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert seen[0]["decay"] == pytest.approx(1e-3 / 4) and seen[0]["gates"] == pytest.approx(0.01 / 4)
    assert seen[3]["decay"] == pytest.approx(1e-3) and seen[3]["gates"] == pytest.approx(0.01)
    assert seen[-1]["decay"] == pytest.approx(1e-4) and seen[-1]["gates"] == pytest.approx(1e-3)
    for lrs in seen:
        assert lrs["gates"] / lrs["decay"] == pytest.approx(10.0)


def gate_movement(gate_lr: float | None) -> float:
    """Mean |Δβ| after 20 steps of language modelling on random tokens at base LR 1e-4."""
    cfg = recipe("tiny", lr=1e-4, min_lr=1e-4, gate_lr=gate_lr, warmup_steps=0, steps=20)
    model = micro_model()
    start = torch.stack([layer.self_attn.memory_gate.detach().clone() for layer in model.model.layers])
    optimizer = build_optimizer(model, cfg, CPU)
    tokens = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    for _ in range(cfg.steps):
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    end = torch.stack([layer.self_attn.memory_gate.detach() for layer in model.model.layers])
    return float((end - start).abs().mean())


def test_gate_lr_moves_beta_more_than_the_base_lr():
    with_gate_lr = gate_movement(0.01)
    with_base_lr = gate_movement(None)
    # Adam's steps are ~LR in size, so 100x the LR moves β roughly 100x further.
    assert with_gate_lr > 20 * with_base_lr
    assert with_gate_lr > 0.05


def test_the_fused_cpu_optimizer_steps_as_torchs_single_tensor_adamw():
    cfg = recipe("tiny", lr=1e-3, gate_lr=0.02, weight_decay=0.1)
    fast_model, slow_model = micro_model(), micro_model()
    fast = build_optimizer(fast_model, cfg, CPU)
    assert fast.defaults["fused"]
    slow = torch.optim.AdamW(
        parameter_groups(slow_model, cfg.weight_decay, gate_lr=cfg.gate_lr),
        lr=cfg.lr,
        betas=cfg.adam_betas,
        eps=cfg.adam_eps,
        foreach=False,
    )
    tokens = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        for model, optimizer in ((fast_model, fast), (slow_model, slow)):
            model(input_ids=tokens, labels=tokens).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    for (name, a), b in zip(fast_model.named_parameters(), slow_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_lr_factor_decay_steps_holds_the_peak_then_decays_over_the_last_steps():
    kw = dict(warmup_steps=10, total_steps=100, min_ratio=0.1, decay_steps=30)
    assert lr_factor(9, **kw) == 1.0  # warm-up ends at the peak
    assert [lr_factor(s, **kw) for s in (10, 50, 70)] == [1.0, 1.0, 1.0]  # held until the last 30 steps
    assert lr_factor(85, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 29)), rel=1e-12)
    assert lr_factor(99, **kw) == pytest.approx(0.1, rel=1e-12)  # the floor at the last step
    assert lr_factor(500, **kw) == 0.1
    # a decay as long as every step after the warm-up is the plain schedule
    plain = dict(warmup_steps=10, total_steps=100, min_ratio=0.1)
    for step in range(0, 120, 7):
        assert lr_factor(step, **plain, decay_steps=90) == lr_factor(step, **plain)


@pytest.mark.parametrize("decay_steps", [0, -5, 95, 2.5, True])
def test_decay_steps_must_fit_after_the_warm_up(decay_steps):
    with pytest.raises(ValueError, match="decay_steps"):
        recipe("tiny", steps=100, warmup_steps=10, decay_steps=decay_steps).validate()


def test_scheduler_follows_decay_steps():
    model = micro_model()
    cfg = recipe("tiny", steps=20, warmup_steps=2, lr=1e-3, min_lr=1e-4, decay_steps=5, gate_lr=None)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, cfg)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[2:15] == [pytest.approx(1e-3)] * 13
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs[15:], lrs[16:], strict=False))
