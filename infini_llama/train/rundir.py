"""The run folder: who may write into it, and the `run.json` that describes the run.

Layout of `<run>/`:

    run.json          resolved config (train + model), data sizes, versions, device, git revision, date
    metrics.jsonl     one JSON record per log / evaluation / event
    tensorboard/      TensorBoard events
    checkpoints/      step_NNNNNNN/ folders (see `infini_llama.train.checkpoint`), the newest `keep`
    final/            the trained model and tokenizer as a Hugging Face folder (the evaluation's input)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

import infini_llama
from infini_llama.host import describe_cpu

RUN_FILE = "run.json"
FINAL_DIR = "final"


def check_run_dir(path: Path, *, resume: bool, overwrite: bool) -> str:
    """What starting in `path` means: "new" (missing or empty), "resume" or "overwrite" (it holds a run and
    that flag was given). Anything else, a folder that cannot be written included, raises ValueError before a
    single file is touched."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {str(path)!r} is a file; pass a folder for the run")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {str(path)!r} cannot be created: {str(existing)!r} is a file; pass another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(path)!r} is not writable ({str(existing)!r} is read-only); pass another folder")
    # A run killed while writing its first run.json left only a temporary file, which the run tidies away.
    if not path.exists() or all(p.name.startswith(".tmp-") for p in path.iterdir()):
        return "new"
    if not (path / RUN_FILE).is_file():
        raise ValueError(
            f"--out {str(path)!r} is not empty and holds no run (no {RUN_FILE}; it holds {folder_listing(path)}); "
            "choose a new or empty folder"
        )
    if resume:
        return "resume"
    if overwrite:
        return "overwrite"
    raise ValueError(
        f"--out {str(path)!r} already holds a run; pass --resume to continue it, --overwrite to delete it "
        "and start over, or choose another --out"
    )


def folder_listing(path: Path, shown: int = 4) -> str:
    """A few of the entries of `path` for a message: "a.txt, data/, notes.md and 12 more"."""
    names = sorted(f"{p.name}/" if p.is_dir() else p.name for p in path.iterdir())
    listed = ", ".join(names[:shown])
    return f"{listed} and {len(names) - shown} more" if len(names) > shown else listed


def clear_folder(path: Path, marker: str, what: str) -> None:
    """Delete the contents of `path` if it is a folder of ours, one holding the `marker` file that the command which
    made it writes first (run.json for a run, study.json for a study); otherwise raise ValueError listing a few of
    the entries it would have deleted, and touch nothing. Links inside are removed, never followed."""
    if not (path / marker).is_file():
        raise ValueError(
            f"refusing to delete {str(path)!r}: it holds no {marker}, so it is not {what} (it holds "
            f"{folder_listing(path)}); choose a new or empty folder"
        )
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def clear_run_dir(path: Path) -> None:
    """Delete the contents of a run folder (see `clear_folder`)."""
    clear_folder(path, RUN_FILE, "a training run")


def read_run_file(path: Path) -> dict[str, Any]:
    return json.loads((path / RUN_FILE).read_text())


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def environment(device: torch.device, world_size: int) -> dict[str, Any]:
    """Versions, device and code revision: enough to tell where a number came from."""
    return {
        "infini_llama": infini_llama.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_name(device),
        "cpu": describe_cpu(),  # model, family and vector extensions: CPU timings depend on them
        "world_size": world_size,
        "cpu_threads": torch.get_num_threads(),
        "git_revision": git_revision(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def git_revision() -> str | None:
    """The package's git commit (with "+dirty" if it has local changes), or None outside a checkout."""
    root = Path(infini_llama.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")
