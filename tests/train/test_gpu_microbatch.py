"""The automatic micro-batch's memory probe on a GPU (`pytest -m gpu`; CI has none, so it is deselected)."""

import json

import pytest
import torch

import infini_llama.train.loop as loop
from infini_llama import config_from_preset
from infini_llama.train import recipe, train
from infini_llama.train.microbatch import choose_micro_batch, memory_probe, resolve_micro_batch
from infini_llama.train.passkey import finetune_passkey

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def test_a_small_model_fits_the_whole_batch_and_the_probe_frees_its_memory():
    model = config_from_preset("mini")
    cfg = recipe("mini", batch_size=None, global_batch=8, seq_len=2048)
    before = torch.cuda.memory_allocated(CUDA)
    chosen, record = resolve_micro_batch(cfg, model, CUDA, 1, "bf16")
    assert chosen.batch_size == 8 and record["tried"] == [{"batch_size": 8, "fits": True}]
    torch._C._cuda_clearCublasWorkspaces()  # made by the probe's first matmul, kept in the allocator
    assert torch.cuda.memory_allocated(CUDA) - before < 64 * 2**20  # the probe's model is gone


def test_no_room_halves_down_to_one():
    fits = memory_probe(config_from_preset("mini"), 2048, CUDA, "bf16", margin=0.9999)
    try:
        chosen, tried = choose_micro_batch(8, fits)
    finally:
        fits.release()
    assert chosen == 1 and [t["batch_size"] for t in tried] == [8, 4, 2, 1]


def test_an_out_of_memory_batch_counts_as_not_fitting():
    fits = memory_probe(config_from_preset("mini"), 2048, CUDA, "bf16")
    try:
        huge = torch.cuda.get_device_properties(CUDA).total_memory // (2048 * 4)  # logits alone exceed the GPU
        assert fits(huge) is False
        assert fits(1) is True
    finally:
        fits.release()


def test_passkey_fine_tuning_chooses_its_micro_batch(tmp_path, bpe_tok, passkey_base):
    result = finetune_passkey(
        str(passkey_base), str(tmp_path / "ft"), tokenizer=bpe_tok, steps=2, seq_len=256, global_batch=8, 
        warmup_steps=0, eval_every=0, save_every=0, compile=False, data_workers=0, progress=False, tensorboard=False,
        source_options=dict(key_digits=4, pack_min_len=0, validation_batches=1),
    )  # fmt: skip
    assert result.step == 2
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["train"]["batch_size"] == 8 and run["micro_batch"]["tried"] == [{"batch_size": 8, "fits": True}]
    assert run["micro_batch"]["how"].startswith("the largest that fits the GPU")


def test_a_real_out_of_memory_mid_run_halves_the_micro_batch(micro_cfg, tmp_path, monkeypatch):
    real, passes = loop.summed_loss, []

    def summed_loss(model, input_ids, labels, loss_fn):
        if torch.is_grad_enabled():
            passes.append(len(input_ids))
            if len(passes) > 1 and len(input_ids) > 2:  # after the first step's pass, passes above 2 run out
                torch.empty(2 * torch.cuda.get_device_properties(CUDA).total_memory, dtype=torch.uint8, device=CUDA)
        return real(model, input_ids, labels, loss_fn)

    monkeypatch.setattr(loop, "summed_loss", summed_loss)
    cfg = micro_cfg(batch_size=None, global_batch=8, steps=3, eval_every=0, save_every=0, compile=False)
    result = train(cfg)
    assert result.step == 3 and all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["micro_batch"]["batch_size"] == 8, "the probe found room for the whole batch"
    assert [(c["from"], c["to"]) for c in run["micro_batch"]["changes"]] == [(8, 4), (4, 2)]
    assert passes == [8, 8, 4] + [2] * 8
    torch._C._cuda_clearCublasWorkspaces()  # cuBLAS keeps its workspaces (32 MiB each on Hopper) in the allocator
    assert torch.cuda.memory_allocated(CUDA) < 16 * 2**20, "nothing of the failed passes is left"
