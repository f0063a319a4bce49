"""Compilation of the decoder layers: on by default on CUDA only, switchable, and eager where it fails."""

import pytest
import torch

from infini_llama.cli import build_parser
from infini_llama.train import resolve_config, train
from infini_llama.train.compile import resolve_compile


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
