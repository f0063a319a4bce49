"""Where segment boundaries cut the needle in the paper-h200 grids (classic filler, the study's tokenizer, segments
of 1,024): per split, length and depth, the needle tokens before the boundary in each prompt it cuts. The model
plays no part, so this is the same for every run. CPU, seconds. Writes grid_cuts.json next to this file.

    python reports/paper-h200-screen/grid_cuts.py
"""

import json
from pathlib import Path

from infini_llama.data import load_tokenizer
from infini_llama.eval.passkey import GRID_SPLITS, make_passkey_sample

HERE = Path(__file__).parent
SEGMENT = 1024
LENGTHS = (1024, 2048, 4096, 8192, 16384)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
SAMPLES = 16


def main() -> None:
    tokenizer = load_tokenizer(None, vocab_size=49152)
    result = {}
    for split in ("validation", "test"):
        for length in LENGTHS:
            for depth in DEPTHS:
                cuts = []
                for index in range(SAMPLES):
                    sample = make_passkey_sample(
                        tokenizer, length, depth, seed=0, index=index, stream=GRID_SPLITS[split], key_digits=4,
                        haystack="repeat",
                    )  # fmt: skip
                    boundary = (sample.needle_start // SEGMENT + 1) * SEGMENT
                    if boundary < sample.needle_end:
                        cuts.append(boundary - sample.needle_start)
                if cuts:
                    result.setdefault(split, {}).setdefault(str(length), {})[str(depth)] = {
                        "prompts_cut": len(cuts),
                        "needle_tokens_before_the_boundary": sorted(set(cuts)),
                    }
    (HERE / "grid_cuts.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
