"""The loss at the targets only (`logits_at`, `summed_loss`) against the logits of every position."""

import pytest
import torch

from infini_llama import InfiniLlamaConfig, InfiniLlamaForCausalLM
from infini_llama.models import causal_lm_loss
from infini_llama.train.loop import summed_loss, summed_losses

VOCAB, B, T = 61, 3, 40


def make_model(attention: str) -> InfiniLlamaForCausalLM:
    config = InfiniLlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, segment_len=8, gate_init=1.0, attention=attention,
    )  # fmt: skip
    torch.manual_seed(0)
    return InfiniLlamaForCausalLM(config).double()


def batch(target_fraction: float, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids, and labels that keep about `target_fraction` of them (the rest -100), rows unlike each other."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    keep = torch.rand(B, T, generator=g) < target_fraction
    return ids, torch.where(keep, ids, torch.full_like(ids, -100))


def loss_and_grads(model, fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("attention", ["infini", "full"])
def test_logits_at_are_the_rows_of_the_full_logits(attention):
    model = make_model(attention).eval()
    ids, _ = batch(0.2)
    at = torch.rand(B, T, generator=torch.Generator().manual_seed(2)) < 0.3
    with torch.no_grad():
        full = model(input_ids=ids).logits
        rows = model(input_ids=ids, logits_at=at).logits
    assert rows.shape == (int(at.sum()), VOCAB)
    torch.testing.assert_close(rows, full[at], rtol=0, atol=1e-12)


def test_logits_at_refuses_labels():
    ids, labels = batch(0.2)
    with pytest.raises(ValueError, match="logits_at"):
        make_model("infini")(input_ids=ids, labels=labels, logits_at=labels != -100)


@pytest.mark.parametrize("attention", ["infini", "full"])
@pytest.mark.parametrize("fraction", [0.05, 0.3])
def test_sparse_targets_give_the_dense_loss_and_gradients(attention, fraction):
    model = make_model(attention)
    ids, labels = batch(fraction)
    assert 0 < (labels[:, 1:] != -100).sum() <= labels[:, 1:].numel() / 2  # the targets-only path runs
    dense = lambda: causal_lm_loss(model(input_ids=ids).logits, labels, reduction="sum")  # noqa: E731
    sparse = lambda: summed_loss(model, ids, labels)  # noqa: E731
    want, want_grads = loss_and_grads(model, dense)
    got, got_grads = loss_and_grads(model, sparse)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_dense_targets_use_the_given_loss():
    model = make_model("infini")
    ids, labels = batch(0.9)
    calls = []

    def loss_fn(logits, labels, reduction):
        calls.append(logits.shape)
        return causal_lm_loss(logits, labels, reduction=reduction)

    got = summed_loss(model, ids, labels, loss_fn)
    assert calls == [(B, T, VOCAB)]
    torch.testing.assert_close(got, causal_lm_loss(model(input_ids=ids).logits, labels, reduction="sum"))


@pytest.mark.parametrize("attention", ["infini", "full"])
@pytest.mark.parametrize("fractions", [(0.3, 0.05, 0.0, 0.1), (0.9, 0.05, 0.0)], ids=["sparse", "dense"])
def test_several_labellings_score_as_one_each_from_one_forward_pass(attention, fractions, monkeypatch):
    # As a passkey validation: the answers (or every token), then other targets, one labelling without any.
    model = make_model(attention).eval()
    ids, _ = batch(0.5)
    labellings = [torch.where(torch.rand(B, T, generator=torch.Generator().manual_seed(i)) < f, ids, -100)
                  for i, f in enumerate(fractions)]  # fmt: skip
    forwards = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda **kw: forwards.append(kw) or forward(**kw))
    with torch.no_grad():
        got = summed_losses(model, ids, labellings)
        assert len(forwards) == 1, "one forward pass for every labelling"
        assert ("logits_at" in forwards[0]) == (fractions[0] < 0.5), "the output layer at the targets only if sparse"
        want = torch.stack([summed_loss(model, ids, labels) for labels in labellings])
        dense = torch.stack([causal_lm_loss(forward(input_ids=ids).logits, lab, reduction="sum") for lab in labellings])
    assert got.shape == (len(fractions),) and float(got[fractions.index(0.0)]) == 0.0
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, dense, rtol=1e-10, atol=1e-12)
