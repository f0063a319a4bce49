#!/usr/bin/env python3
"""Benchmark passkey fine-tuning's validations: their batches built anew at every validation or kept, and their
answer-token losses scored in a forward pass per labelling or in one.

A validation of a packed passkey fine-tuning scores the same validation sequences several times: once labelled as
in training, once per answer token, and with their parts aligned with segment boundaries (answers, then needles).
The source keeps each validation sequence once built. This times the batches of `--validations` validations, asked
for in the trainer's order, from one source (the sequences kept) against a fresh source per validation (the same
sequences built anew each time, as before they were kept); the batches are checked equal. Then it scores one
validation's sequences under their training labels and each answer token's (`answer_token_validation`) with a small
random model of the preset's vocabulary and segment (`--layers`, `--width`): a forward pass per labelling
(`summed_loss`, as before) against one for all of them (`summed_losses`), the losses checked equal. The source is
that of a study preset's fine-tuning; building the tokenizer is not timed. Usage::

    python benchmarks/bench_validation_batches.py --preset paper-h200 \
        --out benchmarks/results/validation_batches_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_data_workers import _source
from benchjson import run_environment, write_result

from infini_llama.models import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.study.config import study_config


def one_validation(source) -> list[tuple[torch.Tensor, ...]]:
    """The batches one validation of the trainer asks `source` for, in its order (sequences, then labellings)."""
    batches = [(ids, *labellings) for ids, labellings in source.answer_token_validation()]
    return batches + list(source.boundary_batches()) + list(source.needle_boundary_batches())


def timed(make_source, validations: int) -> tuple[list[float], list]:
    """Seconds of each validation's batches, and the last validation's batches."""
    seconds, batches = [], []
    for _ in range(validations):
        source = make_source()
        began = time.perf_counter()
        batches = one_validation(source)
        seconds.append(time.perf_counter() - began)
    return seconds, batches


def scoring(preset: str, source, layers: int, width: int) -> dict:
    """Seconds to score one validation's labellings with a forward pass each, and with one; the model's size."""
    from infini_llama.train.loop import summed_loss, summed_losses

    cfg = study_config(preset)
    shape = {"num_hidden_layers": layers, "hidden_size": width, "intermediate_size": 4 * width, "head_dim": width // 8}
    config = config_from_preset(cfg.model_preset, **{**cfg.model, **shape})
    torch.manual_seed(0)
    model = InfiniLlamaForCausalLM(config).eval()
    batches = list(source.answer_token_validation())
    with torch.no_grad():
        began = time.perf_counter()
        each = [torch.stack([summed_loss(model, ids, labels) for labels in labellings]) for ids, labellings in batches]
        per_labelling = time.perf_counter() - began
        began = time.perf_counter()
        one = [summed_losses(model, ids, labellings) for ids, labellings in batches]
        one_pass = time.perf_counter() - began
    for a, b in zip(each, one, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    return {"labellings": len(batches[0][1]), "batches": len(batches), "layers": layers, "width": width,
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": {"a pass per labelling": round(per_labelling, 3), "one pass": round(one_pass, 3)}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper-h200", help="study preset whose fine-tuning data is built")
    parser.add_argument("--validations", type=int, default=5, help="validations of one fine-tuning")
    parser.add_argument("--layers", type=int, default=2, help="layers of the scoring model")
    parser.add_argument("--width", type=int, default=256, help="width of the scoring model")
    parser.add_argument("--out", default=None, help="JSON to write (default: print only)")
    args = parser.parse_args()
    source, tcfg = _source(args.preset)
    anew, anew_batches = timed(lambda: _source(args.preset)[0], args.validations)
    kept, kept_batches = timed(lambda: source, args.validations)
    pairs = zip(anew_batches, kept_batches, strict=True)
    same = all(torch.equal(a, b) for x, y in pairs for a, b in zip(x, y, strict=True))
    assert same, "kept sequences must be the sequences built anew"
    rows = {"built anew": anew, "kept": kept}
    print(f"{args.preset} validation batches ({len(kept_batches)} batches of {tcfg.batch_size or tcfg.global_batch} "
          f"× {tcfg.seq_len} tokens per validation), {args.validations} validations")  # fmt: skip
    print(f"{'batches':<12} {'first':>8} {'later (median)':>15} {'all':>8} {'vs anew':>8}")
    for name, seconds in rows.items():
        ratio = sum(anew) / sum(seconds)
        print(f"{name:<12} {seconds[0]:>7.2f}s {statistics.median(seconds[1:]):>14.3f}s {sum(seconds):>7.2f}s "
              f"{ratio:>7.1f}x")  # fmt: skip
    scored = scoring(args.preset, source, args.layers, args.width)
    print(f"scoring one validation's {scored['batches']} batches under {scored['labellings']} labellings, "
          f"{scored['parameters'] / 1e6:.1f}M-parameter model")  # fmt: skip
    base = scored["seconds"]["a pass per labelling"]
    for name, seconds in scored["seconds"].items():
        print(f"{name:<22} {seconds:>7.2f}s {base / seconds:>7.1f}x")
    if args.out:
        write_result(args.out, {
            "benchmark": "validation_batches", "preset": args.preset, "validations": args.validations,
            "batches_per_validation": len(kept_batches), "environment": run_environment("cpu"),
            "seconds": {name: [round(s, 4) for s in seconds] for name, seconds in rows.items()},
            "total_s": {name: round(sum(seconds), 3) for name, seconds in rows.items()},
            "scoring": scored,
        })  # fmt: skip


if __name__ == "__main__":
    main()
