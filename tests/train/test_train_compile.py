"""Compilation of the decoder layers: on by default on CUDA only, switchable, and eager where it fails."""

import pytest
import torch

from infini_llama import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.cli import build_parser
from infini_llama.models import causal_lm_loss
from infini_llama.train import resolve_config, train
from infini_llama.train.compile import compile_decoder_layers, compile_loss, resolve_compile


def test_default_compiles_on_cuda_only():
    assert resolve_config({"preset": "tiny"}).compile is None
    assert resolve_compile(None, torch.device("cuda")) is True
    assert resolve_compile(None, torch.device("cpu")) is False
    assert resolve_compile(False, torch.device("cuda")) is False
    assert resolve_compile(True, torch.device("cpu")) is True


@pytest.mark.parametrize(
    "argv,expected", [([], None), (["--compile"], True), (["--no-compile"], False)], ids=["default", "on", "off"]
)
def test_flags_and_config_set_compile(argv, expected, tmp_path):
    args = build_parser(["train"]).parse_args(["train", *argv])
    flags = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config", "sets")}
    assert resolve_config(flags).compile is expected
    path = tmp_path / "run.yaml"
    path.write_text("compile: false\n")
    assert resolve_config(config_file=path).compile is False
    assert resolve_config(sets=["compile=true"]).compile is True


def test_failed_compilation_warns_and_trains_eagerly(micro_cfg, tmp_path, monkeypatch):
    def compile_that_fails(fn, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no C compiler found")

        return fail

    monkeypatch.setattr(torch, "compile", compile_that_fails)  # what nn.Module.compile calls too
    plain = train(micro_cfg(out=str(tmp_path / "plain"), steps=2, eval_every=0, compile=False))
    with pytest.warns(RuntimeWarning, match="no C compiler found.*training eagerly") as caught:
        fallback = train(micro_cfg(out=str(tmp_path / "fallback"), steps=2, eval_every=0, compile=True))
    assert {str(w.message).split(" failed")[0] for w in caught if w.category is RuntimeWarning} == {
        "torch.compile of the decoder layers",
        "torch.compile of the loss",
    }
    assert fallback.losses == plain.losses


def test_a_compiled_model_failing_in_evaluation_evaluates_eagerly(micro_cfg, tmp_path, monkeypatch):
    """The evaluation graphs (no grad, validation shapes) are built at the first evaluation, after the training
    probe: a failure there warns, evaluates eagerly, and keeps training compiled."""
    import infini_llama.train.loop as loop

    def compile_failing_in_evaluation(layers, *args, **kwargs):
        for layer in layers:

            def compiled(*a, _layer=layer, **k):
                if not torch.is_grad_enabled():
                    raise RuntimeError("the backend failed on the evaluation graph (forced by the test)")
                return _layer._call_impl(*a, **k)

            layer._compiled_call_impl = compiled
        return 0.0

    monkeypatch.setattr(loop, "compile_decoder_layers", compile_failing_in_evaluation)
    monkeypatch.setattr(loop, "compile_loss", lambda *args, **kwargs: causal_lm_loss)
    plain = train(micro_cfg(out=str(tmp_path / "plain"), steps=4, eval_every=2, save_every=0, compile=False))
    with pytest.warns(RuntimeWarning, match="failed in evaluation.*evaluating eagerly") as caught:
        fallback = train(micro_cfg(out=str(tmp_path / "fallback"), steps=4, eval_every=2, save_every=0, compile=True))
    assert sum("failed in evaluation" in str(w.message) for w in caught) == 1  # once, not at every evaluation
    assert fallback.losses == plain.losses
    assert fallback.val_loss == plain.val_loss


@pytest.mark.parametrize("update", ["delta", "linear"])
def test_compiled_layers_and_loss_equal_eager_on_cpu(update):
    """The tiny study preset compiles on CPU: torch.compile's CPU code gives the eager loss and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    config = config_from_preset("tiny", vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, segment_len=8, gate_init=1.0,
                                gate_activation="sigmoid", memory_update=update)  # fmt: skip
    eager = InfiniLlamaForCausalLM(config).train()
    compiled = InfiniLlamaForCausalLM(config).train()
    compiled.load_state_dict(eager.state_dict())
    B, T = 2, 5 * 8 + 3  # a short last segment
    assert compile_decoder_layers(compiled.model.layers, B, T) is not None
    loss_fn = compile_loss(B, T, config.vocab_size, torch.device("cpu"))
    assert loss_fn is not causal_lm_loss
    x = torch.randint(0, config.vocab_size, (B, T))
    results = []
    for model, fn in ((eager, causal_lm_loss), (compiled, loss_fn)):
        loss = fn(model(input_ids=x).logits, x)
        results.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    (loss, grads), (loss_c, grads_c) = results
    assert abs(loss_c.item() - loss.item()) < 1e-5 * abs(loss.item())
    for a, b in zip(grads_c, grads, strict=True):
        assert ((a - b).norm() / b.norm().clamp_min(1e-12)).item() < 1e-4
