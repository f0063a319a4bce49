"""benchmarks/bench_scaling.py end to end on gloo (1 and 2 CPU processes, micro model), so that its launch
and parsing work the first time on a GPU machine."""

import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scaling.py"


def test_scaling_benchmark_on_cpu_processes(micro_inputs, run_python, tmp_path):
    out = tmp_path / "scaling.json"
    done = run_python(
        [str(SCRIPT), "--preset", "tiny", "--device", "cpu", "--gpus", "1,2", "--arms", "infini",
         "--dist", "ddp", "--steps", "4", "--warmup", "1", "--log-every", "1", "--batch-size", "2",
         "--seq-len", "32",
         "--train-args", " ".join(micro_inputs), "--out", str(out)],
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"date", "device", "versions", "settings"} <= set(result)
    rows = {(r["dist"], r["gpus"]): r for r in result["rows"]}
    assert set(rows) == {("single", 1), ("ddp", 2)}
    for row in rows.values():
        assert "error" not in row, row.get("error")
        assert row["tokens_per_s"] > 0 and row["timed_records"] == 3  # steps 2-4
        assert (row["seq_len"], row["batch_size"]) == (32, 2)
        assert row["peak_mem_gib"] is None and row["mfu"] is None  # CPU: no CUDA memory, no peak FLOPs
    assert rows[("single", 1)]["scaling_efficiency"] == 1.0
    two = rows[("ddp", 2)]
    assert two["tokens_per_s_per_gpu"] == two["tokens_per_s"] / 2
    assert two["scaling_efficiency"] == two["tokens_per_s_per_gpu"] / rows[("single", 1)]["tokens_per_s"]
    assert "efficiency" in done.stdout
