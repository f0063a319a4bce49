"""Switches that must not change what is learned (activation checkpointing, torch.compile), bf16 autocast,
and starting from a pretrained folder."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from infini_llama.train import read_metrics, train


def test_activation_checkpointing_gives_the_same_losses(micro_cfg, tmp_path, capsys):
    plain = train(micro_cfg(out=str(tmp_path / "plain"), steps=3, eval_every=0))
    # Without a progress bar the run still says where it is: a status line at least at the last step.
    assert f"step 3/3: loss {plain.losses[3]:.4f}," in capsys.readouterr().out
    checkpointed = train(micro_cfg(out=str(tmp_path / "ckpt"), steps=3, eval_every=0, checkpointing=True))
    for step, loss in plain.losses.items():
        assert checkpointed.losses[step] == pytest.approx(loss, rel=1e-6)


def test_bf16_autocast_trains_close_to_fp32(micro_cfg, tmp_path):
    fp32 = train(micro_cfg(out=str(tmp_path / "fp32"), steps=3, eval_every=0))
    bf16 = train(micro_cfg(out=str(tmp_path / "bf16"), steps=3, eval_every=0, precision="bf16"))
    for step, loss in fp32.losses.items():
        assert bf16.losses[step] == pytest.approx(loss, rel=2e-2)
    assert bf16.val_loss == pytest.approx(fp32.val_loss, rel=2e-2)
    # autocast computes in bf16; the weights the optimizer updates and saves stay float32
    assert AutoModelForCausalLM.from_pretrained(bf16.final_dir).dtype == torch.float32


@pytest.mark.slow
def test_compiled_layers_give_the_same_losses(micro_cfg, tmp_path):
    plain = train(micro_cfg(out=str(tmp_path / "plain"), steps=3, eval_every=0))
    compiled = train(micro_cfg(out=str(tmp_path / "compiled"), steps=3, eval_every=0, compile=True))
    for step, loss in plain.losses.items():
        assert compiled.losses[step] == pytest.approx(loss, rel=1e-5)


def test_init_from_starts_where_the_source_run_ended(micro_cfg, tmp_path):
    source = train(micro_cfg(out=str(tmp_path / "source"), steps=4, eval_every=0))
    # No tokenizer given: the one saved in the folder is used; segment_len keeps the tensor shapes.
    cfg = micro_cfg(out=str(tmp_path / "tuned"), init_from=str(source.final_dir), tokenizer=None, steps=2,
                    eval_every=0, model={})  # fmt: skip
    tuned = train(cfg)
    assert tuned.step == 2
    # same weights, tokenizer and validation windows: the new run starts at the source's last validation loss
    assert read_metrics(tuned.run_dir / "metrics.jsonl", "val")[0]["loss"] == source.val_loss
    same_start = train(micro_cfg(out=str(tmp_path / "again"), init_from=str(source.final_dir), tokenizer=None,
                                 steps=1, eval_every=0, model={}))  # fmt: skip
    assert same_start.losses[1] == tuned.losses[1]
    shorter = train(micro_cfg(out=str(tmp_path / "seg8"), init_from=str(source.final_dir), tokenizer=None,
                              steps=1, eval_every=0, model={"segment_len": 8}))  # fmt: skip
    assert shorter.step == 1


def test_status_lines_are_rate_limited(capsys, monkeypatch):
    from infini_llama.train import metrics

    clock = [100.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: clock[0])
    status = metrics.StatusLines(start=0, steps=100, every_s=30)
    clock[0] = 110.0
    status.maybe_print(10, 2.5, 1000.0)  # 10 s after the start: too soon
    clock[0] = 140.0
    status.maybe_print(20, 2.25, 1234.0)
    status.maybe_print(21, 2.2, 1234.0)  # 0 s after the last line
    status.maybe_print(100, 2.0, 1300.0, force=True)  # the last step always prints
    lines = capsys.readouterr().out.splitlines()
    # 40 s for 20 steps: 80 steps left take 160 s
    assert lines == ["step 20/100: loss 2.2500, 1,234 tokens/s, 2 min 40 s left",
                     "step 100/100: loss 2.0000, 1,300 tokens/s, 0 min 00 s left"]  # fmt: skip


def test_hf_progress_bars_are_off_inside_and_restored_after():
    from transformers.utils import logging as hf_logging

    from infini_llama.train import hf_progress_bars_off

    for before in (True, False):
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
        with hf_progress_bars_off():
            assert not hf_logging.is_progress_bar_enabled()
        assert hf_logging.is_progress_bar_enabled() == before
