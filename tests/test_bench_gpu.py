"""benchmarks/bench_gpu.py's argument handling runs without a GPU: `--dry-run` lists what it would measure."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def run(*argv):
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)


def test_dry_run_lists_the_issue_measurement():
    done = run("--lengths", "8192,16384", "--extra", "hf-compiled@2048", "--skip", "lucidrains", "--dry-run")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert set(plan) == {"trainer", "settings", "decode", "train"}
    assert plan["trainer"]["command"] == "infini-llama train --preset paper-300m"
    assert "batch_size" not in plan["trainer"]["overrides"]  # the default micro-batch is what is measured
    assert "repetition_penalty=1.1 after 1048576" in plan["settings"] and len(plan["settings"]) == 15
    assert plan["train"] == ["hf-eager@8192", "delta-default@8192", "hf-eager@16384", "delta-default@16384",
                             "hf-compiled@2048"]  # fmt: skip


def test_an_unknown_section_is_refused():
    done = run("--skip", "decoding", "--dry-run")
    assert done.returncode == 2 and "unknown section" in done.stderr
