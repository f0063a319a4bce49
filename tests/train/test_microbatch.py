"""The automatic micro-batch: the largest split of the global batch that fits, chosen by a probe (faked here), and
halved where a step still runs out of memory (faked too)."""

import json
import shutil

import pytest
import torch
from train_helpers import window_source

import infini_llama.train.loop as loop
import infini_llama.train.microbatch as microbatch
from infini_llama import config_from_preset
from infini_llama.train import RunError, read_metrics, recipe, train
from infini_llama.train.checkpoint import checkpoint_path
from infini_llama.train.microbatch import candidate_batches, choose_micro_batch, initial_split, resolve_micro_batch
from infini_llama.train.passkey import STUDY_RECIPE, finetune_passkey

CPU = torch.device("cpu")


def fits_up_to(limit):
    """A fake probe: `batch_size` fits when it is at most `limit` (a GPU with room for `limit` sequences)."""
    calls = []

    def fits(batch_size):
        calls.append(batch_size)
        return batch_size <= limit

    fits.calls = calls
    return fits


def out_of_memory_above(limit, after=0):
    """The trainer's `summed_loss`, but a training pass of more than `limit` sequences runs out of memory once
    `after` of them have passed (a GPU whose memory fills up part-way); `.seen` holds the inputs of every training
    pass that ran."""
    seen, passed = [], []

    def summed_loss(model, input_ids, labels, loss_fn=loop.causal_lm_loss):
        if torch.is_grad_enabled():
            if len(input_ids) > limit:
                if len(passed) >= after:
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
                passed.append(len(input_ids))
            seen.append(input_ids.clone())
        return real_summed_loss(model, input_ids, labels, loss_fn)

    summed_loss.seen = seen
    return summed_loss


real_summed_loss = loop.summed_loss


@pytest.mark.parametrize(
    "per_process,expected", [(8, [8, 4, 2, 1]), (12, [12, 6, 3, 1]), (1, [1]), (6, [6, 3, 1])], ids=str
)
def test_candidates_halve_and_divide_the_batch(per_process, expected):
    assert candidate_batches(per_process) == expected


@pytest.mark.parametrize("limit,expected", [(100, 8), (5, 4), (2, 2), (0, 1)], ids=lambda v: str(v))
def test_the_largest_candidate_that_fits_is_chosen(limit, expected):
    fits = fits_up_to(limit)
    chosen, tried = choose_micro_batch(8, fits)
    assert chosen == expected
    assert fits.calls == [t["batch_size"] for t in tried]  # largest first, stops at the first that fits
    assert tried[-1]["fits"] is (limit > 0)


def test_paper_recipe_splits_its_global_batch_as_memory_allows():
    cfg = recipe("paper-300m")
    assert cfg.batch_size is None and cfg.global_batch == 4
    model = config_from_preset("paper-300m")
    chosen, record = resolve_micro_batch(cfg, model, CPU, 1, "bf16", fits=fits_up_to(2))
    assert (chosen.batch_size, chosen.accumulation(1)) == (2, 2)
    assert record["batch_size"] == 2 and record["grad_accum"] == 2 and record["global_batch"] == 4
    assert [t["batch_size"] for t in record["tried"]] == [4, 2]
    # two processes: 2 sequences each, one pass if it fits
    chosen, _ = resolve_micro_batch(cfg, model, CPU, 2, "bf16", fits=fits_up_to(8))
    assert (chosen.batch_size, chosen.accumulation(2)) == (2, 1)


def test_an_explicit_batch_size_is_kept_and_cpu_runs_the_whole_batch():
    model = config_from_preset("tiny")
    given = recipe("paper-300m", batch_size=1)
    assert resolve_micro_batch(given, model, CPU, 1, "fp32", fits=fits_up_to(0)) == (given, None)
    chosen, record = resolve_micro_batch(recipe("paper-300m"), model, CPU, 1, "fp32")  # no probe on CPU
    assert chosen.batch_size == 4 and record["tried"] == []
    with pytest.raises(ValueError, match="resolve it first"):
        recipe("paper-300m").accumulation(1)


def test_training_with_an_automatic_batch_logs_it_and_equals_that_split(micro_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(microbatch, "device_probe", lambda *args: fits_up_to(2))  # a "GPU" with room for 2
    auto = train(micro_cfg(out=str(tmp_path / "auto"), batch_size=None, global_batch=8, steps=2, eval_every=0))
    run = json.loads((tmp_path / "auto" / "run.json").read_text())
    assert run["train"]["batch_size"] == 2 and run["grad_accum"] == 4
    assert run["micro_batch"]["batch_size"] == 2 and run["micro_batch"]["tried"][-1] == {"batch_size": 2, "fits": True}
    given = train(micro_cfg(out=str(tmp_path / "given"), batch_size=2, global_batch=8, steps=2, eval_every=0))
    assert auto.losses == given.losses
    # resuming keeps the split the run started with, whatever the probe says now
    monkeypatch.setattr(microbatch, "device_probe", lambda *args: fits_up_to(8))
    again = train(
        micro_cfg(out=str(tmp_path / "auto"), batch_size=None, global_batch=8, steps=2, eval_every=0, resume=True)
    )
    assert again.step == 2  # accepted: the settings (batch_size 2 included) are the run's


def test_out_of_memory_halves_an_automatic_micro_batch_and_redoes_the_step(micro_cfg, tmp_path, monkeypatch, capsys):
    # The probe finds room for 4, but the first step's second pass of 4 runs out of memory, after the first pass
    # had put its gradients on the parameters.
    monkeypatch.setattr(microbatch, "device_probe", lambda *args: fits_up_to(4))
    monkeypatch.setattr(loop, "summed_loss", halving := out_of_memory_above(2, after=1))
    fields = dict(global_batch=8, steps=3, eval_every=0, save_every=0)
    auto = train(micro_cfg(out=str(tmp_path / "auto"), batch_size=None, **fields))
    monkeypatch.setattr(loop, "summed_loss", plain := out_of_memory_above(8))
    given = train(micro_cfg(out=str(tmp_path / "given"), batch_size=2, **fields))
    # The step started over from zeroed gradients on the same sequences, in passes of 2: the losses of a run
    # that had 2 from the start, bit for bit.
    assert auto.losses == given.losses and auto.step == 3
    assert [len(ids) for ids in halving.seen] == [4] + [2] * 12
    assert torch.equal(torch.cat(halving.seen[1:]), torch.cat(plain.seen))
    assert torch.equal(halving.seen[0], torch.cat(plain.seen[:2]))
    run = json.loads((tmp_path / "auto" / "run.json").read_text())
    assert run["micro_batch"]["batch_size"] == 4, "the choice at the start"
    assert run["micro_batch"]["changes"] == [{"step": 1, "from": 4, "to": 2, "grad_accum": 4}]
    metrics = tmp_path / "auto" / "metrics.jsonl"
    assert [r["tokens"] for r in read_metrics(metrics, "train")] == [256, 512, 768], "8 × 32 tokens every step"
    (event,) = [r for r in read_metrics(metrics, "event") if "out of GPU memory" in r["event"]]
    assert event["step"] == 1 and (event["batch_size"], event["grad_accum"]) == (2, 4)
    printed = [line for line in capsys.readouterr().out.splitlines() if "out of GPU memory" in line]
    assert printed == ["out of GPU memory in step 1: micro-batch 4 -> 2 sequences (4 passes per step), the step "
                       "starts over"]  # fmt: skip


def test_a_micro_batch_halved_mid_run_is_what_checkpoints_keep_and_resume_uses(micro_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(microbatch, "device_probe", lambda *args: fits_up_to(4))
    monkeypatch.setattr(loop, "summed_loss", out_of_memory_above(2, after=5))  # in step 3's second pass
    fields = dict(global_batch=8, steps=6, eval_every=0, save_every=2, keep=3)
    cfg = micro_cfg(out=str(tmp_path / "auto"), batch_size=None, **fields)
    first = train(cfg)
    monkeypatch.setattr(loop, "summed_loss", real_summed_loss)
    given = train(micro_cfg(out=str(tmp_path / "given"), batch_size=2, **fields))
    assert first.losses == pytest.approx(given.losses, rel=1e-5), "the same sequences, summed in another order"
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["micro_batch"]["changes"] == [
        {"step": 3, "from": 4, "to": 2, "grad_accum": 4}
    ]
    # Resumed from step 4 (after the halving), the run keeps 2 per pass, whatever the probe would say now.
    shutil.rmtree(checkpoint_path(cfg.run_dir, 6))
    monkeypatch.setattr(microbatch, "device_probe", probe := fits_up_to(8))
    again = train(micro_cfg(out=str(tmp_path / "auto"), batch_size=None, resume=True, **fields))
    assert again.losses == {5: first.losses[5], 6: first.losses[6]} and probe.calls == []
    run = json.loads((tmp_path / "auto" / "run.json").read_text())
    assert run["micro_batch"]["changes"][-1]["to"] == 2 and run["train"]["batch_size"] == 4


@pytest.mark.parametrize(
    "batch_size,global_batch,message",
    [(4, 8, "batch_size 4 as given \\(--batch-size"), (None, 2, "one sequence of 32 tokens")],
    ids=["given", "automatic-at-1"],
)
def test_out_of_memory_that_halving_cannot_help_stops_the_run_saying_what_to_do(
    micro_cfg, tmp_path, monkeypatch, batch_size, global_batch, message
):
    monkeypatch.setattr(microbatch, "device_probe", lambda *args: fits_up_to(1))
    monkeypatch.setattr(loop, "summed_loss", out_of_memory_above(0))
    cfg = micro_cfg(batch_size=batch_size, global_batch=global_batch, steps=2, eval_every=0)
    with pytest.raises(RunError, match=message) as caught:
        train(cfg)
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)


def test_a_token_window_source_split_anew_keeps_its_steps_and_validation(micro_cfg):
    whole = window_source(micro_cfg(batch_size=8))
    split = whole.split(2, 4)
    assert (split.batch_size, split.grad_accum, whole.batch_size) == (2, 4, 8)
    assert torch.equal(whole.batch(3, 0)[0], torch.cat([split.batch(3, m)[0] for m in range(4)]))
    assert torch.equal(torch.cat([b[0] for b in whole.validation_batches()]),
                       torch.cat([b[0] for b in split.validation_batches()]))  # fmt: skip
    assert split.state_dict() == whole.state_dict()
    with pytest.raises(ValueError, match="would change the step's 8 sequences"):
        whole.split(2, 2)


def test_passkey_fine_tuning_with_an_automatic_batch_runs_the_whole_batch_off_cuda(tmp_path, bpe_tok, passkey_base):
    assert STUDY_RECIPE["batch_size"] is None and STUDY_RECIPE["global_batch"] == 64
    assert initial_split(recipe("tiny", batch_size=None, global_batch=64), 2) == (32, 1)
    assert initial_split(recipe("tiny", batch_size=8, global_batch=64), 2) == (8, 4)
    result = finetune_passkey(
        str(passkey_base), str(tmp_path / "ft"), tokenizer=bpe_tok, steps=1, seq_len=160, global_batch=4, 
        warmup_steps=0, eval_every=0, save_every=0, device="cpu", progress=False, tensorboard=False,
        source_options=dict(key_digits=4, pack_min_len=0, validation_batches=1),
    )  # fmt: skip
    assert result.step == 1
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["train"]["batch_size"] == 4 and run["grad_accum"] == 1 and run["data"]["sequences_per_step"] == 4
    assert run["micro_batch"]["how"].startswith("the whole per-process batch")
