"""Scores of retrieval answers, and binomial confidence intervals."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_INTEGER = re.compile(r"\d+")


def first_integer(text: str) -> str | None:
    """The first run of digits in `text`, as written (None when there is none)."""
    match = _INTEGER.search(text)
    return match.group(0) if match else None


def passkey_scores(
    prediction: str, key: str, predicted_ids: Sequence[int], answer_ids: Sequence[int], digit_acc: float
) -> dict:
    """All passkey scores of one sample.

    exact: the first integer of the prediction is the key ("12345678" for key "1234" is wrong, leading spaces
    do not matter); token_exact: the generated ids are the answer's ids; contains: the key is a substring of the
    prediction (what the Hugging Face / nanotron study reports); digit_acc: share of answer tokens predicted
    right under teacher forcing (our reading of "token-level retrieval accuracy").
    """
    return {
        "exact": first_integer(prediction) == key,
        "token_exact": list(predicted_ids) == list(answer_ids),
        "contains": key in prediction,
        "digit_acc": float(digit_acc),
    }


def string_match_all(prediction: str, expected: Sequence[str]) -> float:
    """Fraction of `expected` strings found in `prediction`, case-insensitively (RULER's "string match all")."""
    if not expected:
        raise ValueError("expected must hold at least one string")
    text = prediction.lower()
    return sum(value.lower() in text for value in expected) / len(expected)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for z = 1.96); (0, 1) when n = 0."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: int, n: int) -> dict:
    """{successes, n, rate, ci_low, ci_high} with the Wilson 95% interval."""
    low, high = wilson_interval(successes, n)
    return {
        "successes": successes,
        "n": n,
        "rate": successes / n if n else float("nan"),
        "ci_low": low,
        "ci_high": high,
    }


def mean_and_stderr(values: Sequence[float]) -> dict:
    """{mean, stderr, n} of fractional scores (standard error of the mean; 0 for one value)."""
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "stderr": float("nan"), "n": 0}
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "stderr": math.sqrt(var / n), "n": n}
