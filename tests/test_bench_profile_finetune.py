"""benchmarks/profile_finetune_cpu.py for a few steps: a row per arm of the tiny study, at its fine-tuning shape."""

import json
import sys

import pytest
import torch


def test_it_times_each_arms_fine_tuning_step_in_phases(tmp_path, monkeypatch, benchmark_script):
    module = benchmark_script("profile_finetune_cpu")
    out = tmp_path / "profile.json"
    monkeypatch.setattr(sys, "argv", ["profile_finetune_cpu.py", "--steps", "2", "--warmup", "1", "--out", str(out)])
    threads = torch.get_num_threads()
    try:
        module.main()
    finally:
        torch.set_num_threads(threads)  # the script sets one thread, as the main job gives each arm
    result = json.loads(out.read_text())
    assert [row["arm"] for row in result["rows"]] == ["infini", "full"]
    for row in result["rows"]:
        assert row["batch"] == [8, 256], "the tiny study's fine-tuning step"
        assert set(row["phase_ms"]) == set(module.PHASES) and all(ms > 0 for ms in row["phase_ms"].values())
        assert sum(row["phase_share"].values()) == pytest.approx(1, abs=0.005)
        assert row["tokens_per_s"] == pytest.approx(8 * 256 / (row["step_ms"] / 1e3), rel=0.01)
    assert result["threads"] == 1 and result["steps"] == 2
