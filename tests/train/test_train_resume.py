"""Interrupt + resume gives the losses of an uninterrupted run; checkpoints and the final folder load as
Hugging Face models."""

import json
import signal
import time

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import SignalAt, window_source
from transformers import AutoModelForCausalLM, AutoTokenizer

import infini_llama  # noqa: F401  (registers the model type with the Auto classes)
from infini_llama.train import train
from infini_llama.train.checkpoint import list_checkpoints, read_trainer_state


@pytest.mark.parametrize("attention", ["infini", "full"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_then_resume_repeats_the_uninterrupted_losses(micro_cfg, tmp_path, attention, signum):
    model = {"attention": attention}
    straight = train(micro_cfg(out=str(tmp_path / "straight"), save_every=3, model=model))
    assert sorted(straight.losses) == list(range(1, 9))

    cfg = micro_cfg(out=str(tmp_path / "split"), save_every=3, model=model)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # SIG_IGN in a background job
    first = train(cfg, batches=SignalAt(window_source(cfg), at=3, signum=signum))
    # The signal arrives during the 4th update: that step finishes, then a checkpoint, then return.
    assert first.stopped_by == signal.Signals(signum).name
    assert first.step == 4 and first.final_dir is None
    assert first.checkpoint.name == "step_0000004"
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # handlers given back

    second = train(micro_cfg(out=str(tmp_path / "split"), save_every=3, model=model, resume=True))
    assert sorted(second.losses) == [5, 6, 7, 8]
    resumed = {**first.losses, **second.losses}
    assert resumed == straight.losses  # bitwise: same weights, optimizer moments, LR and batches
    assert second.val_loss == straight.val_loss


def test_run_folder_checkpoints_and_final_load_with_auto_classes(micro_cfg, tmp_path):
    began = time.perf_counter()
    result = train(micro_cfg(save_every=3, keep=2))
    wall = time.perf_counter() - began
    run = result.run_dir
    assert [p.name for p in list_checkpoints(run)] == ["step_0000006", "step_0000008"]  # newest 2 kept
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    state = read_trainer_state(run / "checkpoints" / "step_0000008")
    assert state["step"] == 8 and state["tokens"] == 8 * 4 * 32 and state["scheduler"]["last_epoch"] == 8
    assert state["model_config"]["segment_len"] == 16 and state["train_config"]["lr"] == 2e-3

    run_file = json.loads((run / "run.json").read_text())
    assert run_file["train"]["steps"] == 8 and run_file["model"]["hidden_size"] == 32
    assert {"torch", "transformers", "device", "git_revision", "date"} <= set(run_file["env"])

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [0, 4, 8]
    assert len(val[0]["gates"]) == 2 and len(val[0]["gates"][0]) == 2  # (layers, heads)
    assert {r["step"] for r in records if r["kind"] == "train"} == set(range(1, 9))
    # Where the run's time went: every part timed, none negative, together no more than the call took.
    finished = [r for r in records if r.get("event") == "finished"]
    assert set(result.seconds) == {"setup", "first_step", "steps", "validation", "checkpoints", "final"}
    assert min(result.seconds.values()) >= 0 and result.seconds["checkpoints"] > 0
    assert sum(result.seconds.values()) <= wall
    assert finished[0]["seconds"] == {part: round(value, 2) for part, value in result.seconds.items()}

    final = AutoModelForCausalLM.from_pretrained(result.final_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    last = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step_0000008")
    assert type(final).__name__ == "InfiniLlamaForCausalLM" and len(tokenizer) == 300
    for (name, a), b in zip(final.state_dict().items(), last.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    weights = load_file(result.final_dir / "model.safetensors")
    assert any(name.endswith("memory_gate") for name in weights)
    ids = tokenizer("It is a truth universally acknowledged", return_tensors="pt").input_ids
    assert torch.isfinite(final(input_ids=ids).logits).all()


def test_resuming_a_finished_run_changes_nothing(micro_cfg):
    done = train(micro_cfg(steps=4, save_every=0))
    again = train(micro_cfg(steps=4, save_every=0, resume=True))
    assert again.step == 4 and again.losses == {} and again.final_dir == done.final_dir
