"""Chunked evaluation equals one forward pass; greedy decoding and teacher forcing on top of the state; the
memory-off ablation."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from infini_llama.eval import ChunkedLM, gate_report, memory_off
from infini_llama.eval.inference import batch_for, equal_length_batches
from infini_llama.eval.records import memory_off_layers, memory_off_text

VOCAB = 101
TOL = 1e-10  # float64


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def tokens(B=3, T=53, seed=1):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    return LlamaForCausalLM(config).double().eval()


class NoCacheLM(torch.nn.Module):
    """A causal LM whose forward takes input_ids only (no past_key_values): run whole each time."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids):
        return self.inner(input_ids=input_ids)


def models(micro_model):
    return {
        "infini-delta": micro_model(VOCAB, dtype=torch.float64),
        "infini-linear-sigmoid": micro_model(
            VOCAB, dtype=torch.float64, memory_update="linear", gate_activation="sigmoid", gate_init=0.3
        ),
        "full": micro_model(VOCAB, dtype=torch.float64, attention="full"),
        "hf-llama": hf_llama(),
    }


@pytest.mark.parametrize("name", ["infini-delta", "infini-linear-sigmoid", "full", "hf-llama"])
@pytest.mark.parametrize("chunk_len", [1, 5, 16, 23, 64])
def test_chunked_logits_equal_one_forward(micro_model, name, chunk_len):
    model = models(micro_model)[name]
    x = tokens()
    with torch.no_grad():
        expected = model(input_ids=x).logits
    runner = ChunkedLM(model, chunk_len)
    got = torch.cat([logits for _, logits, _ in runner.chunks(x)], dim=1)
    assert rel_err(got, expected) < TOL
    last, _ = runner.prefill(x)
    assert rel_err(last, expected[:, -1]) < TOL


def test_default_chunk_is_whole_segments_of_about_1024_tokens(micro_model):
    assert ChunkedLM(micro_model(VOCAB)).chunk_len == 1024  # 64 of its 16-token segments
    assert ChunkedLM(micro_model(VOCAB, segment_len=48)).chunk_len == 1056  # 22 segments
    assert ChunkedLM(micro_model(VOCAB, segment_len=2048)).chunk_len == 2048
    assert ChunkedLM(hf_llama()).chunk_len == 1024
    with pytest.raises(ValueError, match="chunk_len must be >= 1"):
        ChunkedLM(hf_llama(), chunk_len=-1)


@pytest.mark.parametrize("name", ["infini-delta", "full", "hf-llama", "no-cache"])
def test_greedy_and_teacher_forcing_continue_the_state(micro_model, name):
    model = NoCacheLM(micro_model(VOCAB, dtype=torch.float64)) if name == "no-cache" else models(micro_model)[name]
    runner = ChunkedLM(model, chunk_len=7)
    prompt = tokens(B=2, T=37)
    last, state = runner.prefill(prompt)
    targets = tokens(B=2, T=5, seed=9)
    forced = runner.teacher_forced(last, runner.fork(state), targets)
    generated = runner.greedy(last, state, 6)
    with torch.no_grad():
        full = model(input_ids=torch.cat([prompt, targets], dim=1)).logits
    assert rel_err(forced, full[:, 36:41]) < TOL  # logits predicting each target, from the true prefix
    # Greedy decoding by re-running the whole sequence gives the same tokens as decoding on the state.
    seq = prompt
    for _ in range(6):
        with torch.no_grad():
            nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(generated, seq[:, 37:])


def test_greedy_stops_when_every_row_emitted_eos(micro_model):
    model = micro_model(VOCAB, dtype=torch.float64)
    runner = ChunkedLM(model)
    last, state = runner.prefill(tokens(B=1, T=20))
    first = int(last.argmax(-1))
    assert runner.greedy(last, state, 10, eos_token_id=first).shape == (1, 1)


@pytest.mark.parametrize("activation", ["hard_sigmoid", "sigmoid"])
def test_memory_off_closes_every_gate_exactly_and_restores(micro_model, activation):
    model = micro_model(VOCAB, dtype=torch.float64, gate_activation=activation, gate_init=0.7)
    # Reference: the same weights with β where the hard sigmoid is exactly 0 (memory read, weighted by 0).
    closed = micro_model(VOCAB, dtype=torch.float64, gate_init=-5.0)
    closed.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("memory_gate")}, strict=False)
    x = tokens()
    before = gate_report(model)["gates"]
    with memory_off(model):
        assert bool((model.gate_values() == 0).all())
        with torch.no_grad():
            ablated = model(input_ids=x).logits
    assert gate_report(model)["gates"] == before
    with torch.no_grad():
        expected = closed(input_ids=x).logits
        normal = model(input_ids=x).logits
    assert rel_err(ablated, expected) < TOL
    assert rel_err(normal, expected) > 1e-3, "with the memory on the model differs"


def test_memory_off_in_some_layers_closes_those_gates_only(micro_model):
    model = micro_model(VOCAB, dtype=torch.float64, gate_activation="sigmoid", gate_init=0.7)
    x = tokens()
    before = model.gate_values().clone()
    with memory_off(model, [1]):
        gates = model.gate_values()
        assert bool((gates[1] == 0).all()) and torch.equal(gates[0], before[0]), "layer 0 keeps its gates"
        with torch.no_grad():
            second_off = model(input_ids=x).logits
    assert torch.equal(model.gate_values(), before), "restored"
    with memory_off(model, [0, 1]), torch.no_grad():
        both = model(input_ids=x).logits
    with memory_off(model), torch.no_grad():
        every = model(input_ids=x).logits
        assert torch.equal(both, every), "every layer listed is the whole ablation"
    with torch.no_grad():
        normal = model(input_ids=x).logits
    assert rel_err(second_off, normal) > 1e-3 and rel_err(second_off, every) > 1e-3, "one layer: neither extreme"
    with pytest.raises(ValueError, match=r"must be in 0\.\.1"):
        with memory_off(model, [2]):
            pass
    assert memory_off_text(True) == "memory off" and memory_off_text([2, 0]) == "memory off in layers 0, 2"
    assert memory_off_text([1]) == "memory off in layer 1" and memory_off_layers(False) == ()
    with pytest.raises(ValueError, match="layer indices"):
        memory_off_layers([-1])


def test_memory_off_and_gates_refuse_models_without_memory(micro_model):
    with pytest.raises(ValueError, match="no Infini-attention gates|has none"):
        with memory_off(micro_model(VOCAB, attention="full")):
            pass
    with pytest.raises(ValueError, match="no memory gates"):
        gate_report(hf_llama())


def test_equal_length_batches_never_mix_lengths():
    batches = equal_length_batches([5, 5, 7, 5, 7, 5], 2)
    assert batches == [[0, 1], [3, 5], [2, 4]]


def test_a_token_budget_sizes_each_lengths_batches_by_its_length():
    lengths = [4, 4, 4, 4, 4, 8, 8, 8, 16]
    assert [batch_for(n, 2, 16) for n in (4, 8, 16, 32)] == [4, 2, 1, 1]  # at least one, however long
    assert batch_for(4, 2) == 2, "without a budget the batch size holds"
    assert equal_length_batches(lengths, 2, batch_tokens=16) == [[0, 1, 2, 3], [4], [5, 6], [7], [8]]
    with pytest.raises(ValueError, match="batch_tokens must be None or >= 1"):
        equal_length_batches(lengths, 2, batch_tokens=0)
