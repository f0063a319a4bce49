"""Property tests over configs, shapes and dtypes: the fast memory op and the model built on it either match the
per-segment reference or raise a ValueError that names the field at fault.

Examples are derandomized (the same ones on every run, so CI cannot fail by luck) and few, to stay within seconds.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import infini_llama.layers.attention as attention_module
from infini_llama import InfiniLlamaConfig, InfiniLlamaForCausalLM
from infini_llama.ops import MemoryState, compressive_memory, compressive_memory_reference

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None)
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
# Relative to the largest value: float64 and float32 differ only in summation order; bf16 outputs may round
# one unit of the last place apart (2^-8), which the layers after the memory carry on.
TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 3e-2}


pytestmark = pytest.mark.usefixtures("one_thread")


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    got, expected = got.double(), expected.double()
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


@st.composite
def memory_inputs(draw):
    """q, k, v, segment_len and update of one call; some draws break one rule the op must check."""
    B, Hkv, groups = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    D, Dv, L, T = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 9)), draw(st.integers(1, 30))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    broken = draw(st.sampled_from([None, None, None, None, "heads", "key-dim", "segment_len", "update"]))
    Hq = Hkv * groups + (1 if broken == "heads" and Hkv > 1 else 0)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q = torch.randn(B, Hq, T, D, generator=g, dtype=torch.float64).to(DTYPES[dtype])
    k = torch.randn(B, Hkv, T, D + (broken == "key-dim"), generator=g, dtype=torch.float64).to(DTYPES[dtype])
    v = torch.randn(B, Hkv, T, Dv, generator=g, dtype=torch.float64).to(DTYPES[dtype])
    state = None
    if draw(st.booleans()):
        M = torch.randn(B, Hkv, k.shape[-1], Dv, generator=g, dtype=torch.float64)
        state = MemoryState(M, torch.rand(B, Hkv, k.shape[-1], generator=g, dtype=torch.float64) * T)
    segment_len = -L + 1 if broken == "segment_len" else L
    update = "gated" if broken == "update" else draw(st.sampled_from(["delta", "linear"]))
    expected = {"heads": "query heads", "key-dim": "disagree", "segment_len": "segment_len", "update": "update"}
    error = expected.get(broken) if not (broken == "heads" and Hkv == 1) else None
    return dict(q=q, k=k, v=v, segment_len=segment_len, update=update, initial_state=state), dtype, error


@FUZZ
@given(memory_inputs())
def test_memory_op_matches_the_reference_or_names_the_bad_argument(case):
    kwargs, dtype, error = case
    if error is not None:
        for op in (compressive_memory, compressive_memory_reference):
            try:
                op(**kwargs)
            except ValueError as exc:
                assert error in str(exc), str(exc)
            else:
                raise AssertionError(f"{op.__name__} accepted inputs that break {error!r}")
        event(f"refused: {error}")
        return
    event(f"computed: {dtype}")
    out, state = compressive_memory(**kwargs, output_final_state=True)
    ref, ref_state = compressive_memory_reference(**kwargs, output_final_state=True)
    assert out.dtype == kwargs["q"].dtype and state.M.dtype == state.z.dtype == ref_state.M.dtype
    assert relative_error(out, ref) < TOLERANCE[dtype]
    state_tolerance = TOLERANCE["float64" if dtype == "float64" else "float32"]  # the state is never bf16
    assert relative_error(state.M, ref_state.M) < state_tolerance
    assert relative_error(state.z, ref_state.z) < state_tolerance


FAULTS = {  # a field and the wrong values it may take; None: every field sound
    None: [None],
    "hidden_size": [0, -8],
    "num_attention_heads": [0],
    "num_key_value_heads": [0, 3],  # 3: not a divisor of the query heads (unless there are 3)
    "head_dim": [0, 3, 5],  # odd: RoPE rotates pairs
    "segment_len": [0, -1],
}


@st.composite
def model_fields(draw) -> dict:
    """Sizes of a model with GQA ratios 1, 2, 4 and head_dim from hidden_size / heads or set apart; about half
    the draws get one field wrong."""
    heads = draw(st.sampled_from([1, 2, 4]))
    fields = dict(
        num_attention_heads=heads,
        num_key_value_heads=draw(st.sampled_from([d for d in (1, 2, 4) if heads % d == 0] + [None])),
        hidden_size=heads * draw(st.sampled_from([2, 4, 6, 8])),
        head_dim=draw(st.sampled_from([None, 2, 4, 8])),
        segment_len=draw(st.integers(1, 9)),
    )
    fault = draw(st.sampled_from([None, None, None, None, None, *[f for f in FAULTS if f]]))
    if fault is not None:
        fields[fault] = draw(st.sampled_from(FAULTS[fault]))
    return fields


def faulty_fields(fields: dict) -> set[str]:
    """The fields a config must refuse, by the rules `InfiniLlamaConfig` documents (an independent reading)."""
    heads = fields["num_attention_heads"]
    kv = heads if fields["num_key_value_heads"] is None else fields["num_key_value_heads"]
    head_dim = fields["hidden_size"] // max(heads, 1) if fields["head_dim"] is None else fields["head_dim"]
    sizes = dict(
        hidden_size=fields["hidden_size"], num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
        segment_len=fields["segment_len"],
    )  # fmt: skip
    bad = {name for name, value in sizes.items() if value < 1}
    if not bad and heads % kv:
        bad.add("num_attention_heads")
    if not bad and head_dim % 2:
        bad.add("head_dim")
    return bad


@FUZZ
@given(
    fields=model_fields(),
    memory_update=st.sampled_from(["delta", "linear"]),
    memory_rope=st.booleans(),
    T=st.integers(1, 40),
    dtype=st.sampled_from(sorted(DTYPES)),
    seed=st.integers(0, 2**16),
)
def test_model_matches_the_reference_op_or_names_the_bad_field(fields, memory_update, memory_rope, T, dtype, seed):
    bad = faulty_fields(fields)
    try:
        config = InfiniLlamaConfig(
            vocab_size=61, intermediate_size=24, num_hidden_layers=2, gate_init=1.0, memory_update=memory_update,
            memory_rope=memory_rope, **fields,
        )  # fmt: skip
    except ValueError as exc:
        assert bad and any(name in str(exc) for name in bad), (bad, str(exc))
        event(f"refused: {str(exc).split()[0]}")
        return
    assert not bad, f"a config with bad {bad} was accepted"
    event(f"built: T {'<' if T < config.segment_len else '>='} segment_len, {dtype}")
    torch.manual_seed(seed)
    model = InfiniLlamaForCausalLM(config).to(DTYPES[dtype]).eval()
    ids = torch.randint(0, 61, (2, T), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        fast = model(ids).logits
        with mock.patch.object(attention_module, "compressive_memory", compressive_memory_reference):
            reference = model(ids).logits
    assert fast.shape == (2, T, 61) and torch.isfinite(fast).all()
    assert relative_error(fast, reference) < TOLERANCE[dtype]
