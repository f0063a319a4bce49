"""The automatic micro-batch: the largest split of the global batch that fits, chosen by a probe (faked here)."""

import json

import pytest
import torch

import infini_llama.train.microbatch as microbatch
from infini_llama import config_from_preset
from infini_llama.train import recipe, train
from infini_llama.train.microbatch import candidate_batches, choose_micro_batch, resolve_micro_batch

CPU = torch.device("cpu")


def fits_up_to(limit):
    """A fake probe: `batch_size` fits when it is at most `limit` (a GPU with room for `limit` sequences)."""
    calls = []

    def fits(batch_size):
        calls.append(batch_size)
        return batch_size <= limit

    fits.calls = calls
    return fits


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
