"""Loading what is evaluated: a Hugging Face checkpoint folder (ours or any causal LM) and its tokenizer."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from infini_llama.data import load_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def require_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint folder as a Path, or FileNotFoundError saying what is missing (with "did you mean RUN/final?"
    for a training run's folder), or ValueError for a config.json that is not a JSON object."""
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"checkpoint folder {str(checkpoint)!r} does not exist; pass a folder written by `save_pretrained` "
            "(the trainer's RUN/final and RUN/checkpoints/step_N folders are)"
        )
    config = path / "config.json"
    if not config.is_file():
        if (path / "final" / "config.json").is_file():
            raise FileNotFoundError(
                f"{str(checkpoint)!r} is a training run's folder, not a model folder: did you mean "
                f"{str(path / 'final')!r}?"
            )
        if not any(path.iterdir()):
            raise FileNotFoundError(f"checkpoint folder {str(checkpoint)!r} is empty; pass a model folder")
        raise FileNotFoundError(f"{path} has no config.json: it is not a Hugging Face checkpoint folder")
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{config} is damaged: it is not a JSON object ({exc}); restore it or pass another checkpoint"
        ) from None
    return path


def check_manifest(checkpoint: str | os.PathLike) -> Path:
    """`require_checkpoint`, and for a folder the trainer wrote (it has a `manifest.json`) its checksums: a damaged
    file raises CheckpointError (a ValueError) naming it. Every command that loads weights calls this first."""
    from infini_llama.train.manifest import MANIFEST, verify_folder

    path = Path(checkpoint).expanduser()
    if (path / MANIFEST).is_file():  # before config.json is read: the manifest names what is damaged
        verify_folder(path)
    return require_checkpoint(path)


def load_model(checkpoint: str | os.PathLike, *, dtype: str = "float32", device: str | None = None) -> nn.Module:
    """`AutoModelForCausalLM.from_pretrained(checkpoint)` in eval mode, with a clear error for a missing folder.
    (Importing this package registered model_type "infini_llama" with the Auto classes.)

    A folder the trainer wrote (it has a `manifest.json`) is first checked against its checksums: a damaged
    file raises CheckpointError (a ValueError) naming it. Weights load from safetensors or, for other
    models' pickled `pytorch_model.bin`, through `torch.load(weights_only=True)`, which refuses anything but
    tensors and plain data."""
    from infini_llama.train.manifest import CheckpointError

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = check_manifest(checkpoint)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: its weights file holds pickled objects other than tensors and plain data, "
            "which could run code when loaded; use a copy saved as safetensors (save_pretrained writes one)"
        ) from exc
    return model.to(device or default_device()).eval()


def load_eval_tokenizer(
    checkpoint: str | os.PathLike, tokenizer: str | os.PathLike | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer saved in the checkpoint folder, or `tokenizer` (a folder or hub name) when given."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    path = require_checkpoint(checkpoint)
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(
            f"checkpoint {str(checkpoint)!r} holds no tokenizer (tokenizer.json); pass --tokenizer with the folder "
            "or name of the tokenizer the model was trained with"
        )
    return load_tokenizer(path)


def check_vocab(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer that can produce ids the model has no embedding for."""
    model_vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > model_vocab:
        raise ValueError(
            f"tokenizer mismatch: the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
            f"{model_vocab} rows; pass the tokenizer the model was trained with (--tokenizer)"
        )


def training_run(checkpoint: str | os.PathLike) -> Path | None:
    """The `infini-llama train` run folder a checkpoint belongs to (RUN/final or RUN/checkpoints/step_N, or the
    run folder itself), if any.

    (The trainer is imported here, not at the top: evaluating a checkpoint does not need it.)"""
    from infini_llama.train.rundir import RUN_FILE

    path = Path(checkpoint).resolve()
    for run in (path, path.parent, path.parent.parent):
        if (run / RUN_FILE).is_file():
            return run
    return None


def checkpoint_label(checkpoint: str | os.PathLike) -> str:
    """A short name for reports: the training run's folder name ("@step_N" for an intermediate checkpoint), else
    the checkpoint folder's name."""
    path = Path(checkpoint).resolve()
    run = training_run(path)
    if run is None:
        return path.name
    return run.name if run in (path, path.parent) else f"{run.name}@{path.name}"


def training_length(checkpoint: str | os.PathLike) -> int | None:
    """The sequence length the checkpoint was (last) trained at, from its training run's run.json."""
    from infini_llama.train.rundir import read_run_file

    run = training_run(checkpoint)
    if run is None:
        return None
    return read_run_file(run).get("train", {}).get("seq_len")


def model_segment_len(checkpoint: str | os.PathLike) -> int | None:
    """The segment length in the checkpoint's config.json (the full-attention baseline's too: the field is kept),
    None where it has none."""
    config = Path(checkpoint) / "config.json"
    return json.loads(config.read_text()).get("segment_len") if config.is_file() else None


def gate_trajectory(checkpoint: str | os.PathLike) -> list[dict]:
    """Mean gate value per layer at every validation step of the checkpoint's training run ([] if unknown)."""
    from infini_llama.train.metrics import METRICS_FILE, read_metrics

    run = training_run(checkpoint)
    if run is None or not (run / METRICS_FILE).is_file():
        return []
    return [
        {"step": r["step"], "layer_mean": [sum(row) / len(row) for row in r["gates"]]}
        for r in read_metrics(run / METRICS_FILE, kind="val")
        if r.get("gates")
    ]
