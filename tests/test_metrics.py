"""Test-time-scaling metrics (Chen et al. 2021, arXiv 2107.03374; self-consistency, arXiv 2203.11171;
Cobbe et al. 2021, arXiv 2110.14168): pass@k, majority vote, best-of-N, answer normalisation."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1kit.metrics import best_of_n, maj_at_k, majority_vote, normalize_answer, pass_at_k, pass_at_k_many

# ---------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    "n, c, k, want",
    [
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (4, 3, 2, 1.0),  # n - c = 1 < k: every 2-subset holds a correct sample
        (3, 1, 3, 1.0),
        (10, 0, 5, 0.0),
        (16, 4, 1, 4 / 16),  # pass@1 = c / n
        (8, 8, 8, 1.0),
    ],
)
def test_pass_at_k_by_hand(n, c, k, want):
    assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_edge_values_are_exact():
    assert pass_at_k(4, 3, 2) == 1.0
    assert pass_at_k(10, 0, 3) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_combinatorial_form(nck):
    n, c, k = nck
    want = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-9)
    if k == 1:
        assert pass_at_k(n, c, k) == pytest.approx(c / n, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(4, 64).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))), max_size=20))
def test_pass_at_k_many_matches_scalar(pairs):
    n = [p[0] for p in pairs]
    c = [p[1] for p in pairs]
    got = pass_at_k_many(n, c, 4)
    assert got.shape == (len(pairs),)
    np.testing.assert_allclose(got, [pass_at_k(a, b, 4) for a, b in pairs], atol=1e-12)


def test_pass_at_k_many_shared_n():
    np.testing.assert_allclose(pass_at_k_many(5, np.array([0, 2, 4]), 2), [0.0, 0.7, 1.0])


@pytest.mark.parametrize(
    "n, c, k, err",
    [
        (5, 2, 6, ValueError),
        (5, 2, 0, ValueError),
        (5, 6, 1, ValueError),
        (5, -1, 1, ValueError),
        (5, 2.0, 1, TypeError),
    ],
)
def test_pass_at_k_validates(n, c, k, err):
    with pytest.raises(err):
        pass_at_k(n, c, k)


def test_pass_at_k_many_validates():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k_many([4, 2], [1, 1], 3)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k_many([4, 2], [1, 3], 1)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "raw, want",
    [
        ("  42  ", "42"),
        ("42.", "42"),
        ("The answer is \\boxed{1,234}.", "1234"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{3} then \\boxed{ 007 }", "7"),
        ("-1,234,567.25", "-1234567.25"),
        ("1,2", "1,2"),  # a list, not a thousands separator
        ("12,34", "12,34"),
        ("007", "7"),
        ("+5", "5"),
        ("-0", "0"),
        ("0.50", "0.50"),  # decimals are left alone
        ("5.0", "5.0"),
        ("x = 3", "x = 3"),
        ("\\boxed{unclosed", "\\boxed{unclosed"),
        (None, ""),
        ("   ", ""),
    ],
)
def test_normalize_answer(raw, want):
    assert normalize_answer(raw) == want


# ---------------------------------------------------------------- majority vote


def test_majority_vote_counts_normalised_answers():
    assert majority_vote(["7", "\\boxed{7}", "007.", "8", "8"]) == ("7", 3)


def test_majority_vote_tie_goes_to_earliest():
    assert majority_vote(["3", "5", "5", "3"]) == ("3", 2)
    assert majority_vote(["5", "3", "3", "5"]) == ("5", 2)
    assert majority_vote(["\\boxed{1,000}", "42", "1000.", "42"]) == ("1000", 2)


def test_majority_vote_skips_missing_answers():
    assert majority_vote([None, "", "  ", "\\boxed{}", "9"]) == ("9", 1)
    assert majority_vote([None, ""]) == (None, 0)
    assert majority_vote([]) == (None, 0)


def test_majority_vote_custom_normalize():
    assert majority_vote(["A", "a", "b"], normalize=str.lower) == ("a", 2)
    assert majority_vote(["A", "a", " b", "b "], normalize=None) == ("b", 2)


def test_maj_at_k_with_flags_and_scorer():
    answers = ["1", "2", "2", "1", "1", "1"]
    flags = [True, False, False, True, True, True]
    assert maj_at_k(answers, flags, k=3) == 0.0  # first 3: "2" wins 2-1
    assert maj_at_k(answers, flags, k=4) == 1.0  # 2-2 tie: "1" voted first
    assert maj_at_k(answers, flags, k=1) == 1.0
    assert maj_at_k(answers, lambda a: a == "2", k=3) == 1.0
    assert maj_at_k([None, None, "4"], [False, False, True], k=2) == 0.0
    with pytest.raises(ValueError):
        maj_at_k(answers, flags, k=7)
    with pytest.raises(ValueError):
        maj_at_k(answers, flags[:3], k=2)


# ---------------------------------------------------------------- best-of-N


def test_best_of_n():
    assert best_of_n(["a", "b", "c"], [0.1, 0.9, 0.3]) == 1
    assert best_of_n(["a", "b", "c"], [0.5, 0.9, 0.9]) == 1  # tie -> first
    assert best_of_n(["a", "b"], [float("nan"), -1.0]) == 1
    assert best_of_n(["a", "b"], [float("nan"), float("nan")]) == 0
    assert best_of_n(["a"], [-3]) == 0
    with pytest.raises(ValueError):
        best_of_n([], [])
    with pytest.raises(ValueError):
        best_of_n(["a"], [1.0, 2.0])


def test_brace_group_is_the_one_brace_matcher_of_both_boxed_readers():
    from r1kit.metrics import _last_boxed
    from r1kit.safe_math import brace_group, extract_boxed

    assert brace_group("\\frac{a{b}}{c}", 5) == "a{b}"
    assert brace_group("x{}", 1) == ""
    assert brace_group("{never {closed}", 0) is None
    # metrics reads only the last \boxed{ (None when it is unclosed); safe_math falls back to an
    # earlier closed \boxed / \fbox and allows a space before the brace
    assert _last_boxed("\\boxed{1{2}3} y") == extract_boxed("\\boxed{1{2}3} y") == "1{2}3"
    assert _last_boxed("\\boxed{a} \\boxed{b") is None
    assert extract_boxed("\\boxed{a} \\boxed{b") == "a"
    assert _last_boxed("\\boxed {7}") is None and extract_boxed("\\boxed {7}") == "7"
