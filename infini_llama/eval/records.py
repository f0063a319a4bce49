"""What every evaluation run writes: its settings and environment, and per-sample rows that make it resumable.

A run folder holds `summary.json` (all settings, the model, tokenizer and library versions; the results once the
run is complete) and `samples.jsonl` (one row per sample, written a whole cell at a time). Restarting a killed
run with the same settings skips the cells already in `samples.jsonl`; different settings are refused.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from infini_llama.data import tokenizer_fingerprint
from infini_llama.eval.checkpoint import checkpoint_label
from infini_llama.eval.rope_scaling import rope_scaling_label
from infini_llama.host import cpu_summary, describe_cpu

SUMMARY = "summary.json"
SAMPLES = "samples.jsonl"
LIBRARIES = ("torch", "transformers", "tokenizers", "numpy", "safetensors", "infini_llama")


def library_versions() -> dict:
    """Python, the platform and each of LIBRARIES' versions: the installed distribution's, else (a package run
    from a source tree on the path, not installed) the imported module's `__version__`, else None."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            versions[name] = getattr(sys.modules.get(name), "__version__", None)
    return versions


def git_revision() -> str | None:
    """The commit of the checkout this package runs from (None when it is not a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def environment(model: nn.Module | None = None) -> dict:
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    cpu = describe_cpu()
    return {
        "versions": library_versions(),
        "git_revision": git_revision(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_summary(cpu),
        "cpu": cpu,  # on a GPU too: the host's CPU builds the prompts
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
    }


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of every parameter and buffer, by name: the same weights give the same hash
    whether they were loaded from a checkpoint or built in memory."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def describe_model(model: nn.Module, checkpoint: str | os.PathLike | None = None) -> dict:
    config = model.config
    return {
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "class": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "attention": getattr(config, "attention", None),
        "segment_len": getattr(config, "segment_len", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype),
        "fingerprint": model_fingerprint(model),
        "config": config.to_dict(),
    }


def describe_tokenizer(tokenizer: PreTrainedTokenizerBase) -> dict:
    return {
        "name_or_path": str(tokenizer.name_or_path),
        "class": type(tokenizer).__name__,
        "size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "fingerprint": tokenizer_fingerprint(tokenizer),
    }


def write_json(path: Path, data: dict) -> None:
    """Write atomically (temporary file, then rename) so a killed run never leaves half a JSON file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file, without a last line cut short by a kill."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class ResumableRun:
    """A run folder whose results are written cell by cell.

    `identity` holds everything that decides the results (task settings, model and tokenizer fingerprints); a
    folder that holds rows of another identity is refused, so results of different runs are never mixed.
    """

    def __init__(self, out_dir: str | os.PathLike, task: str, identity: dict, header: dict):
        self.out_dir = Path(out_dir)
        self.samples_path = self.out_dir / SAMPLES
        self.summary_path = self.out_dir / SUMMARY
        self.task = task
        self.identity = json.loads(json.dumps(identity, default=str))
        self.header = header
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.summary_path.is_file():
            previous = json.loads(self.summary_path.read_text())
            if previous.get("task") != task or previous.get("identity") != self.identity:
                raise ValueError(
                    f"{self.out_dir} already holds a {previous.get('task')!r} run with other settings, model or "
                    "tokenizer; pass a new output folder (or delete this one) to start a fresh run"
                )
        write_json(self.summary_path, {"task": task, "status": "running", "identity": self.identity, **header})

    def finished_cells(self, expected_rows: Callable[[str], int]) -> dict[str, list[dict]]:
        """Rows of the cells already complete, by cell id; rows of incomplete cells are dropped from the file."""
        by_cell: dict[str, list[dict]] = {}
        for row in read_rows(self.samples_path):
            by_cell.setdefault(row["cell"], []).append(row)
        complete = {cell: rows for cell, rows in by_cell.items() if len(rows) == expected_rows(cell)}
        kept = [row for rows in complete.values() for row in rows]
        tmp = self.samples_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
        os.replace(tmp, self.samples_path)
        return complete

    def append(self, rows: Iterable[dict]) -> None:
        """Append the rows of one finished cell in a single write, flushed to disk."""
        text = "".join(json.dumps(row, default=str) + "\n" for row in rows)
        with open(self.samples_path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def finish(self, results: dict) -> dict:
        summary = {"task": self.task, "status": "complete", "identity": self.identity, **self.header, **results}
        write_json(self.summary_path, summary)
        return summary


def memory_off_layers(setting: bool | Sequence[int]) -> tuple[int, ...] | None:
    """The layers a `memory_off` setting closes: None for every layer (True), the sorted distinct indices for a list
    of them, () for none (False or an empty list)."""
    if setting is True:
        return None
    if setting is False or setting is None:
        return ()
    layers = tuple(sorted(set(setting)))
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
        raise ValueError(f"memory_off takes true (every layer) or layer indices >= 0, got {setting!r}")
    return layers


def memory_off_text(setting: bool | Sequence[int]) -> str:
    """How a run's label names a `memory_off` setting: "memory off", "memory off in layer 2", "" when off for none."""
    layers = memory_off_layers(setting)
    if layers is None:
        return "memory off"
    if not layers:
        return ""
    return f"memory off in layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"


def run_header(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    settings: dict,
    *,
    label: str | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> dict:
    """The self-description every run folder starts with: label, settings, model, tokenizer, environment."""
    model_info = describe_model(model, checkpoint)
    if label is None:
        if checkpoint is not None:
            label = checkpoint_label(checkpoint)
        else:
            label = f"{model_info['class']}-{model_info['fingerprint'][:8]}"
        if settings.get("memory_off"):
            label += f" ({memory_off_text(settings['memory_off'])})"
        if settings.get("rope_scaling"):
            label += f" ({rope_scaling_label(settings['rope_scaling'])})"
    return {
        "label": label,
        "settings": settings,
        "model": model_info,
        "tokenizer": describe_tokenizer(tokenizer),
        "environment": environment(model),
    }
