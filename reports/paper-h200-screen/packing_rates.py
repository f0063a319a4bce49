"""How many packed fine-tuning prompts per sequence each pair of shares moves to a segment boundary, at the
paper-h200 fine-tuning (4,096 tokens, default packing, segments of 1,024, the study's tokenizer), how often a
random packing cuts a needle by chance, and where the share's cuts fall in the needle (`needle_cut_bucket`: after
how many of its tokens). CPU, about two minutes. Writes packing_rates.json next to this file.

    python reports/paper-h200-screen/packing_rates.py

packing_rates-lease-E.json holds the same counts for the data lease E trained on (commit 2cf5a0f, where a cut
needle's part was moved whole between its neighbours: only middle parts, far fewer cuts).
"""

import json
from collections import Counter
from pathlib import Path

from infini_llama.data import load_tokenizer
from infini_llama.eval.diagnostics import needle_cut_bucket, needle_cut_order
from infini_llama.eval.passkey import TRAIN_STREAM, sample_rng
from infini_llama.train.passkey import PasskeyBatchSource

HERE = Path(__file__).parent
SEQUENCES = 200
SEGMENT = 1024


def main() -> None:
    tokenizer = load_tokenizer(None, vocab_size=49152)
    rows = []
    for shares in ((0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.3, 0.7), (0.0, 1.0)):
        source = PasskeyBatchSource(
            tokenizer, 4096, 8, key_digits=4, loss="answer", segment_len=SEGMENT, boundary_share=shares[0],
            needle_boundary_share=shares[1],
        )  # fmt: skip
        parts = question = cut_by_chance = 0
        cuts = Counter()
        for index in range(SEQUENCES):
            # As `_packed` does, keeping the parts built with their needle at a boundary (`built`).
            lengths = source._part_lengths(sample_rng(TRAIN_STREAM, source.seed, index, "part_lengths"), 1.0)
            built = {}
            moved = source._aligned(TRAIN_STREAM, index, lengths, 1.0, shares, built) if any(shares) else {}
            parts += len(lengths)
            question += sum(kind == "question" for kind in moved.values())
            start = 1  # after BOS
            for part, length in enumerate(lengths):
                if moved.get(part) == "needle":
                    first, last = built[part][2]
                    cuts[needle_cut_bucket(start + first, start + last, SEGMENT)] += 1
                elif part not in moved:
                    first, last = source._part(TRAIN_STREAM, (index << 20) | part, length)[2]
                    cut_by_chance += (start + first) // SEGMENT != (start + last - 1) // SEGMENT
                start += length
        rows.append(
            {
                "boundary_share": shares[0],
                "needle_boundary_share": shares[1],
                "parts_per_sequence": round(parts / SEQUENCES, 3),
                "answers_moved_to_a_boundary_per_sequence": round(question / SEQUENCES, 3),
                "needles_cut_by_the_share_per_sequence": round(sum(cuts.values()) / SEQUENCES, 3),
                "needles_cut_by_chance_per_sequence": round(cut_by_chance / SEQUENCES, 3),
                "share_cuts_per_sequence_by_tokens_before_the_cut": {
                    bucket: round(cuts[bucket] / SEQUENCES, 3) for bucket in sorted(cuts, key=needle_cut_order)
                },
            }
        )
        print(rows[-1])
    (HERE / "packing_rates.json").write_text(json.dumps({"sequences": SEQUENCES, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
