"""Is the needle near the start hard because it is near the prompt's start, or because it follows the task line?

    python reports/tiny-depth/lead.py run CHECKPOINT [--lengths 1024,2048] [--leads 0,16,...,512] [--samples 64]
        [--seed 3] --out lead.json
    python reports/tiny-depth/lead.py plot LABEL=lead.json [LABEL=lead.json ...] --figure lead.png

For each key of a test grid (classic filler, needle right after the task line: depth 0), the prompt's blocks are
reordered in two ways, each adding `lead` tokens of classic filler:

- `filler, then task`: the filler goes before the task line, so the needle still follows the task line but sits
  `lead` tokens further from the start;
- `task, then filler`: the filler goes between the task line and the needle, so the needle is as far from the start
  but no longer next to the task line.

Everything after the needle (the filler and the question) is the depth-0 prompt's own, so the number of memory
updates between the key and the question is the same in both orders and at every lead. Answers are scored as in
`infini-llama eval passkey` (greedy, exact match), with intervals at the level of the key.

Each prompt is also run once through the parallel forward to read what the memory holds of the key: per layer and
query head, the key tokens' share of the last prompt token's linear-attention weights over every finished segment
(`read_share`), and how close the vectors σ(k) the key is stored under are to those the same key gets at the
largest lead of `task, then filler` (`key_cosine_to_farthest`, per layer; that order keeps the prompt's start as
fine-tuning's prompts have it). `plot` draws exact match by needle start and prints the tables, with the
share of the head whose mean share is largest (the retrieval head).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
from pathlib import Path

import torch
from positions import exact  # the sibling script: exact match with its key-level interval

from infini_llama.eval.checkpoint import load_eval_tokenizer, load_model
from infini_llama.eval.inference import ChunkedLM
from infini_llama.eval.passkey import TASK, make_passkey_sample
from infini_llama.eval.passkey_grid import GRID_SPLITS, evaluate_passkey
from infini_llama.eval.prompts import FILLER_BLOCK, bos_ids, encode, encode_continuation, last_token_of
from infini_llama.ops.state import elu_plus_one

ORDERS = ("filler, then task", "task, then filler")


def filler_ids(tokenizer, tokens: int) -> list[int]:
    """Exactly `tokens` ids of classic filler (none for 0): whole sentences, cycling through the block, after the
    tail of one (the filler starts inside a sentence, as a window cut from running text does), so that every lead
    that is a multiple of the segment keeps the needle where segment boundaries fall on it at lead 0."""
    ids: list[int] = []
    sentence = 0
    while len(ids) < tokens:
        ids += encode_continuation(tokenizer, FILLER_BLOCK[sentence % len(FILLER_BLOCK)])
        sentence += 1
    return ids[len(ids) - tokens :]


def reordered(tokenizer, base, lead: int, order: str, segment_len: int):
    """The depth-0 sample `base` with `lead` filler tokens put in front of (`filler, then task`) or behind
    (`task, then filler`) its task line; returns the new sample, whether a segment boundary cuts a key copy, and
    the positions of the key's tokens (both copies)."""
    bos = bos_ids(tokenizer, None)
    head = base.input_ids[: base.needle_start]  # [BOS] task line
    task_alone = bos + encode(tokenizer, TASK)
    if head != task_alone:
        raise SystemExit("the depth-0 prompt does not start with the task line right before its needle")
    rest = base.input_ids[base.needle_start :]
    fill = filler_ids(tokenizer, lead)
    if order == ORDERS[0] and fill:
        # The filler now starts the document; the task line follows a sentence, as it reads in running text.
        front = bos + fill + encode_continuation(tokenizer, " " + TASK)
    else:
        front = head + fill
    ids = front + rest
    start = len(front)
    end = start + (base.needle_end - base.needle_start)
    sample = dataclasses.replace(
        base, input_ids=ids, length=len(ids), needle_start=start, needle_end=end,
        key_last_token=last_token_of(tokenizer, ids, start, end, base.key), text="",
    )  # fmt: skip
    digits = base.answer_ids[1:]
    copies = [i for i in range(start, end) if ids[i : i + len(digits)] == digits]
    if len(copies) != 2:
        raise SystemExit(f"could not find the key's two copies in the reordered prompt of sample {base.index}")
    cut = any(i // segment_len != (i + len(digits) - 1) // segment_len for i in copies)
    key_tokens = [i + j for i in copies for j in range(len(digits))]
    return sample, cut, key_tokens


@torch.no_grad()
def probe(model, samples, key_tokens: list[list[int]], segment_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the memory holds of the key, from one parallel forward of each prompt, per Infini layer:
    σ(k) at the key's tokens (N, layers, Hkv, tokens, D), the vectors the memory stores the key under; and each
    query head's read share of the key at the last prompt token (N, layers, Hq): σ(q)·Σ σ(k_key) / σ(q)·z, the
    key tokens' share of that query's linear-attention weights over all finished segments (for the linear update
    the share of its read that comes from the key; for the delta rule an indication)."""
    layers = [m for m in model.modules() if hasattr(m, "memory_gate")]
    captured: dict[int, dict[str, torch.Tensor]] = {}

    def hook(index, name):
        def save(module, inputs, output):
            captured.setdefault(index, {})[name] = output

        return save

    handles = [
        proj.register_forward_hook(hook(i, name))
        for i, layer in enumerate(layers)
        for name, proj in (("q", layer.q_proj), ("k", layer.k_proj))
    ]  # fmt: skip
    keys, shares = [], []
    try:
        for sample, tokens in zip(samples, key_tokens, strict=True):
            ids = torch.tensor([sample.input_ids], device=next(model.parameters()).device)
            model(input_ids=ids)
            finished = (len(sample.input_ids) - 1) // segment_len * segment_len  # tokens in finished segments
            per_layer_keys, per_layer_shares = [], []
            for i, layer in enumerate(layers):
                H, Hkv, D = layer.num_heads, layer.num_kv_heads, layer.head_dim
                q = elu_plus_one(captured[i]["q"][0, -1].view(H, D).double())
                k = elu_plus_one(captured[i]["k"][0, :finished].view(finished, Hkv, D).transpose(0, 1).double())
                k = k.repeat_interleave(H // Hkv, dim=0)  # (H, finished, D)
                weights = torch.einsum("hd,htd->ht", q, k)
                per_layer_shares.append(weights[:, tokens].sum(-1) / weights.sum(-1))
                per_layer_keys.append(k[:: H // Hkv, tokens])
            keys.append(torch.stack(per_layer_keys))
            shares.append(torch.stack(per_layer_shares))
    finally:
        for h in handles:
            h.remove()
    return torch.stack(keys), torch.stack(shares)


def run(args) -> None:
    model = load_model(args.checkpoint)
    tokenizer = load_eval_tokenizer(args.checkpoint)
    segment_len = model.config.segment_len
    runner = ChunkedLM(model)
    leads = [int(x) for x in args.leads.split(",")]
    cells, keys = [], []
    for length in (int(x) for x in args.lengths.split(",")):
        bases = [
            make_passkey_sample(tokenizer, length, 0.0, seed=args.seed, index=i, stream=GRID_SPLITS["test"])
            for i in range(args.samples)
        ]  # fmt: skip
        for lead in leads:
            for order in ORDERS if lead else ORDERS[:1]:
                samples, cuts, key_tokens = zip(
                    *(reordered(tokenizer, b, lead, order, segment_len) for b in bases), strict=True
                )
                rows = evaluate_passkey(runner, tokenizer, samples, args.batch_size, segment_len)
                key_vectors, shares = probe(model, samples, key_tokens, segment_len)
                keys.append(key_vectors)
                cell = {
                    "length": length,
                    "lead_tokens": len(samples[0].input_ids) - length,
                    "order": order if lead else ORDERS[0],
                    "needle_start": sorted({s.needle_start for s in samples}),
                    "memory_updates": sorted({r["memory_updates"] for r in rows}),
                    "key_copy_cut_share": sum(cuts) / len(cuts),
                    "exact": exact(rows),
                    "read_share": shares.mean(0).tolist(),  # (layers, heads), mean over prompts
                    "samples": [{"sample": r["sample"], "key": r["key"], "prediction": r["prediction"],
                                 "exact": r["exact"], "read_share": share.tolist()}
                                for r, share in zip(rows, shares, strict=True)],
                }  # fmt: skip
                cells.append(cell)
                e = cell["exact"]
                print(
                    f"{length:>5} {cell['order']:<18} lead {cell['lead_tokens']:>4}  needle at "
                    f"{cell['needle_start'][0]:>4}  updates {cell['memory_updates']}  exact "
                    f"{100 * e['rate']:5.1f}% ({e['successes']}/{e['n']})  read share of the key, best head per "
                    f"layer: {' '.join(f'{max(layer):.3f}' for layer in cell['read_share'])}",
                    flush=True,
                )
    # How close each cell's key vectors are to those the same key gets farthest from the start with the prompt still
    # starting with its task line (`task, then filler`, the order fine-tuning's prompts have), at the same length.
    for cell, vectors in zip(cells, keys, strict=True):
        farthest = max(
            (i for i, c in enumerate(cells) if c["length"] == cell["length"] and c["order"] == ORDERS[1]),
            key=lambda i: cells[i]["lead_tokens"],
        )  # fmt: skip
        cosine = torch.nn.functional.cosine_similarity(vectors, keys[farthest], dim=-1)  # (N, layers, Hkv, tokens)
        cell["key_cosine_to_farthest"] = cosine.mean(dim=(0, 2, 3)).tolist()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = {"checkpoint": str(args.checkpoint), "seed": args.seed, "samples": args.samples,
              "segment_len": segment_len, "commit": commit, "torch": torch.__version__}  # fmt: skip
    write(args.out, header, cells)


def write(path: Path, header: dict, cells: list[dict]) -> None:
    """The header and one cell per line, shares to four decimals (the per-prompt rows make the file large)."""

    def rounded(x):
        if isinstance(x, float):
            return round(x, 4)
        if isinstance(x, list):
            return [rounded(y) for y in x]
        if isinstance(x, dict):
            return {k: rounded(v) for k, v in x.items()}
        return x

    lines = [json.dumps(rounded(cell)) for cell in cells]
    body = json.dumps(header, indent=1)[:-2] + ',\n "cells": [\n' + ",\n".join(lines) + "\n ]\n}\n"
    path.write_text(body)


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(label, json.loads(Path(path).read_text())) for label, _, path in (x.partition("=") for x in args.runs)]
    lengths = sorted({c["length"] for _, r in runs for c in r["cells"]})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.6 * len(lengths) + 2.4, 3.6), squeeze=False, sharey=True)
    for ax, length in zip(axes[0], lengths, strict=True):
        for n, (label, r) in enumerate(runs):
            for order, style in zip(ORDERS, ("-", "--"), strict=True):
                cells = [
                    c for c in r["cells"] if c["length"] == length and (c["order"] == order or not c["lead_tokens"])
                ]
                cells.sort(key=lambda c: c["lead_tokens"])
                ax.plot(
                    [c["needle_start"][0] for c in cells], [100 * c["exact"]["rate"] for c in cells], style,
                    color=f"C{n}", marker=".", label=f"{label}: {order}",
                )  # fmt: skip
        ax.set(title=f"{length:,} tokens after the lead", xlabel="token where the needle starts", ylim=(-3, 103))
    axes[0][0].set_ylabel("exact match (%)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(args.figure, dpi=110)
    table_leads = {int(x) for x in args.table_leads.split(",")}
    print("Exact match (key-level count) and the retrieval head's read share of the key (mean over prompts):\n")
    print("| model | length | lead | needle at | updates | filler, then task | task, then filler |")
    print("|---|---|---|---|---|---|---|")
    for label, r in runs:
        layer, head = retrieval_head(r)
        for length in lengths:
            for lead in sorted({c["lead_tokens"] for c in r["cells"] if c["length"] == length} & table_leads):
                here = [c for c in r["cells"] if c["length"] == length and c["lead_tokens"] == lead]
                by_order = {c["order"]: c for c in here}
                cell = here[0]
                row = [_cell(by_order.get(o) if lead else cell, layer, head) for o in ORDERS]
                print(
                    f"| {label} | {length:,} | {lead} | {cell['needle_start'][0]} | {cell['memory_updates'][0]} | "
                    + " | ".join(row)
                    + " |"
                )
    shares_by_answer(runs)


def retrieval_head(run: dict) -> tuple[int, int]:
    """(layer, head) whose read share of the key, averaged over every cell, is the largest."""
    layers = len(run["cells"][0]["read_share"])
    heads = len(run["cells"][0]["read_share"][0])
    mean = [
        [sum(c["read_share"][layer][h] for c in run["cells"]) / len(run["cells"]) for h in range(heads)]
        for layer in range(layers)
    ]  # fmt: skip
    return max(((layer, h) for layer in range(layers) for h in range(heads)), key=lambda lh: mean[lh[0]][lh[1]])


def _cell(cell: dict | None, layer: int, head: int) -> str:
    if cell is None:
        return "–"
    e = cell["exact"]
    return f"{100 * e['rate']:.0f}% ({e['successes']}/{e['n']}), {cell['read_share'][layer][head]:.2f}"


def shares_by_answer(runs: list[tuple[str, dict]]) -> None:
    print("\n| model | length | retrieval head (layer.head) | key's read share, exact answers | wrong answers |")
    print("|---|---|---|---|---|")
    for label, r in runs:
        layer, head = retrieval_head(r)
        for length in sorted({c["length"] for c in r["cells"]}):
            rows = [s for c in r["cells"] if c["length"] == length for s in c["samples"]]
            cells = []
            for hit in (True, False):
                values = [s["read_share"][layer][head] for s in rows if bool(s["exact"]) == hit]
                cells.append(f"{sum(values) / len(values):.2f} ({len(values)})" if values else "–")
            print(f"| {label} | {length:,} | {layer + 1}.{head + 1} | {cells[0]} | {cells[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="evaluate one checkpoint")
    one.add_argument("checkpoint")
    one.add_argument("--lengths", default="1024,2048", help="lengths of the depth-0 prompts, before the lead")
    one.add_argument(
        "--leads",
        default="0,16,32,48,64,96,128,192,256,384,512",
        help="filler tokens added (multiples of the segment keep its boundaries where they cut the needle)",
    )
    one.add_argument("--samples", type=int, default=64, help="keys per length")
    one.add_argument("--seed", type=int, default=3, help="the test grid's seed")
    one.add_argument("--batch-size", type=int, default=16)
    one.add_argument("--out", type=Path, required=True)
    many = sub.add_parser("plot", help="figure and table from runs' JSON")
    many.add_argument("runs", nargs="+", help="LABEL=JSON")
    many.add_argument("--figure", type=Path, required=True)
    many.add_argument("--table-leads", default="0,64,128,256,512", help="the leads the table shows")
    args = parser.parse_args()
    run(args) if args.command == "run" else plot(args)


if __name__ == "__main__":
    main()
