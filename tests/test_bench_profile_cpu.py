"""benchmarks/profile_cpu.py at a small size: the rows it writes and how it sorts operators."""

import json
import sys


def test_matrix_products_are_told_from_the_rest(benchmark_script):
    profile_cpu = benchmark_script("profile_cpu")
    assert {profile_cpu.category(n) for n in ("aten::bmm", "aten::baddbmm_", "aten::mm")} == {"matmul"}
    assert {profile_cpu.category(n) for n in ("aten::clamp", "aten::exp_", "_SegmentLoop")} == {"other"}


def test_it_writes_a_row_per_rule_with_both_paths_and_the_bound(tmp_path, monkeypatch, benchmark_script):
    out = tmp_path / "profile.json"
    argv = ["profile_cpu.py", "--length", "256", "--segment-len", "64", "--repeats", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    benchmark_script("profile_cpu").main()
    result = json.loads(out.read_text())
    assert [row["update"] for row in result["rows"]] == ["linear", "delta"]
    for row in result["rows"]:
        for path in ("fast", "reference"):
            assert row[f"{path}_ms"] > 0 and row[path]["self_ms_by_category"]["matmul"] > 0
        assert row["speedup"] == round(row["reference_ms"] / row["fast_ms"], 3)
        assert row["bound"] == round(row["reference_ms"] / row["fast"]["self_ms_by_category"]["matmul"], 3)
    assert result["cpu"]["cores"] >= 1
