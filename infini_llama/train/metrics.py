"""What a run reports: training FLOPs and MFU, and the metrics sinks (JSONL, TensorBoard, W&B).

Only rank 0 writes; other processes get a logger with no sinks.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from infini_llama.models import InfiniLlamaConfig

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

# Dense bf16 tensor-core peak (datasheet, without sparsity), matched in order against the CUDA device name.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device for bf16 training, from `PEAK_BF16_FLOPS`; None on CPUs, for fp32, or for
    GPUs not in the table."""
    if device.type != "cuda" or precision != "bf16":
        return None
    return peak_bf16_flops(torch.cuda.get_device_name(device))


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak of the GPU called `device_name` (as CUDA names it), None if not in the table."""
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in device_name), None)


def flops_per_token(config: InfiniLlamaConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward = 3 × forward) per token of a `seq_len` window.

    6 · N for the weight matmuls (N = every matrix except the input embedding, which is a lookup; the output
    projection counts even when tied), plus attention: 4 · H · D · c per layer forward, with c the average
    number of keys a query attends to, causally: (T + 1) / 2 for full attention, the same within each segment
    for Infini-attention, which adds its memory: σ(q)M per query head and σ(k)ᵀv per KV head (2 · D · D each),
    and σ(k)M for the delta rule's correction.
    """
    C, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    H, Hkv, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    matrices = L * (2 * C * H * D + 2 * C * Hkv * D + 3 * C * config.intermediate_size) + V * C
    if config.attention == "full":
        context = (seq_len + 1) / 2
        memory = 0.0
    else:
        N = config.segment_len
        full, rest = divmod(seq_len, N)
        context = (full * N * (N + 1) / 2 + rest * (rest + 1) / 2) / seq_len
        memory = 2 * D * D * (H + Hkv * (2 if config.memory_update == "delta" else 1))
    attention = 4 * H * D * context + memory
    return 6 * matrices + 3 * L * attention


class MetricsLogger:
    """Appends records to `<run>/metrics.jsonl`, and mirrors their numbers to TensorBoard and W&B.

    A record is a flat dict with "kind" ("train", "val", "event") and "step"; numeric fields become scalars
    named "<kind>/<field>"; a "gates" field ((layers, heads) nested lists) becomes "gates/layer<i>/head<j>".
    """

    def __init__(
        self,
        run_dir: Path | None,
        *,
        tensorboard: bool = True,
        wandb_run: Any = None,
        purge_step: int | None = None,
    ) -> None:
        self.file = None
        self.writer = None
        self.wandb_run = wandb_run
        if run_dir is None:
            return
        self.file = open(run_dir / METRICS_FILE, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn(
                    "tensorboard is not installed, so no TensorBoard events are written: "
                    "pip install tensorboard (metrics.jsonl is written regardless)",
                    stacklevel=2,
                )
            else:
                # purge_step drops events a killed run logged after its last checkpoint, which a resumed run
                # logs again.
                self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def log(self, record: dict[str, Any]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        scalars = _scalars(record)
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, record["step"])
        if self.wandb_run is not None and scalars:
            self.wandb_run.log(scalars, step=record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    kind = record.get("kind", "train")
    out = {}
    for key, value in record.items():
        if key in ("kind", "step"):
            continue
        if key == "gates" and value is not None:
            for i, row in enumerate(value):
                for j, g in enumerate(row):
                    out[f"gates/layer{i}/head{j}"] = float(g)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{kind}/{key}"] = float(value)
    return out


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl (of one `kind` if given); for a step logged twice (a run resumed from a
    checkpoint older than its last log), the later record."""
    by_key: dict[tuple[str, int], dict] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if kind is None or record.get("kind") == kind:
            by_key[(record.get("kind"), record.get("step"))] = record
    return sorted(by_key.values(), key=lambda r: r.get("step") or 0)


class Throughput:
    """Tokens per second (and MFU, peak memory) over the steps since the last read; time spent evaluating
    and checkpointing is not counted."""

    def __init__(self, flops_per_token: float, peak_flops: float | None, world_size: int) -> None:
        self.flops_per_token, self.peak_flops, self.world_size = flops_per_token, peak_flops, world_size
        self.tokens, self.seconds = 0, 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def read(self, device: torch.device) -> dict[str, float | None]:
        rate = self.tokens / self.seconds
        self.tokens, self.seconds = 0, 0.0
        peak, on_gpu = self.peak_flops, device.type == "cuda"
        return {
            "tokens_per_s": rate,
            "mfu": self.flops_per_token * rate / (peak * self.world_size) if peak else None,
            "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30) if on_gpu else None,
        }
