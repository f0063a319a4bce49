"""A frozen gate (`gate_trainable=False`), the gate ablation: β stays at `gate_init`, gets no gradient, is in no
optimizer group, and stays frozen through save and load."""

import pytest
import torch
from model_helpers import make_model, tokens
from transformers import AutoModelForCausalLM

from infini_llama import InfiniLlamaConfig, InfiniLlamaForCausalLM
from infini_llama.models import parameter_groups


def test_frozen_gate_gets_no_gradient_and_no_group(one_thread):
    model = make_model(gate_trainable=False, gate_init=0.0).train()
    betas = [layer.self_attn.memory_gate for layer in model.model.layers]
    assert all(not beta.requires_grad for beta in betas)
    assert torch.equal(model.gate_values(), torch.full((2, 4), 0.5, dtype=torch.float64))  # g = act(0) = 0.5
    x = tokens()
    model(input_ids=x, labels=x).loss.backward()
    assert all(beta.grad is None for beta in betas)
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
    assert [group["name"] for group in parameter_groups(model, 0.1, gate_lr=0.05)] == ["decay", "no_decay"]
    learned = make_model()
    assert [group["name"] for group in parameter_groups(learned, 0.1)] == ["decay", "no_decay", "gates"]


def test_frozen_gate_survives_save_and_load(tmp_path, one_thread):
    model = make_model(gate_trainable=False, gate_init=-2.0)
    model.save_pretrained(tmp_path)
    for loader in (InfiniLlamaForCausalLM, AutoModelForCausalLM):
        loaded = loader.from_pretrained(tmp_path, dtype=torch.float64)
        assert loaded.config.gate_trainable is False
        assert all(not layer.self_attn.memory_gate.requires_grad for layer in loaded.model.layers)
        assert torch.equal(loaded.gate_values(), model.gate_values())
    # Even a parameter made to require a gradient gets none: the layer detaches a frozen β.
    loaded.requires_grad_(True)
    x = tokens()
    loaded(input_ids=x, labels=x).loss.backward()
    assert all(layer.self_attn.memory_gate.grad is None for layer in loaded.model.layers)
    assert InfiniLlamaConfig().gate_trainable is True


def test_gate_trainable_must_be_a_bool():
    with pytest.raises(ValueError, match="gate_trainable must be true or false"):
        InfiniLlamaConfig(gate_trainable="no")
