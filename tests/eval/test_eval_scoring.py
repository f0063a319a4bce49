"""Scores of answers and their confidence intervals."""

import numpy as np
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


def test_key_level_intervals_count_keys_not_samples():
    from infini_llama.eval.scoring import clustered_proportion, key_totals

    # 16 keys at 5 depths: when a key is always right or always wrong, the 80 samples carry 16 keys' worth.
    keys = [k for k in range(16) for _ in range(5)]
    clustered = clustered_proportion(key_totals([k < 13 for k in keys], keys))
    assert clustered["rate"] == pytest.approx(13 / 16) and clustered["n_eff"] == pytest.approx(16)
    assert clustered["ci_low"] < proportion(65, 80)["ci_low"] - 0.05, "wider than Wilson at n = 80"
    # Misses spread evenly over keys (one per key at most): as independent as samples get, the plain interval.
    spread_out = clustered_proportion(key_totals([i % 5 != 0 for i in range(80)], [i // 5 for i in range(80)]))
    assert spread_out["n_eff"] == pytest.approx(80)
    assert spread_out["ci_low"] == pytest.approx(proportion(64, 80)["ci_low"])
    # All right: the data say nothing of clustering; the cautious n is the number of keys.
    perfect = clustered_proportion(key_totals([True] * 80, keys))
    assert perfect["n_eff"] == 16 and perfect["ci_low"] == pytest.approx(wilson_interval(16, 16)[0])
    # One sample per key (a cell of the grid): the plain Wilson interval.
    cell = clustered_proportion(key_totals([True] * 12 + [False] * 4, list(range(16))))
    assert (cell["ci_low"], cell["ci_high"]) == pytest.approx(wilson_interval(12, 16))


def test_key_kind_tells_whether_a_digit_has_two_successors():
    from infini_llama.eval.scoring import KEY_KINDS, key_kind

    one, two = KEY_KINDS
    for key in ("12345", "44444", "12121", "90817", "0"):
        assert key_kind(key) == one, key
    for key in ("90080", "44494", "93370", "12132"):
        assert key_kind(key) == two, key


@pytest.mark.parametrize(
    "prediction,first,reordered,from_key,digits",
    [
        (" 7537", True, False, 4, 4),  # the key itself: not a reordering
        (" 3757", False, True, 4, 4),  # the key's digits, each as often, in another order
        (" 7777", True, False, 4, 4),  # the first digit, then repeated: every digit from the key, no order
        (" 7557", True, False, 4, 4),  # 5 twice where the key has it once: not the key's digits each as often
        (" 7531", True, False, 3, 4),  # 1 is not in the key
        (" 75370", True, False, 4, 4),  # a longer number: its first len(key) digits are counted, it is no reordering
        (" 12", False, False, 0, 2),
        (" no number", False, False, 0, 0),
    ],
)
def test_answer_digits_says_what_a_wrong_answer_holds_of_the_key(prediction, first, reordered, from_key, digits):
    from infini_llama.eval.scoring import answer_digits

    assert answer_digits(prediction, "7537") == {
        "first": first, "reordered": reordered, "from_key": from_key, "digits": digits
    }  # fmt: skip


def test_chance_from_key_is_the_share_of_the_ten_digits_in_the_key():
    from infini_llama.eval.scoring import chance_from_key

    assert chance_from_key("7537") == pytest.approx(0.3) and chance_from_key("12345") == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    drawn = rng.integers(0, 10, 200_000)
    assert np.isin(drawn, [3, 5, 7]).mean() == pytest.approx(chance_from_key("7537"), abs=0.005)


@pytest.mark.parametrize("digits", [1, 2, 3, 4, 5])
def test_which_digits_loss_is_the_mean_log_count_of_a_keys_distinct_digits(digits):
    from infini_llama.eval.passkey import key_range
    from infini_llama.eval.scoring import which_digits_loss

    keys = [str(k) for k in range(*key_range(digits))]
    assert which_digits_loss(digits) == pytest.approx(np.mean([np.log(len(set(k))) for k in keys]), abs=1e-12)
    assert which_digits_loss(18) < np.log(10)
    with pytest.raises(ValueError, match="between 1 and 18"):
        which_digits_loss(0)


def test_paired_difference_resamples_keys():
    from infini_llama.eval.scoring import paired_difference

    keys = [k for k in range(16) for _ in range(5)]
    ours = [True] * 80
    # The other row misses every sample of 6 keys (30 samples): ahead, as those keys were right for us.
    theirs = [k >= 6 for k in keys]
    result = paired_difference(ours, theirs, keys)
    assert result["difference"] == pytest.approx(30 / 80) and result["verdict"] == "ahead"
    assert result["clusters"] == 16 and 0 < result["ci_low"] < result["difference"] < result["ci_high"]
    # 15 missed samples on 3 keys of 16: a resample holds none of the 3 keys 3.6% of the time (> 2.5%), so level,
    # where 15 misses spread over 15 keys are ahead.
    assert paired_difference(ours, [k >= 3 for k in keys], keys)["verdict"] == "level"
    spread_misses = [not (i % 5 == 0 and keys[i] >= 1) for i in range(80)]
    assert sum(not x for x in spread_misses) == 15
    assert paired_difference(ours, spread_misses, keys)["verdict"] == "ahead"
    assert paired_difference(ours, ours, keys)["verdict"] == "level"
    assert paired_difference(theirs, ours, keys)["verdict"] == "behind"
    one_key = [k != 0 for k in keys]
    assert paired_difference(ours, one_key, keys)["verdict"] == "level", "one key's misses alone prove nothing"
    assert paired_difference(ours, theirs, keys) == result, "a fixed seed: the same interval every time"
    with pytest.raises(ValueError, match="equal"):
        paired_difference([True], [True, False], [0])
