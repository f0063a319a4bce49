"""The automatic micro-batch's memory probe on a GPU (`pytest -m gpu`; CI has none, so it is deselected)."""

import json

import pytest
import torch

from infini_llama import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.train import recipe
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


def test_passkey_fine_tuning_chooses_its_micro_batch(tmp_path, bpe_tok, micro_cfg):
    base = tmp_path / "base"
    ids = dict(bos_token_id=bpe_tok.bos_token_id, eos_token_id=bpe_tok.eos_token_id)
    InfiniLlamaForCausalLM(
        config_from_preset("tiny", **micro_cfg().model, vocab_size=len(bpe_tok), **ids)
    ).save_pretrained(base)
    bpe_tok.save_pretrained(base)
    result = finetune_passkey(
        str(base), str(tmp_path / "ft"), tokenizer=bpe_tok, steps=2, seq_len=256, global_batch=8, warmup_steps=0,
        eval_every=0, save_every=0, compile=False, data_workers=0, progress=False, tensorboard=False,
        source_options=dict(key_digits=4, pack_min_len=0, validation_batches=1),
    )  # fmt: skip
    assert result.step == 2
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["train"]["batch_size"] == 8 and run["micro_batch"]["tried"] == [{"batch_size": 8, "fits": True}]
    assert run["micro_batch"]["how"].startswith("the largest that fits the GPU")
