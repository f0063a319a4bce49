"""benchmarks/bench_eval_precision.py on CPU with the tiny preset: a row per (arm, length, batch), the precisions
timed in the same run, and each compared with float32."""

import json
import sys

import pytest


def test_it_times_float32_and_bf16_evaluation_side_by_side(tmp_path, monkeypatch, benchmark_script):
    module = benchmark_script("bench_eval_precision")
    out = tmp_path / "eval_precision.json"
    argv = ["bench_eval_precision.py", "--preset", "tiny", "--lengths", "96", "--batch-sizes", "1,2", "--samples", "2",
            "--repeats", "1", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    result = json.loads(out.read_text())
    assert [(r["attention"], r["length"], r["batch"]) for r in result["rows"]] == [
        ("infini", 96, 1), ("infini", 96, 2), ("full", 96, 1), ("full", 96, 2),
    ]  # fmt: skip
    for row in result["rows"]:
        assert row["fp32_s_per_sample"] > 0 and row["bf16_s_per_sample"] > 0
        assert row["speedup"] == pytest.approx(row["fp32_s_per_sample"] / row["bf16_s_per_sample"])
        assert 0 <= row["same_answers"] <= 1 and 0 <= row["max_digit_acc_difference"] <= 1
        assert row["tf32_speedup"] == pytest.approx(row["fp32_s_per_sample"] / row["tf32_s_per_sample"])
        assert row["tf32_same_answers"] == 1 and row["tf32_max_digit_acc_difference"] == 0, "on a CPU, float32"
    assert "tiny preset" in result["benchmark"]
