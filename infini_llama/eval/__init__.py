"""Evaluation: passkey and multi-needle retrieval, perplexity by position, memory diagnostics, reports.

Library use (the `infini-llama eval` / `report` commands call the same functions)::

    from infini_llama.eval import PasskeyGridConfig, run_passkey_grid, build_report, load_model, load_eval_tokenizer

    model = load_model("runs/tiny-infini/final")
    tokenizer = load_eval_tokenizer("runs/tiny-infini/final")
    summary = run_passkey_grid(model, tokenizer, PasskeyGridConfig(lengths=(256, 512), samples=8), "ev/passkey")
    build_report(["ev/passkey"], "ev/report")

Every run folder holds summary.json (settings, model/tokenizer hashes, versions, results) and samples.jsonl (one
row per sample); a killed run resumes where it stopped when started again with the same folder.
"""

from infini_llama.eval.checkpoint import check_vocab, load_eval_tokenizer, load_model
from infini_llama.eval.diagnostics import gate_report, memory_off, run_gates
from infini_llama.eval.inference import ChunkedLM
from infini_llama.eval.multineedle import (
    MULTI_TASKS,
    MultiNeedleConfig,
    MultiNeedleSample,
    make_multineedle_sample,
    run_multineedle_grid,
)
from infini_llama.eval.passkey import PasskeySample, make_passkey_sample, memory_updates
from infini_llama.eval.passkey_grid import PasskeyGridConfig, evaluate_passkey, run_passkey_grid
from infini_llama.eval.perplexity import PerplexityConfig, perplexity_by_position
from infini_llama.eval.prompts import Prompt, build_prompt
from infini_llama.eval.report import build_report
from infini_llama.eval.rope_scaling import rope_scaled, rope_scaling
from infini_llama.eval.scoring import passkey_scores, string_match_all, wilson_interval

__all__ = [
    "MULTI_TASKS",
    "ChunkedLM",
    "MultiNeedleConfig",
    "MultiNeedleSample",
    "PasskeyGridConfig",
    "PasskeySample",
    "PerplexityConfig",
    "Prompt",
    "build_prompt",
    "build_report",
    "check_vocab",
    "evaluate_passkey",
    "gate_report",
    "load_eval_tokenizer",
    "load_model",
    "make_multineedle_sample",
    "make_passkey_sample",
    "memory_off",
    "memory_updates",
    "passkey_scores",
    "perplexity_by_position",
    "rope_scaled",
    "rope_scaling",
    "run_gates",
    "run_multineedle_grid",
    "run_passkey_grid",
    "string_match_all",
    "wilson_interval",
]
