"""Checkpoints: Hugging Face model folders with the trainer's state beside them, written atomically.

Layout of `<run>/checkpoints/step_0000200/` (200 = optimizer steps done):

    config.json, generation_config.json, model.safetensors    the model (`from_pretrained` loads it)
    tokenizer.json, tokenizer_config.json, ...                 the tokenizer (`AutoTokenizer` loads it)
    trainer_state/state.json      step, tokens seen, scheduler, data source, world size, train + model config
    trainer_state/optimizer.pt    AdamW state, keyed by parameter name (loads under 1 process, DDP or FSDP2)
    trainer_state/rng.pt          python / numpy / torch / cuda RNG states of every process
    manifest.json                 size and SHA-256 of every file above (`infini_llama.train.manifest`)

What survives what:

- A folder is written under a temporary name, hashed into its manifest, flushed to disk and renamed into place
  when complete, so a run killed (or out of disk) while saving never leaves a checkpoint that looks complete,
  and the previous checkpoint is not touched until the new one is in place.
- Resuming takes the newest checkpoint whose files match its manifest; a damaged one is reported by name
  (a warning) and the one before it is used.
- Weights load only from safetensors and the trainer state only through `torch.load(weights_only=True)`:
  a file that carries a pickled object other than tensors and plain data is refused, never run.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infini_llama.models import InfiniLlamaForCausalLM
from infini_llama.train.manifest import MANIFEST, CheckpointError, manifest_problems, write_manifest

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
_NAME = re.compile(r"step_(\d+)")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:07d}"


def checkpoint_step(path: Path) -> int:
    return int(_NAME.fullmatch(path.name).group(1))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run that were completely written (they have a manifest), oldest first; whether their
    files are still intact is `latest_checkpoint`'s question."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    complete = [p for p in root.iterdir() if _NAME.fullmatch(p.name) and (p / MANIFEST).is_file()]
    return sorted(complete, key=checkpoint_step)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose files match its manifest. Each newer one that does not is named in a
    warning with what is wrong, and skipped: a run resumes from the last good checkpoint."""
    for path in reversed(list_checkpoints(run_dir)):
        problems = manifest_problems(path)
        if not problems:
            return path
        warnings.warn(
            f"skipping damaged checkpoint {path}: {'; '.join(problems)}; trying the one before it (else the start)",
            UserWarning,
            stacklevel=2,
        )
    return None


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Run `write(folder)` on a fresh temporary folder beside `target`, add its manifest, flush it to disk, then
    rename it to `target` (replacing an existing `target` only once the new one is complete).

    An OSError (a full disk, a read-only folder) leaves `target` and its siblings as they were and is raised
    again, naming `target` when it named no file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        write_manifest(tmp)
        _fsync_tree(tmp)
        if target.exists():
            old = target.with_name(f".old-{target.name}-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
        _fsync(target.parent)  # the rename itself, so a power cut cannot undo it
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a failed write() names no file: say which folder
            exc.filename = str(target)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to disk: the page cache survives a killed process but not a
    power cut, and the rename must never publish a folder whose bytes are still only in memory."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        _fsync(path)
    _fsync(folder)


def recover_interrupted_writes(folder: Path) -> None:
    """Tidy what a run killed inside `write_atomically`, `prune_checkpoints` or `write_json_atomically` left in
    `folder`: drop half-written or half-deleted temporary files and folders; put back a replaced folder whose
    successor never arrived."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name.startswith(".tmp-") and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(".tmp-"):
            path.unlink(missing_ok=True)
        elif path.name.startswith(".old-"):
            name = path.name.removeprefix(".old-").rsplit("-", 1)[0]
            if (folder / name).exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.replace(path, folder / name)


def prune_checkpoints(run_dir: str | Path, keep: int, newest: Path) -> None:
    """Keep `newest` (just written) and the `keep` - 1 checkpoints before it; delete older ones.

    Checkpoints after `newest` are left alone: they exist only when a run resumed from an older checkpoint
    because a newer one was damaged, and are replaced as the run reaches them. Each folder is renamed to a
    temporary name before it is deleted, so a run killed half-way never leaves a half-deleted checkpoint."""
    up_to = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) <= checkpoint_step(newest)]
    for path in up_to[:-keep]:
        doomed = path.with_name(f".tmp-{path.name}-pruned")
        os.replace(path, doomed)
        shutil.rmtree(doomed)


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
    return _load_data(path / TRAINER_STATE / OPTIMIZER_FILE)


def load_rng_states(path: Path) -> list[dict]:
    return _load_data(path / TRAINER_STATE / RNG_FILE)


def _load_data(file: Path) -> Any:
    """Tensors and plain data from a `torch.save` file; a pickled object of any other kind is refused, never
    constructed (`weights_only=True`)."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {file}: it holds pickled objects other than tensors and plain data, which this "
            f"trainer never writes, so the file was altered. Delete its checkpoint folder to resume from the one "
            f"before. ({str(exc).splitlines()[0]})"
        ) from exc


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


def load_weights(folder: str | Path, **kwargs: Any) -> InfiniLlamaForCausalLM:
    """`InfiniLlamaForCausalLM.from_pretrained(folder, **kwargs)` from safetensors only: a folder whose weights
    are a pickle is refused, not loaded."""
    try:
        return InfiniLlamaForCausalLM.from_pretrained(folder, use_safetensors=True, **kwargs)
    except OSError as exc:
        raise CheckpointError(
            f"{folder} has no model.safetensors; weights are only loaded from safetensors files (a pickled "
            f"pytorch_model.bin could run code when loaded): convert it with save_pretrained. ({exc})"
        ) from exc
