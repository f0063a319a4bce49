"""Training-step throughput of both arms against Hugging Face's LlamaForCausalLM, at the same shape, in one run.

    python benchmarks/bench_throughput.py --device cuda --preset paper-300m --lengths 2048,8192,16384
    python benchmarks/bench_throughput.py --device cpu --preset tiny --lengths 256,512     # smoke test

One step = forward + backward + AdamW (fused on CUDA) on a batch of `--tokens` tokens (batch size tokens / T),
bf16 autocast on CUDA. Reports tokens/s, peak memory and the ratio to HF Llama (SDPA) with the same weights
shape: the baseline every other Infini-attention implementation builds on.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

import infini_llama
from infini_llama import InfiniLlamaForCausalLM, config_from_preset


def hf_llama(config) -> LlamaForCausalLM:
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
            rms_norm_eps=config.rms_norm_eps, tie_word_embeddings=config.tie_word_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
            attn_implementation="sdpa", max_position_embeddings=1 << 20,
        )  # fmt: skip
    )


def measure(model, T: int, batch: int, device: str, steps: int, compile_model: bool) -> dict:
    model = model.to(device).train()
    fused = device == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
    step_model = torch.compile(model) if compile_model else model
    x = torch.randint(0, model.config.vocab_size, (batch, T), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = step_model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(2):
        loss = step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return dict(
        tok_s=batch * T / seconds,
        step_ms=seconds * 1e3,
        peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        loss=float(loss),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="paper-300m")
    parser.add_argument("--lengths", default="2048,8192,16384")
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per step (batch = tokens // length)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd models")
    parser.add_argument("--arms", default="hf-llama,full,infini")
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    args = parser.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    rows = []
    builders = {
        "hf-llama": lambda: hf_llama(config_from_preset(args.preset, attention="full")),
        "full": lambda: InfiniLlamaForCausalLM(config_from_preset(args.preset, attention="full")),
        "infini": lambda: InfiniLlamaForCausalLM(config_from_preset(args.preset, attention="infini")),
    }
    for T in (int(t) for t in args.lengths.split(",")):
        batch = max(1, args.tokens // T)
        for compile_model in [False, True] if args.compile else [False]:
            for arm in args.arms.split(","):
                torch.manual_seed(0)
                try:
                    result = measure(builders[arm](), T, batch, args.device, args.steps, compile_model)
                except torch.OutOfMemoryError:
                    result = dict(tok_s=None, step_ms=None, peak_gib=None, loss=None, error="out of memory")
                rows.append(dict(arm=arm, T=T, batch=batch, compiled=compile_model, **result))
                r = rows[-1]
                tok_s = f"{r['tok_s']:>10.0f}" if r["tok_s"] else f"{'OOM':>10}"
                peak = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] else ""
                print(f"{arm:>9} T={T:<6} batch={batch:<3} compiled={compile_model!s:<5} {tok_s} tok/s {peak}")
                gc.collect()
                if args.device == "cuda":
                    torch.cuda.empty_cache()

    baseline = {(r["T"], r["compiled"]): r["tok_s"] for r in rows if r["arm"] == "hf-llama"}
    for r in rows:
        base = baseline.get((r["T"], r["compiled"]))
        r["vs_hf_llama"] = r["tok_s"] / base if base and r["tok_s"] else None
    print(f"\n{'arm':>9} {'T':>6} {'compiled':>8} {'tok/s':>10} {'vs HF Llama':>12}")
    for r in rows:
        ratio = f"{r['vs_hf_llama']:.2f}" if r["vs_hf_llama"] else "-"
        tok_s = f"{r['tok_s']:.0f}" if r["tok_s"] else "OOM"
        print(f"{r['arm']:>9} {r['T']:>6} {r['compiled']!s:>8} {tok_s:>10} {ratio:>12}")

    result = dict(
        benchmark="throughput",
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        versions=dict(
            torch=torch.__version__, transformers=transformers.__version__, infini_llama=infini_llama.__version__
        ),
        settings=vars(args),
        rows=rows,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
