"""How many packed fine-tuning prompts per sequence each pair of shares moves to a segment boundary, at the
paper-h200 fine-tuning (4,096 tokens, default packing, segments of 1,024, the study's tokenizer), and how often a
random packing cuts a needle by chance. CPU, a minute. Writes packing_rates.json next to this file.

    python reports/paper-h200-screen/packing_rates.py
"""

import json
from pathlib import Path

from infini_llama.data import load_tokenizer
from infini_llama.eval.passkey import TRAIN_STREAM
from infini_llama.train.passkey import PasskeyBatchSource

HERE = Path(__file__).parent
SEQUENCES = 200
SEGMENT = 1024


def main() -> None:
    tokenizer = load_tokenizer(None, vocab_size=49152)
    rows = []
    for shares in ((0.0, 0.0), (0.5, 0.0), (0.25, 0.25), (0.5, 0.3), (0.5, 0.5), (0.3, 0.7), (0.0, 1.0)):
        source = PasskeyBatchSource(
            tokenizer, 4096, 8, key_digits=4, loss="answer", segment_len=SEGMENT, boundary_share=shares[0],
            needle_boundary_share=shares[1],
        )  # fmt: skip
        parts = question = needle = cut_by_chance = 0
        for index in range(SEQUENCES):
            ids, answers, moved = source._packed(TRAIN_STREAM, index)
            starts = [1] + [answer[-1] + 2 for answer in answers[:-1]]
            ends = [*starts[1:], len(ids)]
            parts += len(answers)
            question += sum(kind == "question" for kind in moved.values())
            needle += sum(kind == "needle" for kind in moved.values())
            for part, (start, end) in enumerate(zip(starts, ends, strict=True)):
                if part not in moved:
                    _, _, (first, last) = source._part(TRAIN_STREAM, (index << 20) | part, end - start)
                    cut_by_chance += (start + first) // SEGMENT != (start + last - 1) // SEGMENT
        rows.append(
            {
                "boundary_share": shares[0],
                "needle_boundary_share": shares[1],
                "parts_per_sequence": round(parts / SEQUENCES, 3),
                "answers_moved_to_a_boundary_per_sequence": round(question / SEQUENCES, 3),
                "needles_cut_by_the_share_per_sequence": round(needle / SEQUENCES, 3),
                "needles_cut_by_chance_per_sequence": round(cut_by_chance / SEQUENCES, 3),
            }
        )
        print(rows[-1])
    (HERE / "packing_rates.json").write_text(json.dumps({"sequences": SEQUENCES, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
