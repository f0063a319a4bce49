"""benchmarks/profile_cpu.py at a small size: the rows it writes and how it sorts operators."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_cpu.py"


def load():
    spec = importlib.util.spec_from_file_location("profile_cpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_matrix_products_are_told_from_the_rest():
    profile_cpu = load()
    assert {profile_cpu.category(n) for n in ("aten::bmm", "aten::baddbmm_", "aten::mm")} == {"matmul"}
    assert {profile_cpu.category(n) for n in ("aten::clamp", "aten::exp_", "_SegmentLoop")} == {"other"}


def test_it_writes_a_row_per_rule_with_both_paths_and_the_bound(tmp_path, monkeypatch):
    out = tmp_path / "profile.json"
    argv = ["profile_cpu.py", "--length", "256", "--segment-len", "64", "--repeats", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    load().main()
    result = json.loads(out.read_text())
    assert [row["update"] for row in result["rows"]] == ["linear", "delta"]
    for row in result["rows"]:
        for path in ("fast", "reference"):
            assert row[f"{path}_ms"] > 0 and row[path]["self_ms_by_category"]["matmul"] > 0
        assert row["speedup"] == round(row["reference_ms"] / row["fast_ms"], 3)
        assert row["bound"] == round(row["reference_ms"] / row["fast"]["self_ms_by_category"]["matmul"], 3)
    assert result["cpu"]["cores"] >= 1
