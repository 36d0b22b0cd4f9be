"""Test-time-scaling metrics (Chen et al. 2021, arXiv 2107.03374; self-consistency, arXiv 2203.11171;
Cobbe et al. 2021, arXiv 2110.14168): pass@k, majority vote (cons@k / maj@k), best-of-N.

Pure functions over plain Python values (numpy only for the vectorised pass@k); nothing here
imports torch, so evaluation and reporting code can use them cheaply.

R1's evaluation protocol (arXiv 2501.12948): k samples per question at temperature 0.6, pass@1 = mean
correctness over the k samples (`pass_at_k(n, c, 1) == c / n`), cons@k = majority vote.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from r1kit.safe_math import brace_group


def _check_counts(n: int, c: int, k: int) -> None:
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"pass_at_k: {name} must be an int, got {type(v).__name__}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021; arXiv 2107.03374).

    Estimates the probability that at least one of k samples drawn without replacement from the
    n is correct: 1 - C(n-c, k) / C(n, k), computed as the stable product
    1 - prod_{j=n-c+1..n} (1 - k/j). Returns exactly 1.0 when n - c < k and 0.0 when c == 0.

    Raises:
        TypeError: a non-integer argument.
        ValueError: unless 1 <= k <= n and 0 <= c <= n.
    """
    _check_counts(n, c, k)
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / j for j in range(n - c + 1, n + 1))


def pass_at_k_many(n: Sequence[int] | np.ndarray, c: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
    """Vectorised `pass_at_k` over problems: n (P,) samples and c (P,) correct per problem.

    n may also be a single int shared by every problem. Returns a (P,) float64 array; average it
    for the benchmark score. Same validation as `pass_at_k`, per element.
    """
    c_P = np.asarray(c)
    n_P = np.broadcast_to(np.asarray(n), c_P.shape)
    if c_P.ndim != 1:
        raise ValueError(f"pass_at_k_many: c must be 1-D, got shape {c_P.shape}")
    if c_P.size and not (np.issubdtype(c_P.dtype, np.integer) and np.issubdtype(n_P.dtype, np.integer)):
        raise TypeError("pass_at_k_many: n and c must be integers")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"pass_at_k_many: k must be an int, got {type(k).__name__}")
    if c_P.size == 0:
        return np.zeros(0)
    if k < 1 or (n_P < k).any():
        raise ValueError(f"pass_at_k_many: need 1 <= k <= n for every problem, got k={k}, min n={n_P.min()}")
    if (c_P < 0).any() or (c_P > n_P).any():
        raise ValueError("pass_at_k_many: need 0 <= c <= n for every problem")
    # Terms 1 - k/j over j = 1..max(n), kept only for n - c < j <= n: one (P, max n) product.
    j_J = np.arange(1, int(n_P.max()) + 1, dtype=np.float64)
    keep_PJ = (j_J[None, :] > (n_P - c_P)[:, None]) & (j_J[None, :] <= n_P[:, None])
    prod_P = np.where(keep_PJ, 1.0 - k / j_J[None, :], 1.0).prod(axis=1)
    return np.where(n_P - c_P < k, 1.0, 1.0 - prod_P)


_BOXED = "\\boxed"
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def _last_boxed(s: str) -> str | None:
    """Content of the last \\boxed{...} in s, braces balanced; None when there is none (or unclosed)."""
    start = s.rfind(_BOXED + "{")
    return None if start < 0 else brace_group(s, start + len(_BOXED))


def normalize_answer(s: str | None) -> str:
    """Canonical form of a final answer, for voting and exact comparison. Conservative on purpose.

    Steps, in order:
      1. None -> "".
      2. If s contains \\boxed{...}, keep only the content of the last one (nested braces kept).
      3. Strip surrounding whitespace, then one trailing period, then whitespace again.
      4. A number written with thousands separators (1,234,567 or -1,234.5) loses its commas;
         "1,2" or "12,34" (lists, decimal commas) are left alone.
      5. An integer loses its sign "+", leading zeros and a negative zero: "007" -> "7", "-0" -> "0".
    Nothing else changes: no case folding, no LaTeX rewriting, "5.0" stays distinct from "5".
    For symbolic equivalence use a verifier (math-verify) in the task's scorer instead.
    """
    if s is None:
        return ""
    boxed = _last_boxed(s)
    if boxed is not None:
        s = boxed
    s = s.strip()
    if s.endswith("."):
        s = s[:-1].rstrip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if _INTEGER.fullmatch(s):
        s = str(int(s))
    return s


def _votes(answers: Sequence[str | None], normalize: Callable[[str], str] | None) -> list[str | None]:
    """Normalised vote per answer; None for a missing or empty answer (it does not vote)."""
    out: list[str | None] = []
    for a in answers:
        v = None if a is None else (normalize(a) if normalize is not None else a.strip())
        out.append(v if v else None)
    return out


def majority_vote(
    answers: Sequence[str | None], normalize: Callable[[str], str] | None = normalize_answer
) -> tuple[str | None, int]:
    """Most frequent normalised final answer (self-consistency; arXiv 2203.11171).

    Args:
        answers: final answers, one per sample; None or empty (after normalising) does not vote.
        normalize: maps an answer to its canonical form before counting (default
            `normalize_answer`); None compares answers after only stripping whitespace.

    Returns:
        (answer, count): the winning normalised answer and its vote count. A tie goes to the answer
        whose first vote comes earliest in `answers`. (None, 0) when nobody voted.
    """
    counts: dict[str, int] = {}
    for v in _votes(answers, normalize):
        if v is not None:
            counts[v] = counts.get(v, 0) + 1  # dicts keep first-insertion order: ties -> earliest
    if not counts:
        return None, 0
    best = max(counts, key=counts.__getitem__)  # max returns the first maximal key in order
    return best, counts[best]


def maj_at_k(
    answers: Sequence[str | None],
    correct: Sequence[bool] | Callable[[str], bool],
    k: int,
    normalize: Callable[[str], str] | None = normalize_answer,
) -> float:
    """maj@k (cons@k) for one problem: 1.0 if the majority answer of the first k samples is correct.

    Args:
        answers: final answers of the n >= k samples, in sampling order.
        correct: either per-sample correctness flags aligned with `answers` (the winner is judged
            by the flag of its earliest sample among the first k: samples with the same normalised
            answer are assumed equally correct), or a scorer called on the winning normalised answer.
        k: how many leading samples vote, 1 <= k <= len(answers).
        normalize: as in `majority_vote`.

    Returns:
        1.0 or 0.0; 0.0 when none of the k samples gave an answer. Average over problems for a score.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: need 1 <= k <= len(answers) = {len(answers)}, got k={k!r}")
    first = answers[:k]
    winner, _ = majority_vote(first, normalize)
    if winner is None:
        return 0.0
    if callable(correct):
        return float(bool(correct(winner)))
    if len(correct) != len(answers):
        raise ValueError(f"maj_at_k: {len(correct)} correctness flags for {len(answers)} answers")
    idx = _votes(first, normalize).index(winner)
    return float(bool(correct[idx]))


def best_of_n(samples: Sequence[object], scores: Sequence[float]) -> int:
    """Best-of-N selection (Cobbe et al. 2021, arXiv 2110.14168): index of the highest-scoring sample under a
    verifier or reward.

    Args:
        samples: the N candidates (only their count is used; kept so calls read naturally).
        scores: N floats, higher is better. NaN never wins unless every score is NaN.

    Returns:
        The index of the highest score; ties go to the first. Raises ValueError when empty or when
        the lengths differ.
    """
    if len(samples) != len(scores):
        raise ValueError(f"best_of_n: {len(samples)} samples but {len(scores)} scores")
    if len(scores) == 0:
        raise ValueError("best_of_n: no samples")
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best] or (math.isnan(scores[best]) and not math.isnan(s)):
            best = i
    return best
