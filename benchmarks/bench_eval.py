#!/usr/bin/env python3
"""Benchmark passkey evaluation: the chunked streaming path against re-running the whole prompt.

For each arm (Infini-attention, full attention) of the "tiny" preset and each prompt length, one batch of
passkey samples is scored (greedy answer + teacher-forced digits) two ways:

* baseline: the model called on the whole sequence for the prompt and again for every generated token (what a
  harness without a cache does);
* streaming: `ChunkedLM`, the harness's path: the prompt fed chunk by chunk through the model's state, then one
  token per call on top of it.

Both must give the same predictions. Reported: seconds per sample, speed-up, and the size of the state carried
after the prompt (constant in length for Infini-attention, growing for full attention's KV cache).

Usage::

    python benchmarks/bench_eval.py [--lengths 512,1024,2048,4096] [--out benchmarks/results/eval_cpu.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from benchjson import run_environment, write_result  # noqa: E402

from infini_llama import InfiniLlamaForCausalLM, config_from_preset  # noqa: E402
from infini_llama.data import load_tokenizer  # noqa: E402
from infini_llama.eval import ChunkedLM, evaluate_passkey, make_passkey_sample  # noqa: E402


class WholeSequenceLM(torch.nn.Module):
    """The baseline: a forward without `past_key_values`, so every call re-reads the whole sequence."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, input_ids: torch.Tensor):
        return self.model(input_ids=input_ids)


def state_bytes(state) -> int:
    """Bytes of every tensor in a (nested) streaming state."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, (tuple, list)):
        return sum(state_bytes(s) for s in state)
    return 0


def timed_passkey(
    runner: ChunkedLM, tokenizer, samples: list, batch_size: int, repeats: int
) -> tuple[float, list[dict]]:
    """Minimum wall time over `repeats` runs (the least disturbed by other load), and the rows."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rows = evaluate_passkey(runner, tokenizer, samples, batch_size)
        times.append(time.perf_counter() - start)
    return min(times), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,1024,2048,4096")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results/eval_cpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(n) for n in args.lengths.split(",")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(None, vocab_size=4096)
    rows = []
    for attention in ("infini", "full"):
        torch.manual_seed(0)
        model = InfiniLlamaForCausalLM(config_from_preset("tiny", attention=attention)).to(device).eval()
        streaming, baseline = ChunkedLM(model), ChunkedLM(WholeSequenceLM(model))
        for length in lengths:
            samples = [make_passkey_sample(tokenizer, length, 0.5, index=i) for i in range(args.batch_size)]
            evaluate_passkey(streaming, tokenizer, samples[:1], 1)  # warm-up
            base_s, base_rows = timed_passkey(baseline, tokenizer, samples, args.batch_size, args.repeats)
            fast_s, fast_rows = timed_passkey(streaming, tokenizer, samples, args.batch_size, args.repeats)
            same = [r["predicted_ids"] for r in base_rows] == [r["predicted_ids"] for r in fast_rows]
            ids = torch.tensor([s.input_ids for s in samples], device=device)
            _, state = streaming.prefill(ids)
            rows.append({
                "attention": attention, "length": length, "batch": args.batch_size,
                "baseline_s_per_sample": base_s / len(samples), "streaming_s_per_sample": fast_s / len(samples),
                "speedup": base_s / fast_s, "same_predictions": same, "state_bytes": state_bytes(state),
            })  # fmt: skip
            r = rows[-1]
            print(
                f"{attention:6} L={length:6d}  baseline {r['baseline_s_per_sample']:.3f} s/sample  "
                f"streaming {r['streaming_s_per_sample']:.3f} s/sample  x{r['speedup']:.2f}  "
                f"state {r['state_bytes'] / 2**20:.2f} MiB  same={same}"
            )
    benchmark = "passkey evaluation, streaming vs whole-sequence re-run (tiny preset, random weights)"
    write_result(args.out, {"benchmark": benchmark, **run_environment(device), "rows": rows})


if __name__ == "__main__":
    main()
