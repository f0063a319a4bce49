"""The README's headline tables, made from the reports' results.json, so that the numbers cannot drift.

A headline block in a Markdown file is the table between a line `<!-- headline: SOURCE -->` and a line
`<!-- /headline -->`. SOURCE is a study's report folder (the table: the across-seed means of its results.json, from
the training length on, or from another multiple of it with `<!-- headline: SOURCE from=0.5 -->`; with `per-seed`
after it, each seed's number in every cell instead of the mean, for a study whose seeds disagree) or
a benchmark's JSON file (`benchmarks/bench_gpu.py`'s: the trainer's default command, training against HF Llama
and `model.generate` with each common setting). The test suite checks every block against its JSON;
`python -m infini_llama.study.headline README.md` rewrites them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from infini_llama.eval.markdown import table

BLOCK = re.compile(
    r"(?P<open><!-- headline: (?P<source>[^ ]+)(?: from=(?P<first>[0-9.]+))?(?P<per_seed> per-seed)? -->\n)"
    r"(?P<table>.*?)(?P<end><!-- /headline -->)",
    re.DOTALL,
)
# Row labels of a study's results -> how the headline names them, in this order; a study shows those it has.
ROWS = {
    "infini": "Infini",
    "full": "full attention",
    "full (RoPE dynamic NTK)": "full attention + dynamic NTK RoPE",
    "full (RoPE YaRN ×length)": "full attention + YaRN RoPE, factor = length",
    "infini (memory off)": "Infini, memory off",
}


def headline_table(results: dict, haystack: str = "repeat", first: float = 1.0, per_seed: bool = False) -> str:
    """Exact match % on `haystack` at every length from `first` times the training length on, for each row of ROWS
    the study has: the mean over the seeds, or with `per_seed` each seed's, "a / b" in the seeds' order."""
    by_label = {row["label"]: row for row in results["rows"]}
    multiples = [x["multiple"] for x in by_label["infini"]["haystacks"][haystack] if x["multiple"] >= first]
    seeds = [str(seed) for seed in results["seeds"]]

    def cell(exact: dict) -> str:
        if not per_seed:
            return f"{100 * exact['mean']:.0f}"
        values = (exact["per_seed"].get(seed) for seed in seeds)
        return " / ".join("–" if value is None else f"{100 * value:.0f}" for value in values)

    lines = []
    for label, name in ROWS.items():
        if label in by_label:
            lengths = {x["multiple"]: x for x in by_label[label]["haystacks"][haystack]}
            lines.append([name] + [cell(lengths[m]["exact"]) for m in multiples])
    first_column = f"arm: seed {' / '.join(seeds)}" if per_seed else "arm"
    return "\n".join(table([first_column] + [f"{m:g}×" for m in multiples], lines)) + "\n"


def _thousands(tok_s: float) -> str:
    return f"{tok_s / 1e3:.1f}K"


def gpu_table(bench: dict) -> str:
    """The trainer's default command, the Infini arm against HF Llama (eager) at the longest training length both
    ran, and `model.generate` tokens/s at batch 1 for each setting after each context, from bench_gpu's JSON."""
    default = bench["trainer_default"]
    rate = f"{_thousands(default['tok_s'])} tokens/s, MFU {default['mfu']:.2f}"
    lines = [[f"`{default['command']}`, no flags", rate]]
    rates = {(row["arm"], row["T"]): row["tok_s"] for row in bench["train"]}
    longest = max(T for arm, T in rates if arm == "delta-default" and ("hf-eager", T) in rates)
    ours, hf = rates["delta-default", longest], rates["hf-eager", longest]
    lines.append([f"training at {longest // 1024}K tokens: Infini arm / HF Llama eager",
                  f"{_thousands(ours)} / {_thousands(hf)} tokens/s ({ours / hf:.2f}×)"])  # fmt: skip
    settings: dict[str, dict[int, float]] = {}
    for row in bench["generate_settings"]:
        settings.setdefault(row["setting"], {})[row["context"]] = row["tok_s"]
    contexts = sorted({c for by_context in settings.values() for c in by_context})
    names = " / ".join(f"{c // 1024}K" if c < 2**20 else f"{c // 2**20}M" for c in contexts)
    for name, by_context in settings.items():
        lines.append([f"`model.generate`, {name}, after {names} tokens",
                      " / ".join(f"{by_context[c]:,.0f}" for c in contexts) + " tokens/s"])  # fmt: skip
    hf_generate = [row for row in bench["decode"]["generate"] if row["who"].startswith("HF")]
    for row in hf_generate:
        lines.append([f"HF Llama's `generate` (KV cache), greedy, after {row['context'] // 1024}K tokens",
                      f"{row['tok_s']:,.0f} tokens/s"])  # fmt: skip
    return "\n".join(table([f"{bench['device']}, `{bench['settings']['preset']}`", "measured"], lines)) + "\n"


def render(text: str, root: Path) -> str:
    """`text` with every headline block's table made anew from its source's JSON (paths under `root`)."""

    def fill(match: re.Match) -> str:
        source = root / match["source"]
        if source.suffix == ".json":
            made = gpu_table(json.loads(source.read_text()))
        else:
            first = float(match["first"] or 1.0)
            results = json.loads((source / "results.json").read_text())
            made = headline_table(results, first=first, per_seed=bool(match["per_seed"]))
        return match["open"] + made + match["end"]

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infini_llama.study.headline",
        description="Rewrite the headline tables of Markdown files from their sources' JSON.",
        epilog="example: python -m infini_llama.study.headline README.md",
    )
    parser.add_argument("files", nargs="*", type=Path, default=[Path("README.md")],
                        help="Markdown files with headline blocks (default: README.md)")  # fmt: skip
    paths = parser.parse_args(argv).files
    for path in paths:
        if not path.is_file():
            parser.error(f"no such file: {path}")
        path.write_text(render(path.read_text(), path.parent))
        print(f"headline tables of {path} made from their results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
