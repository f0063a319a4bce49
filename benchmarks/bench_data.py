#!/usr/bin/env python3
"""Benchmark the data layer on the embedded corpus (CPU only, no network).

Measures, in one run:

* default BPE training time on the train split, at vocab 4096 and 8192;
* tokenization throughput over the whole corpus (train + validation), best of
  ``--repeats`` interleaved runs, for
  - baseline: ``tokenizer.encode(doc)`` one document at a time,
  - ``tokenizer(list_of_docs)``: one batched call on whole documents,
  - ``encode_documents``: the path ``prepare_tokens`` uses (documents cut into pieces
    at safe newlines, ``encode_batch_fast``, written to a uint16 file);
* ``prepare_tokens`` cold (tokenize + write) and warm (cache hit);
* ``get_batch`` from the memmap for a training-sized batch.

Usage::

    python benchmarks/bench_data.py [--out benchmarks/results/data_cpu.json] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Tokenizers' thread pool is what the batched paths are about; make sure it is on.
os.environ["TOKENIZERS_PARALLELISM"] = "true"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from infini_llama.data import (  # noqa: E402
    WindowSampler,
    encode_documents,
    get_batch,
    load_corpus,
    prepare_tokens,
    train_bpe_tokenizer,
)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Minimum wall time of ``repeats`` calls (the least disturbed by other load), and the
    last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/data_cpu.json")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each throughput measurement")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine conditions)")
    args = ap.parse_args()

    load_start = os.getloadavg()[0]  # other processes' load makes timings noisier
    train_docs = load_corpus("train")
    all_texts = [d.text for d in train_docs + load_corpus("validation")]
    n_bytes = sum(len(t.encode("utf-8")) for t in all_texts)
    rows: list[dict] = []

    toks, train_times = {}, {4096: [], 8192: []}
    for _ in range(args.repeats):  # interleaved, as below
        for vocab in train_times:
            sec, toks[vocab] = timed(lambda v=vocab: train_bpe_tokenizer((d.text for d in train_docs), v), 1)
            train_times[vocab].append(sec)
    for vocab, times in train_times.items():
        rows.append(
            {"name": f"bpe_train_vocab{vocab}", "seconds": min(times), "seconds_median": statistics.median(times)}
        )
        print(f"BPE training, vocab {vocab}: {min(times):.2f} s", flush=True)

    tok = toks[8192]

    def one_by_one() -> int:
        return sum(len(tok.encode(t, add_special_tokens=False)) + 1 for t in all_texts)

    def batched_whole_docs() -> int:
        ids = tok(all_texts, add_special_tokens=False)["input_ids"]
        return sum(len(x) + 1 for x in ids)

    with tempfile.TemporaryDirectory() as tmp:

        def pipeline() -> int:
            n, _ = encode_documents(
                all_texts, tok, Path(tmp) / "all.bin", dtype=np.dtype(np.uint16), show_progress=False
            )
            return n

        # Round-robin the repeats so that load from other processes on a shared machine
        # hits every method alike; report the minimum (least disturbed) and the median.
        methods = [
            ("encode_one_by_one (baseline)", one_by_one),
            ("tokenizer(list) whole docs", batched_whole_docs),
            ("encode_documents (pipeline)", pipeline),
        ]
        times: dict[str, list[float]] = {name: [] for name, _ in methods}
        counts: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, fn in methods:
                sec, counts[name] = timed(fn, 1)
                times[name].append(sec)
        base_sec = min(times[methods[0][0]])
        for name, _ in methods:
            sec, n_tokens = min(times[name]), counts[name]
            rows.append(
                {
                    "name": name,
                    "seconds": sec,
                    "seconds_median": statistics.median(times[name]),
                    "tokens": n_tokens,
                    "tokens_per_s": n_tokens / sec,
                    "MB_per_s": n_bytes / 1e6 / sec,
                    "speedup_vs_baseline": base_sec / sec,
                }
            )
            print(f"{name}: {sec:.2f} s, {n_tokens / sec / 1e6:.2f} M tok/s", flush=True)

        cache = Path(tmp) / "cache"
        cold, data = timed(lambda: prepare_tokens(tok, cache_dir=cache, show_progress=False), 1)
        warm, _ = timed(lambda: prepare_tokens(tok, cache_dir=cache, show_progress=False), args.repeats)
        rows.append({"name": "prepare_tokens cold (corpus, vocab 8192)", "seconds": cold})
        rows.append({"name": "prepare_tokens warm (cache hit)", "seconds": warm})

        sampler = WindowSampler(data.num_train_tokens, 2048, seed=0)
        step_box = iter(range(10**9))
        sec, _ = timed(lambda: get_batch(data.train, sampler.offsets(next(step_box), 16), 2048), 50)
        rows.append({"name": "get_batch B=16 L=2048 from memmap", "seconds": sec, "batches_per_s": 1 / sec})

    print()
    print(f"{'measurement':44s} {'seconds':>9s} {'M tok/s':>8s} {'MB/s':>7s} {'speedup':>8s}")
    for r in rows:
        tps = f"{r['tokens_per_s'] / 1e6:8.2f}" if "tokens_per_s" in r else " " * 8
        mbs = f"{r['MB_per_s']:7.2f}" if "MB_per_s" in r else " " * 7
        spd = f"{r['speedup_vs_baseline']:7.2f}x" if "speedup_vs_baseline" in r else ""
        print(f"{r['name']:44s} {r['seconds']:9.4f} {tps} {mbs} {spd}")

    result = {
        "benchmark": "data",
        "load_average_1m_start_end": [load_start, os.getloadavg()[0]],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "tokenizers": tokenizers.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "corpus": {"documents": len(all_texts), "bytes": n_bytes, "chars": sum(map(len, all_texts))},
        "repeats": args.repeats,
        "note": args.note,
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
