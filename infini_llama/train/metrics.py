"""What a run reports: training FLOPs and MFU, and the metrics sinks (JSONL, TensorBoard, W&B).

Only rank 0 writes; other processes get a logger with no sinks.
"""

from __future__ import annotations

import json
import math
import time
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
    for Infini-attention and the local control; Infini-attention adds its memory: σ(q)M per query head and σ(k)ᵀv
    per KV head (2 · D · D each), and σ(k)M for the delta rule's correction.
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
        memory = 0.0
        if config.attention == "infini":
            memory = 2 * D * D * (H + Hkv * (2 if config.memory_update == "delta" else 1))
    attention = 4 * H * D * context + memory
    return 6 * matrices + 3 * L * attention


class MetricsLogger:
    """Appends records to `<run>/metrics.jsonl`, and mirrors their numbers to TensorBoard and W&B.

    A record is a flat dict with "kind" ("train", "val", "event") and "step"; numeric fields become scalars
    named "<kind>/<field>"; a "gates" field ((layers, heads) nested lists) becomes "gates/layer<i>/head<j>".
    Every line is strict JSON: a non-finite number (the loss of a skipped step) is written as the string "NaN",
    "Infinity" or "-Infinity", which `read_metrics` reads back as the float.
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
        drop_torn_line(run_dir / METRICS_FILE)
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
        self.file.write(json.dumps(_strict_json(record), allow_nan=False) + "\n")
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


def open_logger(
    run_dir: Path | None,
    *,
    tensorboard: bool,
    wandb_project: str | None,
    config: dict[str, Any],
    purge_step: int | None,
) -> MetricsLogger:
    """The run's logger (`run_dir` None: a process other than rank 0, no sinks); with `wandb_project`, also a
    W&B run named after the folder, holding `config`."""
    if run_dir is None:
        return MetricsLogger(None)
    wandb_run = None
    if wandb_project is not None:
        import wandb

        wandb_run = wandb.init(project=wandb_project, name=run_dir.name, dir=str(run_dir), config=config)
    return MetricsLogger(run_dir, tensorboard=tensorboard, wandb_run=wandb_run, purge_step=purge_step)


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


# Non-finite floats as strict JSON has no numbers for them: the names Python's json module would write bare.
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _strict_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by its name in NON_FINITE (nested dicts and lists too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def _from_strict_json(value: Any) -> Any:
    """The inverse of `_strict_json`: the names of non-finite numbers become floats again."""
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {key: _from_strict_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_strict_json(item) for item in value]
    return value


def drop_torn_line(path: Path) -> None:
    """Cut off a last line that has no newline: a run killed while appending leaves one. Its record is from
    after the last checkpoint, so the resumed run logs that step again."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        end = f.seek(0, 2)
        if end == 0 or (f.seek(end - 1), f.read(1))[1] == b"\n":
            return
        pos = end
        while pos > 0:
            size = min(1 << 16, pos)
            pos -= size
            f.seek(pos)
            newline = f.read(size).rfind(b"\n")
            if newline >= 0:
                f.truncate(pos + newline + 1)
                return
        f.truncate(0)


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl (of one `kind` if given); for a step logged twice (a run resumed from a
    checkpoint older than its last log), the later record. A torn last line (a run killed mid-write) is
    ignored. Non-finite numbers come back as floats, whether written as names (see `MetricsLogger`) or, by older
    versions, as bare NaN / Infinity."""
    by_key: dict[tuple[str, int], dict] = {}
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()
    for line in lines:
        if not line.strip():
            continue
        record = _from_strict_json(json.loads(line))
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


class StatusLines:
    """Without a progress bar (--no-progress, logs redirected to a file, parallel study arms): a line with step,
    loss, tokens/s and time left, at most every `every_s` seconds and at the last step."""

    def __init__(self, start: int, steps: int, every_s: float = 30.0):
        self.start, self.steps, self.every_s = start, steps, every_s
        self.began = self.printed = time.monotonic()

    def maybe_print(self, step: int, loss: float, tokens_per_s: float, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.printed < self.every_s:
            return
        self.printed = now
        left = (now - self.began) / max(step - self.start, 1) * (self.steps - step)
        print(
            f"step {step}/{self.steps}: loss {loss:.4f}, {tokens_per_s:,.0f} tokens/s, "
            f"{int(left // 60)} min {int(left % 60):02d} s left",
            flush=True,
        )
