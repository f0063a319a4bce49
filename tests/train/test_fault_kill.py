"""kill -9 of a real training process, mid-step, mid-checkpoint-write and at a moment of the OS's choosing: the
folder still holds a valid last checkpoint, and --resume repeats the uninterrupted run's losses bit for bit."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import infini_llama
from infini_llama.cli import main
from infini_llama.train import read_metrics, train
from infini_llama.train.checkpoint import latest_checkpoint
from infini_llama.train.manifest import manifest_problems

CHILD = Path(__file__).with_name("kill_child.py")
STEPS, SAVE_EVERY = 12, 3
LOGGED_STEP = re.compile(r'"kind": "train", "step": (\d+)')


def start_child(command: list[str], cache_root: Path, logs: Path) -> subprocess.Popen:
    package_root = str(Path(infini_llama.__file__).resolve().parent.parent)  # also where it is not installed
    env = {
        **os.environ, "INFINI_LLAMA_CACHE": str(cache_root), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }  # fmt: skip
    with open(logs, "w") as out:  # a file, not a pipe: a child blocked on a full pipe would never be killed
        return subprocess.Popen([sys.executable, *command], env=env, stdout=out, stderr=subprocess.STDOUT)


def kill_9_when(child: subprocess.Popen, ready, logs: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if child.poll() is not None:
            pytest.fail(f"the child exited ({child.returncode}) before it could be killed:\n{logs.read_text()}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child never reached the kill point:\n{logs.read_text()}")
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL


def logged_steps(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return max(map(int, LOGGED_STEP.findall(metrics.read_text())), default=0) if metrics.is_file() else 0


@pytest.mark.parametrize("where", ["step:5", "save:2", "anywhere"])
def test_kill_9_then_resume_repeats_the_uninterrupted_losses(micro_cfg, micro_args, cache_root, tmp_path, where):
    straight = train(micro_cfg(out=str(tmp_path / "straight"), steps=STEPS, save_every=SAVE_EVERY))
    run, marker, logs = tmp_path / "run", tmp_path / "paused", tmp_path / "child.log"
    args = micro_args("--steps", str(STEPS), "--save-every", str(SAVE_EVERY), out=run)
    if where == "anywhere":  # the installed trainer, untouched: killed once step 4 is logged, wherever it then is
        child = start_child(["-m", "infini_llama", *args], cache_root, logs)
        kill_9_when(child, lambda: logged_steps(run) >= 4, logs)
    else:
        child = start_child([str(CHILD), where, str(marker), *args], cache_root, logs)
        kill_9_when(child, marker.exists, logs)

    last = latest_checkpoint(run)  # verified against its manifest
    if where == "step:5":
        assert last.name == "step_0000003" and logged_steps(run) == 4
    elif where == "save:2":  # step 6's folder was half written under a temporary name
        assert last.name == "step_0000003"
        assert [p.name.split("-")[1] for p in (run / "checkpoints").glob(".tmp-*")] == ["step_0000006"]
    else:
        assert last is None or manifest_problems(last) == []

    assert main(micro_args("--steps", str(STEPS), "--save-every", str(SAVE_EVERY), "--resume", out=run)) == 0
    losses = {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl", "train")}
    assert losses == straight.losses  # bit for bit: the killed run's steps, then the resumed run's
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert manifest_problems(run / "final") == []
