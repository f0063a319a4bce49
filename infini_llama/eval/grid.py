"""The loop every evaluation shares: cells evaluated one at a time, written as they finish, skipped on restart."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from infini_llama.eval.checkpoint import check_vocab
from infini_llama.eval.diagnostics import memory_off
from infini_llama.eval.records import ResumableRun, memory_off_layers, run_header
from infini_llama.eval.rope_scaling import rope_scaled

# Settings that change how fast a run goes, not its results: a run may resume with other values.
SPEED_SETTINGS = ("batch_size", "batch_tokens", "chunk_len", "progress")


def run_grid(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike,
    *,
    task: str,
    settings: dict,
    cells: Sequence[str],
    rows_per_cell: int,
    evaluate_cells: Callable[[list[str]], list[list[dict]]],
    summarize: Callable[[list[dict]], dict],
    cells_per_call: int = 1,
    label: str | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> dict:
    """Evaluate the cell ids not yet in `out_dir`, `cells_per_call` at a time, with `evaluate_cells` (which
    returns the `rows_per_cell` rows of each cell it is given), append each cell's rows as soon as they are done,
    then write the summary with `summarize(all rows in cell order)`.

    `settings["memory_off"]` runs everything with the memory gates closed (true: every layer's; a list: those
    layers'), `settings["rope_scaling"]` with RoPE scaled (`eval.rope_scaling`); `settings["progress"]` shows a bar.
    """
    check_vocab(model, tokenizer)
    header = run_header(model, tokenizer, settings, label=label, checkpoint=checkpoint)
    identity = {
        **{k: v for k, v in settings.items() if k not in SPEED_SETTINGS},
        "model": header["model"]["fingerprint"],
        "tokenizer": header["tokenizer"]["fingerprint"],
    }
    run = ResumableRun(out_dir, task, identity, header)
    rows_by_cell = run.finished_cells(lambda cell: rows_per_cell)
    todo = [cell for cell in cells if cell not in rows_by_cell]
    closed = memory_off_layers(settings.get("memory_off", False))
    ablation = memory_off(model, closed) if closed != () else contextlib.nullcontext(model)
    scaled = rope_scaled(model, settings["rope_scaling"]) if settings.get("rope_scaling") else contextlib.nullcontext()
    bar = tqdm(total=len(todo) * rows_per_cell, desc=task, unit="sample", disable=not settings.get("progress", True))
    with ablation, scaled, bar:
        for start in range(0, len(todo), cells_per_call):
            group = todo[start : start + cells_per_call]
            bar.set_postfix_str(group[0])
            for cell, rows in zip(group, evaluate_cells(group), strict=True):
                assert len(rows) == rows_per_cell, (cell, len(rows))
                for row in rows:
                    row["cell"] = cell
                run.append(rows)
                rows_by_cell[cell] = rows
                bar.update(len(rows))
    return run.finish({"results": summarize([row for cell in cells for row in rows_by_cell[cell]])})
