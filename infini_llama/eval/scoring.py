"""Scores of retrieval answers, and binomial confidence intervals."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence

import numpy as np

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


def answer_digits(prediction: str, key: str) -> dict:
    """What a passkey answer holds of the key's digits, right or wrong: of the prediction's first integer
    (`first_integer`), whether its first digit is the key's (`first`); whether it is the key's digits, each as often
    as in the key, in another order (`reordered`); and of its first len(key) digits (`digits`), how many occur in the
    key at all (`from_key`). A model that has learned which digits the key holds but not in which order answers with
    them reordered or repeated: `from_key` high and `first` or exact match low."""
    answer = first_integer(prediction) or ""
    head = answer[: len(key)]
    return {
        "first": bool(answer) and answer[0] == key[:1],
        "reordered": answer != key and sorted(answer) == sorted(key),
        "from_key": sum(digit in key for digit in head),
        "digits": len(head),
    }


def chance_from_key(key: str) -> float:
    """The share of digits drawn uniformly from 0-9 that occur in `key` (`answer_digits`' from_key per digit)."""
    return len(set(key)) / 10


def which_digits_loss(key_digits: int) -> float:
    """The loss per digit, in nats, of a model that knows which digits a key holds but not their order and weighs
    them alike: the mean of ln(the key's distinct digits) over the keys `passkey.draw_key` draws (uniform over those
    of `key_digits` digits; the first digit is not 0 unless the key has one digit). Guessing scores ln 10."""
    if not 1 <= key_digits <= 18:
        raise ValueError(f"key_digits must be between 1 and 18, got {key_digits}")
    # The distribution of (distinct digits, whether 0 is among them) after each digit, the first drawn from 1-9.
    states = {(1, False): 1.0} if key_digits > 1 else {(1, False): 0.9, (1, True): 0.1}
    for _ in range(key_digits - 1):
        after: dict[tuple[int, bool], float] = {}
        for (seen, zero), p in states.items():
            for state, share in (
                ((seen, zero), seen / 10),  # a digit already in the key
                ((seen + 1, zero), (9 - (seen - zero)) / 10),  # a new digit other than 0
                ((seen + 1, True), 0.0 if zero else 0.1),  # 0, new
            ):
                if share:
                    after[state] = after.get(state, 0.0) + p * share
        states = after
    return sum(p * math.log(seen) for (seen, _), p in states.items())


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
    return wilson_interval_real(successes / n if n else 0.0, n, z)


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


# Intervals at the level of the key. A passkey grid reuses each sample's key (and haystack start) in every cell of
# the grid: its 5 depths × 16 samples at one length are 16 keys, not 80 independent draws, and misses cluster by key.
# Every interval and every "ahead / level / behind" counts the keys (clusters), not the samples.
BOOTSTRAP_RESAMPLES = 4000


# Kinds of key. A key whose digits each have one successor (12345, 44444, 12121) can be written back digit by digit
# from which digit follows which; in one where a digit is followed by two different digits (90080: 0 is followed by 0
# and by 8) the digit just written does not say which comes next, and the order must come from position.
KEY_KINDS = ("one successor per digit", "a digit with two successors")


def key_kind(key: str) -> str:
    """Which of `KEY_KINDS` the key is."""
    successors: dict[str, set[str]] = {}
    for digit, following in itertools.pairwise(key):
        successors.setdefault(digit, set()).add(following)
    return KEY_KINDS[any(len(s) > 1 for s in successors.values())]


def key_totals(hits: Sequence[bool], clusters: Sequence) -> list[list[int]]:
    """[[hits, samples], ...] per cluster (key), in order of first appearance."""
    if len(hits) != len(clusters):
        raise ValueError(f"need one cluster per hit, got {len(hits)} hits and {len(clusters)} clusters")
    totals: dict = {}
    for hit, cluster in zip(hits, clusters, strict=True):
        y, m = totals.get(cluster, (0, 0))
        totals[cluster] = (y + bool(hit), m + 1)
    return [[y, m] for y, m in totals.values()]


def clustered_proportion(totals: Sequence[Sequence[int]]) -> dict:
    """`proportion` of the hits of clusters given as [[hits, samples], ...] (`key_totals`), with the Wilson 95%
    interval at the clusters' effective sample size: n over the design effect, estimated from the spread of the
    clusters' counts (the cluster-robust variance of a ratio), never more than n nor fewer than the number of
    clusters; the number of clusters when every sample scored the same (then the data say nothing of the
    clustering, and fewer is the cautious reading). Adds `clusters` and `n_eff`."""
    k = len(totals)
    n, successes = sum(m for _, m in totals), sum(y for y, _ in totals)
    if n == 0:
        return {**proportion(0, 0), "clusters": 0, "n_eff": 0.0}
    p = successes / n
    n_eff = float(k)
    if 0 < p < 1 and k > 1:
        variance = k / (k - 1) * sum((y - p * m) ** 2 for y, m in totals) / n**2
        n_eff = float(n) if variance == 0 else min(float(n), max(float(k), p * (1 - p) / variance))
    low, high = wilson_interval_real(p, n_eff)
    return {"successes": successes, "n": n, "rate": p, "ci_low": low, "ci_high": high, "clusters": k, "n_eff": n_eff}


def wilson_interval_real(p: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion p observed over an effective (not necessarily whole) n."""
    if n <= 0:
        return 0.0, 1.0
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a: Sequence[float], b: Sequence[float], clusters: Sequence, *, seed: int = 0) -> dict:
    """The difference mean(a) − mean(b) of two scores of the same samples (a[i] and b[i] score sample i), with a
    95% percentile interval from a bootstrap over clusters (keys: the samples of a key are resampled together,
    BOOTSTRAP_RESAMPLES times, with a fixed seed), and the verdict: "ahead" when the interval lies above 0, "behind"
    when below, else "level"."""
    if not len(a) == len(b) == len(clusters) or not len(a):
        raise ValueError(f"need equal, non-empty a, b and clusters, got {len(a)}, {len(b)}, {len(clusters)}")
    names = sorted(set(clusters), key=str)
    index = {c: i for i, c in enumerate(names)}
    diff = np.zeros(len(names))
    size = np.zeros(len(names))
    for x, y, c in zip(a, b, clusters, strict=True):
        diff[index[c]] += float(x) - float(y)
        size[index[c]] += 1
    picks = np.random.default_rng(seed).integers(len(names), size=(BOOTSTRAP_RESAMPLES, len(names)))
    resampled = diff[picks].sum(axis=1) / size[picks].sum(axis=1)
    low, high = (float(v) for v in np.quantile(resampled, [0.025, 0.975]))
    verdict = "ahead" if low > 0 else "behind" if high < 0 else "level"
    return {
        "difference": float(diff.sum() / size.sum()), "ci_low": low, "ci_high": high, "verdict": verdict,
        "n": len(a), "clusters": len(names),
    }  # fmt: skip
