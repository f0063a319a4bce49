"""Memory diagnostics: gate values per layer and head, the memory-off ablation, and compression-count buckets."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from infini_llama.eval import plots
from infini_llama.eval.checkpoint import gate_trajectory
from infini_llama.eval.records import (  # noqa: F401  (memory_off_layers / _text: grids import them from here too)
    SUMMARY,
    memory_off_layers,
    memory_off_text,
    run_header,
    write_json,
)
from infini_llama.models import GATE_PARAMETER


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The β of every Infini-attention layer, in layer order (empty for a model without memory)."""
    return [param for name, param in model.named_parameters() if name.endswith(GATE_PARAMETER)]


# A gate this close to 0 or 1 is saturated: its head is (almost) local attention only, or memory only.
SATURATION = 0.01


def saturated_gates(gates: list[list[float]], margin: float = SATURATION) -> dict:
    """How many of the heads' gates g ((layers, heads) nested lists) are saturated: `closed` (g < margin),
    `open` (g > 1 − margin), their sum `saturated`, its `share` of all `heads`."""
    values = [g for row in gates for g in row]
    closed, opened = sum(g < margin for g in values), sum(g > 1 - margin for g in values)
    return {
        "margin": margin, "closed": closed, "open": opened, "saturated": closed + opened, "heads": len(values),
        "share": (closed + opened) / len(values) if values else 0.0,
    }  # fmt: skip


def gate_report(model: nn.Module) -> dict:
    """g = act(β) and β per layer and head, through the activation the model itself uses (`model.gate_values()`,
    never an assumed sigmoid), with per-layer means and the share of saturated heads (`saturated_gates`). Raises
    ValueError for a model without gates."""
    gates = model.gate_values() if hasattr(model, "gate_values") else None
    if gates is None:
        raise ValueError("this model has no memory gates (a full-attention baseline or a non-Infini model)")
    betas = torch.stack([p.detach() for p in gate_parameters(model)])
    values = gates.float().cpu()
    return {
        "activation": getattr(model.config, "gate_activation", None),
        "gates": values.tolist(),
        "betas": betas.float().cpu().tolist(),
        "layer_mean": values.mean(dim=1).tolist(),
        "mean": float(values.mean()),
        "layers": values.shape[0],
        "heads": values.shape[1],
        "saturated": saturated_gates(values.tolist()),
    }


@contextlib.contextmanager
def memory_off(model: nn.Module, layers: Sequence[int] | None = None) -> Iterator[nn.Module]:
    """Inside the block the gates of `layers` (indices among the Infini layers; None: every one) are g = 0, so
    those layers use local attention only (the ablation; one layer at a time measures what each layer's memory adds).

    β is set to −∞ and restored on exit: both gate activations map −∞ to exactly 0 (clamp(0.2·(−∞) + 0.5, 0, 1) =
    0 and sigmoid(−∞) = 0), so the ablation runs through the model's own gate code; the model's `gate_values()`
    is checked to be exactly 0 in those layers before anything runs. The memory is still read, then weighted by 0.
    """
    params = gate_parameters(model)
    if not params:
        raise ValueError("memory_off needs a model with Infini-attention gates; this model has none")
    chosen = range(len(params)) if layers is None else sorted(set(layers))
    if any(not 0 <= i < len(params) for i in chosen):
        raise ValueError(f"memory_off layers must be in 0..{len(params) - 1} (the Infini layers), got {list(layers)}")
    saved = [params[i].detach().clone() for i in chosen]
    try:
        with torch.no_grad():
            for i in chosen:
                params[i].fill_(float("-inf"))
        if not bool((model.gate_values()[list(chosen)] == 0).all()):
            raise RuntimeError("setting β = -inf did not close the gates exactly; the ablation would be unsound")
        yield model
    finally:
        with torch.no_grad():
            for i, value in zip(chosen, saved, strict=True):
                params[i].copy_(value)


def updates_bucket(updates: int | None) -> str:
    """Bucket label of a number of memory updates: 0 to 4 alone, then powers of two ("5-8", "9-16", …)."""
    if updates is None:
        return "n/a"
    if updates <= 4:
        return str(updates)
    high = 8
    while updates > high:
        high *= 2
    return f"{high // 2 + 1}-{high}"


def bucket_order(label: str) -> float:
    """Sort key of an `updates_bucket` label."""
    return float("inf") if label == "n/a" else float(label.split("-")[0])


NEEDLE_WHOLE = "whole"  # `needle_cut_bucket` of a needle no segment boundary cuts


def needle_cut_bucket(needle_start: int, needle_end: int, segment_len: int) -> str:
    """Where a segment boundary cuts the needle's tokens [needle_start, needle_end): "whole" if none does, else
    how many of its tokens lie before the first boundary inside it, in fours ("1-4", "5-8", ...). A cut after the
    needle's first tokens leaves the key's copies together; one between or inside them splits the key's sentence
    across a memory update (reports/paper-h200-screen/, lease D)."""
    before = -needle_start % segment_len
    if before == 0 or before >= needle_end - needle_start:
        return NEEDLE_WHOLE
    low = (before - 1) // 4 * 4 + 1
    return f"{low}-{low + 3}"


def needle_cut_order(label: str) -> float:
    """Sort key of a `needle_cut_bucket` label: whole first, then by the tokens before the cut."""
    return -1.0 if label == NEEDLE_WHOLE else float(label.split("-")[0])


def run_gates(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike,
    *,
    label: str | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> dict:
    """Write the gate report of `model` into `out_dir`: summary.json (task "gates"), gates.md (layers × heads
    table), gates.png (heatmap on the fixed 0–1 scale) and, when `checkpoint` comes from a training run that
    logged its gates, gates_trajectory.png (mean g per layer against training step); returns the summary."""
    report = gate_report(model)
    report["trajectory"] = gate_trajectory(checkpoint) if checkpoint is not None else []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = run_header(model, tokenizer, {"task": "gates"}, label=label, checkpoint=checkpoint)
    summary = {"task": "gates", "status": "complete", **header, "results": report}
    write_json(out / SUMMARY, summary)
    rows = [
        f"| {i} | " + " | ".join(f"{v:.3f}" for v in row) + f" | {report['layer_mean'][i]:.3f} |"
        for i, row in enumerate(report["gates"])
    ]
    heads = " | ".join(f"head {h}" for h in range(report["heads"]))
    table = [f"| layer | {heads} | mean |", "|" + "---|" * (report["heads"] + 2), *rows]
    sat = report["saturated"]
    (out / "gates.md").write_text(
        f"g = {report['activation']}(β), mean {report['mean']:.3f}, saturated heads {sat['saturated']}/{sat['heads']}"
        "\n\n" + "\n".join(table) + "\n"
    )
    plots.heatmap(
        report["gates"],
        [str(i) for i in range(report["layers"])],
        [str(h) for h in range(report["heads"])],
        out / "gates.png",
        title=f"memory gates g: {summary['label']}",
        xlabel="head",
        ylabel="layer",
        vmin=0.0,
        vmax=1.0,
        fmt="{:.2f}",
    )
    if report["trajectory"]:
        plot_trajectory(report["trajectory"], out / "gates_trajectory.png", title=summary["label"])
    return summary


def plot_trajectory(trajectory: list[dict], path: str | os.PathLike, *, title: str) -> None:
    """Mean gate value of every layer against the training step."""
    steps = [point["step"] for point in trajectory]
    layers = len(trajectory[0]["layer_mean"])
    series = {f"layer {i}": (steps, [point["layer_mean"][i] for point in trajectory]) for i in range(layers)}
    plots.lines(series, path, title=f"gates during training: {title}", xlabel="step", ylabel="mean g", ylim=(0, 1))
