"""How much the embedded corpus gives a vocabulary: tokens, rare types and n-gram baselines per vocabulary size.

The `paper-300m` model keeps the study's 49,152-token vocabulary, which the project's BPE learns from the embedded
corpus (16 MB of text). This script counts what each vocabulary size makes of that corpus, and scores two models
with no parameters to tune on the validation split: the unigram (add-one) and the interpolated bigram (absolute
discounting, d = 0.75), in nats per token and per character, so that losses under different vocabularies compare.

    python reports/paper-h200-screen/corpus_stats.py            # writes corpus_stats.json beside this file
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from infini_llama.data import load_tokenizer, prepare_tokens

DISCOUNT = 0.75
RARE = 10  # a type seen fewer times than this in training


def ngram_baselines(train: np.ndarray, val: np.ndarray, vocab: int) -> dict[str, float]:
    """Validation cross-entropy (nats per token) of the add-one unigram and the interpolated bigram."""
    unigram = np.bincount(train, minlength=vocab) + 1.0
    unigram /= unigram.sum()
    pairs, counts = np.unique(train[:-1] * vocab + train[1:], return_counts=True)
    previous = pairs // vocab
    context = np.bincount(previous, weights=counts, minlength=vocab)  # occurrences of each token as a context
    followers = np.bincount(previous, minlength=vocab)  # distinct tokens seen after it
    asked = val[:-1] * vocab + val[1:]
    at = np.minimum(np.searchsorted(pairs, asked), len(pairs) - 1)
    seen = np.where(pairs[at] == asked, counts[at], 0).astype(np.float64)
    total = context[val[:-1]]
    known = total > 0
    left = np.where(known, DISCOUNT * followers[val[:-1]] / np.maximum(total, 1), 1.0)
    bigram = np.where(known, np.maximum(seen - DISCOUNT, 0) / np.maximum(total, 1), 0.0) + left * unigram[val[1:]]
    return {"unigram": float(-np.log(unigram[val]).mean()), "bigram": float(-np.log(bigram).mean())}


def vocabulary_stats(vocab_size: int) -> dict:
    tokenizer = load_tokenizer(None, vocab_size=vocab_size)
    data = prepare_tokens(tokenizer, show_progress=False)
    train = np.asarray(data.train).astype(np.int64)
    val = np.asarray(data.validation).astype(np.int64)
    vocab = len(tokenizer)
    seen = np.bincount(train, minlength=vocab)
    chars = sum(len(tokenizer.decode(val[i : i + 100_000].tolist())) for i in range(0, len(val), 100_000))
    per_token = ngram_baselines(train, val, vocab)
    return {
        "vocab_size": vocab,
        "train_tokens": len(train),
        "validation_tokens": len(val),
        "validation_chars_per_token": round(chars / len(val), 4),
        "types_unseen_in_training": int((seen == 0).sum()),
        f"types_seen_under_{RARE}_times": int((seen < RARE).sum()),
        "nats_per_token": {k: round(v, 4) for k, v in per_token.items()},
        "nats_per_char": {k: round(v * len(val) / chars, 4) for k, v in per_token.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-sizes", default="8192,49152", help="comma-separated (mini's, paper-300m's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("corpus_stats.json"))
    args = parser.parse_args()
    rows = [vocabulary_stats(int(v)) for v in args.vocab_sizes.split(",")]
    args.out.write_text(json.dumps({"discount": DISCOUNT, "vocabularies": rows}, indent=2) + "\n")
    print("| vocab | train tokens | chars/token | types seen < 10x | unigram | bigram | (nats/token; per char) |")
    for r in rows:
        t, c = r["nats_per_token"], r["nats_per_char"]
        print(f"| {r['vocab_size']:,} | {r['train_tokens']:,} | {r['validation_chars_per_token']:.2f} | "
              f"{r[f'types_seen_under_{RARE}_times']:,} | {t['unigram']:.2f}; {c['unigram']:.3f} | "
              f"{t['bigram']:.2f}; {c['bigram']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
