"""FLOPs and peak table, the metrics sinks, and the checkpoint folder primitives."""

import json
import random

import numpy as np
import pytest
import torch

from infini_llama import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.train import checkpoint as ckpt
from infini_llama.train import flops_per_token, read_metrics
from infini_llama.train.metrics import MetricsLogger, peak_bf16_flops, peak_flops

MICRO = dict(
    vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2, segment_len=16,
)  # fmt: skip


@pytest.mark.parametrize("tied", [True, False])
def test_dense_flops_are_six_times_the_matmul_parameters(tied):
    config = config_from_preset("tiny", **MICRO, attention="full", tie_word_embeddings=tied)
    model = InfiniLlamaForCausalLM(config)
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
    if tied:  # the output projection multiplies by the embedding matrix
        matrices += config.vocab_size * config.hidden_size
    attention_one_key = 3 * 2 * 4 * 2 * 16  # 3 (fwd+bwd) · L · 4 · H · D · 1 key
    assert flops_per_token(config, seq_len=1) == 6 * matrices + attention_one_key


def test_attention_flops_full_vs_infini_vs_local():
    full = config_from_preset("tiny", **MICRO, attention="full")
    infini = config_from_preset("tiny", **MICRO, memory_update="delta")
    dense = 6 * 30080  # 2 · (4 · 32 · 32 + 3 · 32 · 64) + 300 · 32 matmul parameters
    # full: average causal context (32 + 1) / 2; infini: (16 + 1) / 2 in each segment, plus the memory's
    # σ(q)M, σ(k)ᵀv and the delta rule's σ(k)M: 2 · 16 · 16 · (2 + 2 · 2) per layer
    assert flops_per_token(full, 32) == dense + 3 * 2 * (4 * 2 * 16 * 16.5)
    assert flops_per_token(infini, 32) == dense + 3 * 2 * (4 * 2 * 16 * 8.5 + 2 * 16 * 16 * 6)
    # local: Infini's segment-local attention without the memory
    local = config_from_preset("tiny", **MICRO, attention="local")
    assert flops_per_token(local, 32) == dense + 3 * 2 * (4 * 2 * 16 * 8.5)


def test_peak_flops_table():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("NVIDIA L40S") == 362e12 and peak_bf16_flops("NVIDIA L4") == 121e12
    assert peak_bf16_flops("Some Future GPU") is None
    assert peak_flops(torch.device("cpu"), "bf16") is None  # no MFU on CPUs


def test_metrics_logger_writes_jsonl_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    logger = MetricsLogger(tmp_path, tensorboard=True)
    logger.log({"kind": "train", "step": 1, "loss": 5.0, "mfu": None})
    logger.log({"kind": "val", "step": 1, "loss": 4.5, "gates": [[0.5, 0.25]]})
    logger.log({"kind": "train", "step": 1, "loss": 4.0})  # the same step again, as after a resume
    logger.close()
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl", "train")] == [4.0]
    assert read_metrics(tmp_path / "metrics.jsonl", "val")[0]["gates"] == [[0.5, 0.25]]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    MetricsLogger(None).log({"kind": "train", "step": 1})  # other ranks: no sink, no error


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "checkpoints" / "step_0000001"

    def fails(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.write_atomically(target, fails)
    assert not target.exists() and list(target.parent.iterdir()) == []
    ckpt.write_atomically(target, lambda folder: (folder / "a.txt").write_text("1"))
    ckpt.write_atomically(target, lambda folder: (folder / "b.txt").write_text("2"))  # replaces
    assert sorted(p.name for p in target.iterdir()) == ["b.txt", "manifest.json"]


def test_recover_interrupted_writes(tmp_path):
    (tmp_path / ".tmp-step_0000009-123").mkdir()  # killed while writing: dropped
    kept = tmp_path / ".old-step_0000004-123"  # killed between the two renames: put back
    kept.mkdir()
    (kept / "w").write_text("1")
    (tmp_path / ".tmp-run.json-123").write_text("{")  # killed inside write_json_atomically: dropped
    ckpt.recover_interrupted_writes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000004"]


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path):
    def write_state(folder, step):
        (folder / ckpt.TRAINER_STATE).mkdir()
        (folder / ckpt.TRAINER_STATE / ckpt.STATE_FILE).write_text(json.dumps({"step": step}))

    for step in (2, 10, 4, 8):
        ckpt.write_atomically(ckpt.checkpoint_path(tmp_path, step), lambda folder, s=step: write_state(folder, s))
    (tmp_path / "checkpoints" / "step_0000012").mkdir()  # incomplete (no manifest): ignored
    ckpt.prune_checkpoints(tmp_path, keep=2, newest=ckpt.checkpoint_path(tmp_path, 10))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000008", "step_0000010"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000010"
    # Checkpoints after the one just written (left by a resume from an older one) are not counted or deleted.
    ckpt.prune_checkpoints(tmp_path, keep=1, newest=ckpt.checkpoint_path(tmp_path, 8))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000008", "step_0000010"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ckpt.capture_rng(torch.device("cpu"))
    torch.save([state], tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)[0], torch.device("cpu"))
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_a_line_torn_by_a_kill_is_dropped(tmp_path):
    """kill -9 in the middle of an append leaves a last line without its newline; the resumed run's logger cuts
    it off before appending, and a reader skips it meanwhile."""
    good = json.dumps({"kind": "train", "step": 1, "loss": 4.0}) + "\n"
    (tmp_path / "metrics.jsonl").write_text(good + '{"kind": "train", "step": 2, "lo')
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log({"kind": "train", "step": 2, "loss": 3.5})
    logger.close()
    assert (tmp_path / "metrics.jsonl").read_text() == good + json.dumps(
        {"kind": "train", "step": 2, "loss": 3.5}
    ) + "\n"
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [4.0, 3.5]
