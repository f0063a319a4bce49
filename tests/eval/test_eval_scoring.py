"""Scores of answers and their confidence intervals."""

import pytest

from infini_llama.eval import passkey_scores, string_match_all, wilson_interval
from infini_llama.eval.scoring import first_integer, mean_and_stderr, proportion


@pytest.mark.parametrize(
    "prediction,exact,contains",
    [
        ("1234", True, True),
        (" 1234", True, True),  # leading spaces do not matter
        ("  1234.", True, True),
        ("12345678", False, True),  # a longer number that starts with the key is wrong (HF's substring says yes)
        ("0123", False, False),
        ("the key is 1234", True, True),
        ("99 1234", False, True),  # only the first integer counts
        ("", False, False),
        ("no digits here", False, False),
    ],
)
def test_passkey_exact_and_contains(prediction, exact, contains):
    scores = passkey_scores(prediction, "1234", [1], [2], 0.25)
    assert scores["exact"] is exact
    assert scores["contains"] is contains
    assert scores["digit_acc"] == 0.25


def test_token_exact_compares_ids():
    assert passkey_scores("1234", "1234", [5, 6], [5, 6], 1.0)["token_exact"]
    assert not passkey_scores("1234", "1234", [5, 6, 7], [5, 6], 1.0)["token_exact"]
    assert first_integer("abc") is None and first_integer("x 007 y") == "007"


def test_string_match_all_is_case_insensitive_and_fractional():
    assert string_match_all("Values: 1234567 and 7654321", ["1234567", "7654321"]) == 1.0
    assert string_match_all("VALUE ABC-Def", ["abc-def", "xyz"]) == 0.5
    assert string_match_all("", ["1"]) == 0.0
    with pytest.raises(ValueError):
        string_match_all("x", [])


def test_wilson_interval():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    p = proportion(32, 64)
    assert p["rate"] == 0.5 and p["ci_low"] < 0.5 < p["ci_high"]
    assert mean_and_stderr([0.0, 1.0])["stderr"] == pytest.approx(0.5)
