"""GPU speed of the default paths against Hugging Face Llama, in one run: training, decoding, long prefill.

    python benchmarks/bench_gpu.py --out benchmarks/results/gpu_h200.json

Training: one step = forward + backward + fused AdamW on `--tokens` tokens (batch = tokens / length, at least
1), bf16 autocast, the `paper-300m` shape. Rows: HF `LlamaForCausalLM` (SDPA) eager and `torch.compile`d (the
baseline), our full-attention arm eager, and the Infini arm (delta and linear rule) on the trainer's default
CUDA path: decoder layers and loss compiled by `infini_llama.train.compile`. Warm-up = seconds
from the start of compilation to the end of the first step, less one steady step.
TF32 is on for float32 matmuls, as in the trainer under bf16.
MFU = tokens/s × training FLOPs per token (`infini_llama.train.metrics.flops_per_token`: 6 × matrix parameters
+ 3 × attention and memory FLOPs) / the GPU's dense bf16 datasheet peak.

Decoding: `StaticDecoder` (CUDA graphs) greedy steps after a 4K, 64K and 1M-token context at batch 1, at 4K for
batch 8 and 64; the same through `model.generate`; HF Llama's `generate` with its KV cache as the baseline.
Prefill: the context fed through `stream` in chunks, tokens/s and peak memory. Optional: lucidrains'
infini-transformer-pytorch at the same shape, trained through its own wrapper (`--lucidrains-lengths`).

Trainer default (section `trainer`): `infini-llama train --preset paper-300m` with no flags, through the trainer
itself (its automatic micro-batch, compilation, data), only the run's length and bookkeeping shortened
(`TRAINER_OVERRIDES`); tokens/s and MFU from its metrics.jsonl after the first logged window.
Generate settings (section `settings`): `model.generate` itself at batch 1 after 4K, 64K and 1M tokens of
context (given as an InfiniCache, so the prompt is not fed again) for greedy, top-p, repetition_penalty=1.1,
min_new_tokens=256 (with an end-of-sequence token) and no_repeat_ngram_size=3; tokens/s from the difference of
a short and a long run, counted from the tokens returned.

Issue 25's measurement, under 8 minutes on one H200:
    python benchmarks/bench_gpu.py --lengths 8192,16384 --arms hf-eager,delta-default \
        --extra hf-compiled@2048 --skip lucidrains --out benchmarks/results/gpu_h200.json
`--dry-run` prints the rows it would measure and exits (runs without a GPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

import infini_llama
from infini_llama import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.models import causal_lm_loss
from infini_llama.models.fast_generate import decoder_for
from infini_llama.train.compile import compile_decoder_layers, compile_loss
from infini_llama.train.metrics import flops_per_token, peak_bf16_flops

MFU_FORMULA = (
    "tokens/s × flops_per_token(config, T) / peak; flops_per_token = 6 × (matrix parameters incl. the output "
    "layer) + 3 × layers × (4 × H × D × mean keys per query + memory 2·D²·(H + Hkv·(2 delta | 1 linear))); "
    "peak = dense bf16 datasheet FLOP/s"
)
GiB = 2**30
# Rows at one length besides the every-length arms: the compiled baseline, our full arm, the linear rule.
EXTRA_ROWS = "hf-compiled@2048,full-eager@16384,linear-default@16384"


def hf_llama(config) -> LlamaForCausalLM:
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads,
            rms_norm_eps=config.rms_norm_eps,
            tie_word_embeddings=config.tie_word_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
            attn_implementation="sdpa",
            max_position_embeddings=1 << 21,
        )  # fmt: skip
    )


def fresh() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    torch.cuda.reset_peak_memory_stats()


def make_step(arm: str, T: int, args):
    """One training step of `arm` ("<model>-<mode>") at length T as a function returning its seconds, with the
    model's config, the batch size and the time its construction (and compilation setup) began."""
    fresh()
    kind, mode = arm.rsplit("-", 1)
    config = config_from_preset(args.preset, attention="full" if kind in ("hf", "full") else "infini")
    if kind in ("delta", "linear"):
        config = config_from_preset(args.preset, attention="infini", memory_update=kind)
    torch.manual_seed(0)
    model = (hf_llama(config) if kind == "hf" else InfiniLlamaForCausalLM(config)).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    batch = max(1, args.tokens // T)
    x = torch.randint(0, config.vocab_size, (batch, T), device="cuda")
    began = time.perf_counter()
    step_model, loss_fn = model, causal_lm_loss
    if mode == "compiled":
        step_model = torch.compile(model)
    elif mode == "default":  # what the trainer does on CUDA: compiled layers and loss
        if compile_decoder_layers(model.model.layers, batch, T, autocast_dtype=torch.bfloat16) is None:
            raise RuntimeError("compilation failed: the default path fell back to eager")
        loss_fn = compile_loss(batch, T, config.vocab_size, x.device, autocast_dtype=torch.bfloat16)

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if kind == "hf":
                loss = step_model(input_ids=x, labels=x).loss
            else:  # the trainer's loss: summed in the step, scaled by the number of targets
                loss = loss_fn(step_model(input_ids=x).logits, x, reduction="sum") / (batch * (T - 1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    return step, config, batch, began


def train_rate(arm: str, T: int, args) -> dict:
    """tokens/s, peak memory and warm-up of one arm at length T; arm = "<model>-<mode>"."""
    step, config, batch, began = make_step(arm, T, args)
    mode = arm.rsplit("-", 1)[1]
    step()
    first_done = time.perf_counter()
    step()
    torch.cuda.reset_peak_memory_stats()
    seconds = statistics.median(step() for _ in range(args.steps))
    tok_s = batch * T / seconds
    peak = peak_bf16_flops(torch.cuda.get_device_name())
    return dict(
        arm=arm, T=T, batch=batch, tok_s=tok_s, step_ms=seconds * 1e3,
        peak_gib=torch.cuda.max_memory_allocated() / GiB,
        warmup_s=(first_done - began) - seconds if mode != "eager" else None,
        mfu=tok_s * flops_per_token(config, T) / peak if peak else None,
    )  # fmt: skip


def lucidrains_rate(T: int, args) -> dict:
    """lucidrains/infini-transformer-pytorch at the same shape (delta rule, segment 1024, an MLP of the same
    width), trained the way its README does: its wrapper runs the segments and backward (memories detached every
    2 segments)."""
    from infini_transformer_pytorch import InfiniTransformer, InfiniTransformerWrapper

    fresh()
    c = config_from_preset(args.preset)
    torch.manual_seed(0)
    model = InfiniTransformer(
        num_tokens=c.vocab_size, dim=c.hidden_size, depth=c.num_hidden_layers, dim_head=c.head_dim,
        heads=c.num_attention_heads, use_mem_delta_rule=True, ff_mult=c.intermediate_size * 3 / (2 * c.hidden_size),
    ).cuda()  # fmt: skip
    wrapper = InfiniTransformerWrapper(model, segment_length=c.segment_len).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    batch = max(1, args.tokens // T)
    x = torch.randint(0, c.vocab_size, (batch, T + 1), device="cuda")

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            wrapper(x, backward=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    step()
    torch.cuda.reset_peak_memory_stats()
    seconds = statistics.median(step() for _ in range(2))  # seconds per step: two suffice
    return dict(arm="lucidrains-eager", T=T, batch=batch, tok_s=batch * T / seconds, step_ms=seconds * 1e3,
                peak_gib=torch.cuda.max_memory_allocated() / GiB, warmup_s=None, mfu=None)  # fmt: skip


@torch.no_grad()
def prefill(model, batch: int, context: int, chunk: int) -> tuple[tuple, dict]:
    """The state after `context` random tokens fed through `stream`; tokens/s and peak memory."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    state = None
    g = torch.Generator(device="cuda").manual_seed(context)
    start = time.perf_counter()
    for begin in range(0, context, chunk):
        ids = torch.randint(
            0, model.config.vocab_size, (batch, min(chunk, context - begin)), device="cuda", generator=g
        )
        _, state = model.stream(ids, state)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return state, dict(context=context, batch=batch, tok_s=batch * context / seconds,
                       peak_gib=torch.cuda.max_memory_allocated() / GiB)  # fmt: skip


@torch.no_grad()
def decode_rate(model, state, batch: int, steps: int) -> float:
    """Greedy tokens/s per sequence of the CUDA-graph decoder from `state` (compile and capture excluded)."""
    decoder = decoder_for(model, batch)
    decoder.load(state)
    token = torch.zeros(batch, 1, dtype=torch.long, device="cuda")
    for _ in range(8):
        token = decoder.step(token).argmax(-1, keepdim=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        token = decoder.step(token).argmax(-1, keepdim=True)
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


@torch.no_grad()
def generate_rate(model, prompt: torch.Tensor, short: int, long: int, **cache) -> float:
    """tokens/s of `model.generate` from the difference of a short and a long greedy run (prefill cancels)."""
    times = []
    for n in (short, long, short, long):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=0, **cache)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return (long - short) / (min(times[1::2]) - min(times[0::2]))


def decode_section(args, log) -> dict:
    fresh()
    torch.manual_seed(0)
    model = InfiniLlamaForCausalLM(config_from_preset(args.preset)).cuda().to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early, every run makes its tokens
    chunk = 8 * model.config.segment_len
    start = time.perf_counter()
    decoder_for(model, 1)
    out = dict(capture_s=time.perf_counter() - start, decode=[], prefill=[], generate=[])
    prefill(model, 1, 8 * chunk, chunk)  # warm-up: kernels loaded, clocks up
    for context in args.contexts:
        state, row = prefill(model, 1, context, chunk)
        out["prefill"].append(row)
        out["decode"].append(dict(context=context, batch=1, tok_s=decode_rate(model, state, 1, args.decode_steps)))
        log(f"decode after {context}: {out['decode'][-1]['tok_s']:.0f} tok/s; prefill {row['tok_s']:.0f} tok/s")
    for batch in args.batches:
        state, _ = prefill(model, batch, 4096, max(model.config.segment_len, chunk // batch))
        rate = decode_rate(model, state, batch, args.decode_steps)
        out["decode"].append(dict(context=4096, batch=batch, tok_s=rate, total_tok_s=rate * batch))
        log(f"decode batch {batch}: {rate:.0f} tok/s per sequence")
    prompt = torch.randint(0, model.config.vocab_size, (1, 4096), device="cuda")
    out["generate"].append(dict(who="infini generate", context=4096, tok_s=generate_rate(model, prompt, 16, 528)))
    del model
    fresh()
    torch.manual_seed(0)
    hf = hf_llama(config_from_preset(args.preset, attention="full")).cuda().to(torch.bfloat16).eval()
    hf.generation_config.eos_token_id = None
    out["generate"].append(dict(who="HF eager generate", context=4096, tok_s=generate_rate(hf, prompt, 8, 40)))
    return out


# The trainer's default command with only what shortens the run and its bookkeeping changed.
TRAINER_OVERRIDES = dict(steps=40, log_every=10, eval_every=0, eval_windows=1, save_every=0, keep=1,
                         progress=False, tensorboard=False)  # fmt: skip
GENERATE_SETTINGS = {
    "greedy": dict(do_sample=False),
    "top-p": dict(do_sample=True, top_p=0.9, top_k=0),
    "repetition_penalty=1.1": dict(do_sample=False, repetition_penalty=1.1),
    "min_new_tokens=256": dict(do_sample=False, min_new_tokens=256),
    "no_repeat_ngram_size=3": dict(do_sample=False, no_repeat_ngram_size=3),
}


def trainer_section(args, log) -> dict:
    """`infini-llama train --preset paper-300m`, no flags, as the CLI runs it (TRAINER_OVERRIDES aside)."""
    import tempfile

    from infini_llama.train import recipe, train
    from infini_llama.train.metrics import METRICS_FILE, read_metrics

    fresh()
    with tempfile.TemporaryDirectory() as folder:
        cfg = recipe("paper-300m", out=str(Path(folder) / "run"), **TRAINER_OVERRIDES)
        start = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - start
        run = json.loads((Path(folder) / "run" / "run.json").read_text())
        records = read_metrics(Path(folder) / "run" / METRICS_FILE, kind="train")
    steady = [r for r in records if r["step"] > cfg.log_every]  # the first window holds the first steps' extras
    row = dict(
        command="infini-llama train --preset paper-300m", overrides=TRAINER_OVERRIDES,
        batch_size=run["train"]["batch_size"], grad_accum=run["grad_accum"], micro_batch=run.get("micro_batch"),
        tok_s=statistics.median(r["tokens_per_s"] for r in steady),
        mfu=statistics.median(r["mfu"] for r in steady) if steady[0].get("mfu") is not None else None,
        peak_gib=max(r.get("peak_mem_gib") or 0 for r in steady), wall_s=wall,
    )  # fmt: skip
    log(f"trainer default: {row['tok_s']:.0f} tok/s, MFU {row['mfu']}, micro-batch {row['batch_size']}")
    return row


@torch.no_grad()
def settings_section(args, log) -> list[dict]:
    """`model.generate` tokens/s at batch 1 after each context for each of GENERATE_SETTINGS."""
    from infini_llama.models.cache import InfiniCache

    fresh()
    torch.manual_seed(0)
    model = InfiniLlamaForCausalLM(config_from_preset(args.preset)).cuda().to(torch.bfloat16).eval()
    vocab = model.config.vocab_size
    chunk = 8 * model.config.segment_len
    rows = []
    for context in args.contexts:
        ids = torch.randint(0, vocab, (1, context), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        state = None
        for begin in range(0, context - 1, chunk):
            _, state = model.stream(ids[:, begin : min(begin + chunk, context - 1)], state)
        for name, settings in GENERATE_SETTINGS.items():
            # An end-of-sequence token only where the setting needs one (min_new_tokens acts on it); random
            # weights rarely pick the last id, and the rate counts the tokens actually returned.
            eos = vocab - 1 if "min_new_tokens" in settings else None
            model.generation_config.eos_token_id = eos

            def run(n: int, state=state, ids=ids, context=context, settings=settings) -> tuple[float, int]:
                cache = InfiniCache(state, context - 1)
                torch.cuda.synchronize()
                start = time.perf_counter()
                out = model.generate(ids, cache=cache, max_new_tokens=n, pad_token_id=0, **settings)
                torch.cuda.synchronize()
                return time.perf_counter() - start, out.shape[1] - context

            try:
                runs = [run(n) for n in (16, args.settings_tokens, 16, args.settings_tokens)]
                (t_short, n_short), (t_long, n_long) = min(runs[0::2]), min(runs[1::2])
                rate = (n_long - n_short) / (t_long - t_short)
                row = dict(setting=name, context=context, batch=1, tok_s=rate, new_tokens=n_long)
            except Exception as exc:  # noqa: BLE001 - a setting that fails is reported, the others still run
                traceback.print_exc()
                row = dict(setting=name, context=context, batch=1, tok_s=None, error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            log(json.dumps(row))
    model.generation_config.eos_token_id = None
    return rows


def environment() -> dict:
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    import triton

    return dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=torch.cuda.get_device_name(),
        versions=dict(torch=torch.__version__, cuda=torch.version.cuda, triton=triton.__version__,
                      transformers=transformers.__version__, infini_llama=infini_llama.__version__),
        git=revision or None, python=platform.python_version(),
    )  # fmt: skip


def table(result: dict) -> str:
    """Training rows as arm × length (tokens/s, peak GiB, MFU), warm-up, then the decoding numbers."""
    rows = result["train"]
    lengths = sorted({r["T"] for r in rows})
    cell = {(r["arm"], r["T"]): r for r in rows}
    lines = ["tokens/s (peak GiB, MFU) | " + " | ".join(f"{T // 1024}K" for T in lengths) + " | warm-up s"]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        cells = []
        for T in lengths:
            r = cell.get((arm, T))
            if r is None or r.get("tok_s") is None:
                cells.append("-" if r is None else "failed")
            else:
                mfu = f", {r['mfu']:.2f}" if r.get("mfu") else ""
                cells.append(f"{r['tok_s'] / 1e3:.1f}K ({r['peak_gib']:.0f}{mfu})")
        warm = [r["warmup_s"] for r in rows if r["arm"] == arm and r.get("warmup_s") is not None]
        lines.append(f"{arm} | " + " | ".join(cells) + (f" | {max(warm):.0f}" if warm else " | -"))
    decode = result.get("decode", {})
    if "trainer_default" in result:
        r = result["trainer_default"]
        lines.append(f"trainer default: {json.dumps(r)}")
    for r in result.get("generate_settings", []):
        rate = "failed" if r.get("tok_s") is None else f"{r['tok_s']:.0f} tok/s"
        lines.append(f"generate {r['setting']} after {r['context']}: {rate}")
    for key in ("decode", "prefill", "generate"):
        for r in decode.get(key, []):
            lines.append(
                f"{key}: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
            )
    if "error" in decode:
        lines.append(f"decode failed: {decode['error']}")
    return "\n".join(lines)


def dry_run_plan(args, skip: set[str], wanted: list[tuple[str, int]]) -> dict:
    """What a run with these arguments measures, section by section (no GPU needed)."""
    plan = {}
    if "trainer" not in skip:
        plan["trainer"] = {"command": "infini-llama train --preset paper-300m", "overrides": TRAINER_OVERRIDES}
    if "settings" not in skip:
        plan["settings"] = [f"{name} after {context}" for context in args.contexts for name in GENERATE_SETTINGS]
    if "decode" not in skip:
        plan["decode"] = {"contexts": args.contexts, "batches": args.batches}
    if "train" not in skip:
        plan["train"] = [f"{arm}@{T}" for arm, T in wanted]
    if "lucidrains" not in skip:
        plan["lucidrains"] = args.lucidrains_lengths
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda text: [int(t) for t in text.split(",") if t]  # noqa: E731
    parser.add_argument("--preset", default="paper-300m")
    parser.add_argument("--lengths", type=ints, default=ints("2048,8192,16384,32768,65536"))
    parser.add_argument("--tokens", type=int, default=32768, help="tokens per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (median)")
    parser.add_argument("--arms", default="hf-eager,delta-default", help="rows at every length")
    parser.add_argument("--extra", default=EXTRA_ROWS, help="arm@length rows")
    parser.add_argument("--lucidrains-lengths", type=ints, default=ints("16384"))
    parser.add_argument("--contexts", type=ints, default=ints("4096,65536,1048576"))
    parser.add_argument("--batches", type=ints, default=ints("8,64"))
    parser.add_argument("--decode-steps", type=int, default=512)
    parser.add_argument("--settings-tokens", type=int, default=528, help="new tokens of the long generate run")
    parser.add_argument(
        "--skip", default="", help="sections to skip: trainer, settings, decode, train, lucidrains (comma-separated)"
    )
    parser.add_argument("--out", default="benchmarks/results/gpu.json")
    parser.add_argument("--dry-run", action="store_true", help="print the rows it would measure and exit")
    args = parser.parse_args()
    skip = set(args.skip.split(",")) - {""}
    unknown = skip - {"trainer", "settings", "decode", "train", "lucidrains"}
    if unknown:
        parser.error(
            f"--skip: unknown section(s) {sorted(unknown)}; choose from trainer, settings, decode, train, lucidrains"
        )
    wanted = [(arm, T) for T in args.lengths for arm in args.arms.split(",") if arm]
    wanted += [(item.split("@")[0], int(item.split("@")[1])) for item in args.extra.split(",") if item]
    if args.dry_run:
        print(json.dumps(dry_run_plan(args, skip, wanted), indent=1))
        return
    # The trainer's setting under bf16 on CUDA: the memory op's float32 matmuls on TF32 (HF Llama has none).
    torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(benchmark="gpu", **environment(), settings=vars(args), mfu_formula=MFU_FORMULA, train=[])

    def save() -> None:
        out.write_text(json.dumps(result, indent=2) + "\n")

    def log(text: str) -> None:
        print(text, flush=True)

    def run_row(fn, *fn_args) -> None:
        try:
            row = fn(*fn_args)
        except Exception as exc:  # noqa: BLE001 - a row that fails is reported, the others still run
            traceback.print_exc()
            row = dict(arm=fn_args[0] if isinstance(fn_args[0], str) else "lucidrains-eager", T=fn_args[-2],
                       tok_s=None, error=f"{type(exc).__name__}: {str(exc)[:200]}")  # fmt: skip
        result["train"].append(row)
        log(json.dumps(row))
        save()

    if "trainer" not in skip:
        try:
            result["trainer_default"] = trainer_section(args, log)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            result["trainer_default"] = dict(error=f"{type(exc).__name__}: {str(exc)[:300]}")
        save()
    if "settings" not in skip:
        result["generate_settings"] = settings_section(args, log)
        save()
    if "decode" not in skip:  # first: its compile and capture are its own, and it needs no training warm-up
        try:
            result["decode"] = decode_section(args, log)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            result["decode"] = dict(error=f"{type(exc).__name__}: {str(exc)[:300]}")
        save()
    if "train" not in skip:
        for arm, T in wanted:
            run_row(train_rate, arm, T, args)
    if "lucidrains" not in skip:
        for T in args.lucidrains_lengths:
            run_row(lucidrains_rate, T, args)
    print(table(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
