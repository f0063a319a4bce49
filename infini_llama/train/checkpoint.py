"""Checkpoints: Hugging Face model folders with the trainer's state beside them, written atomically.

Layout of `<run>/checkpoints/step_0000200/` (200 = optimizer steps done):

    config.json, generation_config.json, model.safetensors    the model (`from_pretrained` loads it)
    tokenizer.json, tokenizer_config.json, ...                 the tokenizer (`AutoTokenizer` loads it)
    trainer_state/state.json      step, tokens seen, scheduler, data source, world size, train + model config
    trainer_state/optimizer.pt    AdamW state, keyed by parameter name (loads under 1 process, DDP or FSDP2)
    trainer_state/rng.pt          python / numpy / torch / cuda RNG states of every process

A folder is written under a temporary name and renamed into place when complete, so a run killed while
saving never leaves a checkpoint that looks complete; the newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
_NAME = re.compile(r"step_(\d+)")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    complete = [p for p in root.iterdir() if (p / TRAINER_STATE / STATE_FILE).is_file()]
    steps = {p: int(m.group(1)) for p in complete if (m := _NAME.fullmatch(p.name))}
    return sorted(steps, key=steps.get)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Run `write(folder)` on a fresh temporary folder beside `target`, then rename it to `target` (replacing
    an existing `target` only once the new one is complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        if target.exists():
            old = target.with_name(f".old-{target.name}-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover_interrupted_writes(folder: Path) -> None:
    """Tidy what a run killed inside `write_atomically` left in `folder`: drop half-written temporary
    folders; put back a replaced checkpoint whose successor never arrived."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name.startswith(".tmp-"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(".old-"):
            name = path.name.removeprefix(".old-").rsplit("-", 1)[0]
            if (folder / name).exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.replace(path, folder / name)


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path)


def save_checkpoint(
    path: Path,
    *,
    save_model: Callable[[Path], None],
    optimizer_state: dict,
    trainer_state: dict[str, Any],
    rng_states: list[dict],
) -> None:
    """Write one checkpoint folder atomically; `save_model(folder)` writes the HF model and tokenizer."""

    def write(folder: Path) -> None:
        save_model(folder)
        state_dir = folder / TRAINER_STATE
        state_dir.mkdir()
        torch.save(optimizer_state, state_dir / OPTIMIZER_FILE)
        torch.save(rng_states, state_dir / RNG_FILE)
        (state_dir / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))

    write_atomically(path, write)


def read_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((path / TRAINER_STATE / STATE_FILE).read_text())


def load_optimizer_state(path: Path) -> dict:
    return torch.load(path / TRAINER_STATE / OPTIMIZER_FILE, map_location="cpu", weights_only=True)


def load_rng_states(path: Path) -> list[dict]:
    return torch.load(path / TRAINER_STATE / RNG_FILE, map_location="cpu", weights_only=True)


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as tensors and plain numbers (what `torch.load(weights_only=True)` reads)."""
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
