"""Non-finite steps and impossible token ids, injected into a real run: a bad step makes no update and is
logged with its number; `max_bad_steps` bad steps in a row stop the run with its last checkpoint intact."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import SignalAt, Wrapped, window_source

from infini_llama.train import loop, read_metrics, train
from infini_llama.train.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_optimizer_state,
    read_trainer_state,
)
from infini_llama.train.faults import RunError


class NaNGradient(torch.autograd.Function):
    """Identity forward; the gradient flowing back is NaN (a finite loss with a broken gradient)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class Poisoned(Wrapped):
    """The run's own batches; `install` makes the training loss (or only its gradient) of `bad_steps`
    (1-based, as logged) NaN inside the trainer."""

    def __init__(self, inner, bad_steps: set[int], kind: str) -> None:
        super().__init__(inner)
        self.bad_steps, self.kind, self.current = bad_steps, kind, None

    def batch(self, step, micro_step):
        self.current = step + 1
        return super().batch(step, micro_step)

    def validation_batches(self):
        self.current = None
        return super().validation_batches()

    def install(self, monkeypatch) -> None:
        """Wrap the trainer's loss of a forward pass (whatever computes it: eager, or compiled on CUDA)."""
        real = loop._Trainer._forward_loss

        def forward_loss(trainer, model, input_ids, labels, loss_fn=None):
            value = real(trainer, model, input_ids, labels, loss_fn)
            if self.current not in self.bad_steps:
                return value
            return value * float("nan") if self.kind == "loss" else NaNGradient.apply(value)

        monkeypatch.setattr(loop._Trainer, "_forward_loss", forward_loss)


def events(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "event"]


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_a_non_finite_step_is_skipped_and_logged(micro_cfg, monkeypatch, capsys, kind):
    cfg = micro_cfg(save_every=1, keep=8, max_bad_steps=2)
    source = Poisoned(window_source(cfg), bad_steps={3, 5}, kind=kind)  # never two in a row: the run goes on
    source.install(monkeypatch)
    result = train(cfg, batches=source)

    assert result.step == 8 and result.final_dir is not None and result.skipped_steps == [3, 5]
    assert math.isnan(result.losses[3]) == (kind == "loss")
    assert all(math.isfinite(v) for s, v in result.losses.items() if s not in (3, 5))
    skipped = [e for e in events(result.run_dir) if e["event"].startswith("skipped")]
    assert [e["step"] for e in skipped] == [3, 5] and "skipped step 3: loss" in skipped[0]["event"]
    assert "skipped step 5" in capsys.readouterr().out

    weights = {s: load_file(checkpoint_path(result.run_dir, s) / "model.safetensors") for s in (2, 3, 4, 5, 6)}
    for before, after in ((2, 3), (4, 5)):  # the skipped step changed no weight
        assert all(torch.equal(weights[before][n], weights[after][n]) for n in weights[before])
    assert not all(torch.equal(weights[5][n], weights[6][n]) for n in weights[5])  # the next one did
    adam_steps = {float(s["step"]) for s in load_optimizer_state(result.checkpoint)["state"].values()}
    assert adam_steps == {6.0}  # 8 steps, 2 without an update
    final = load_file(result.final_dir / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in final.values())


def test_too_many_bad_steps_in_a_row_stop_the_run_with_its_checkpoint_intact(micro_cfg, monkeypatch, tmp_path):
    straight = train(micro_cfg(out=str(tmp_path / "straight")))
    cfg = micro_cfg(out=str(tmp_path / "run"), max_bad_steps=2)  # checkpoints every 4 steps
    source = Poisoned(window_source(cfg), bad_steps={6, 7, 8}, kind="loss")
    source.install(monkeypatch)
    with pytest.raises(RunError, match=r"steps 6-7: the loss or gradient was not finite 2 times in a row") as err:
        train(cfg, batches=source)
    assert "max_bad_steps=2" in str(err.value) and "step_0000004, is untouched" in str(err.value)
    assert [p.name for p in list_checkpoints(cfg.out)] == ["step_0000004"]
    assert latest_checkpoint(cfg.out).name == "step_0000004"  # its files still match their manifest
    assert not (tmp_path / "run" / "final").exists()
    assert events(tmp_path / "run")[-1]["event"].startswith("stopped: steps 6-7")

    monkeypatch.undo()  # the trouble is gone (say, a lower LR for the same recipe): continue
    resumed = train(micro_cfg(out=cfg.out, resume=True, max_bad_steps=2))
    assert resumed.losses == {s: straight.losses[s] for s in range(5, 9)}


class BadIds(Wrapped):
    def batch(self, step, micro_step):
        input_ids, labels = super().batch(step, micro_step)
        if step == 2:
            input_ids = input_ids.clone()
            input_ids[1, 7] = 300  # one past the 300-token vocabulary
        return input_ids, labels


def test_a_batch_with_an_id_outside_the_vocabulary_stops_the_run_naming_the_step(micro_cfg):
    cfg = micro_cfg(save_every=2)
    with pytest.raises(RunError, match=r"batch 0 of step 3 holds token id 300, outside the model's vocabulary of 300"):
        train(cfg, batches=BadIds(window_source(cfg)))
    assert latest_checkpoint(cfg.out).name == "step_0000002"


def test_a_run_of_bad_steps_goes_on_counting_across_a_resume(micro_cfg, monkeypatch):
    # Bad steps 3 and 4, stopped by a signal after step 4, resumed into bad step 5: three in a row.
    cfg = micro_cfg(max_bad_steps=3)
    inner = window_source(cfg)
    source = Poisoned(SignalAt(inner, at=3), bad_steps={3, 4, 5}, kind="loss")
    source.install(monkeypatch)
    first = train(cfg, batches=source)
    assert first.stopped_by == "SIGTERM" and first.step == 4 and first.skipped_steps == [3, 4]
    assert read_trainer_state(first.checkpoint)["non_finite"] == {"streak": [3, 4]}

    source.inner = inner  # no second signal
    with pytest.raises(RunError, match=r"steps 3-5: the loss or gradient was not finite 3 times in a row"):
        train(micro_cfg(max_bad_steps=3, resume=True), batches=source)


def test_a_non_finite_loss_is_logged_as_strict_json_and_read_back_as_a_float(micro_cfg, monkeypatch):
    cfg = micro_cfg(steps=4, eval_every=0, save_every=0)
    source = Poisoned(window_source(cfg), bad_steps={3}, kind="loss")
    source.install(monkeypatch)
    result = train(cfg, batches=source)

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=refuse) for line in lines]  # every line is strict JSON
    assert [r["loss"] for r in records if r["kind"] == "train" and r["step"] == 3] == ["NaN"]
    losses = {r["step"]: r["loss"] for r in read_metrics(result.run_dir / "metrics.jsonl", "train")}
    assert math.isnan(losses[3]) and all(math.isfinite(losses[s]) for s in (1, 2, 4))
