"""Any reasoning-gym dataset as a Task, scored without running model text in this process.

reasoning-gym generates problems from a seed; a problem's split comes from a hash of its question,
so train and held-out problems stay disjoint. reasoning_gym is imported only when used.

Scoring, per dataset (`scoring_mode`):
- "own": r1kit's own scorer, in-process, for answers that are a number, a list or an arithmetic
  expression. Datasets that keep reasoning-gym's default `score_answer` (exact match, else partial
  credit when the reference is a substring) use a copy of that rule; chain_sum and products use
  reasoning-gym's decimal rule; number_sorting parses the list as JSON; countdown and puzzle24
  parse the expression with `safe_math.evaluate_arithmetic` (an AST walker, never eval) instead
  of reasoning-gym's `sympy.parse_expr`, which runs Python; binary_matrix, spiral_matrix,
  string_insertion and n_queens read list answers with `ast.literal_eval` instead of `eval`.
- "sandbox": every other dataset's own `score_answer`, in a confined worker process
  (`r1kit.sandbox`), so that no third-party scorer sees model text in the training process.
  Answers are first bounded statically (`safe_math.is_bounded_expression`: no power towers, huge
  exponents, factorials or nesting deeper than 64); for polynomial_multiplication and the
  integration datasets, which call `sympy.parse_expr`, only plain symbolic expressions are sent
  (`safe_math.is_symbolic_expression`). A timeout (2 s) or a crash scores 0.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from r1kit.safe_math import evaluate_arithmetic, is_bounded_expression, is_symbolic_expression
from r1kit.sandbox import as_score, get_sandbox
from r1kit.tasks.base import Problem, Task, check_split, rng_for, split_of

SANDBOX_PRELOAD = ("reasoning_gym",)
# reasoning-gym's countdown and puzzle24 answers are short expressions; longer ones score as unparsable.
MAX_EXPRESSION_CHARS = 1000
MAX_DECIMAL_CHARS = 1000


def gym_dataset_names() -> list[str]:
    """Names of the installed reasoning-gym datasets (empty if reasoning-gym is missing)."""
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError:
        return []
    return sorted(DATASETS)


# ----------------------------------------------------------------- r1kit's own scorers
def default_score(answer: str, entry: dict, config: dict) -> float:
    """reasoning-gym's default rule: 1.0 for the exact reference, len(ref)/len(answer) if it contains it."""
    oracle = entry["answer"]
    if not isinstance(answer, str) or not answer:
        return 0.0
    if answer == oracle:
        return 1.0
    return len(oracle) / len(answer) if oracle in answer else 0.0


def decimal_score(answer: str, entry: dict, config: dict) -> float:
    """reasoning-gym's `compute_decimal_reward`: equal as decimals after dropping commas ("+01,000.00"
    == "1000"), else the default substring credit. Decimal only parses; long answers are not parsed."""
    if not isinstance(answer, str) or not answer:
        return 0.0
    answer, oracle = answer.replace(",", ""), entry["answer"].replace(",", "")
    if len(answer) <= MAX_DECIMAL_CHARS:
        try:
            if Decimal(answer) == Decimal(oracle):
                return 1.0
        except (InvalidOperation, ValueError):
            pass
    return len(oracle) / len(answer) if oracle in answer else 0.0


def number_sorting_score(answer: str, entry: dict, config: dict) -> float:
    """reasoning-gym's number_sorting rule: a JSON list, sorted in the asked direction, each number
    within 1 of the reference. The reference is read with json or `ast.literal_eval`, never eval."""
    try:
        values = json.loads(answer.replace("'", '"'))
    except (ValueError, RecursionError):
        return 0.0
    if not isinstance(values, list):
        return 0.0
    try:
        expected = json.loads(entry["answer"])
    except ValueError:
        expected = ast.literal_eval(entry["answer"])
    if len(values) != len(expected):
        return 0.0
    try:
        got = [float(x) for x in values]
    except (TypeError, ValueError, OverflowError):
        return 0.0
    want = [float(x) for x in expected]
    descending = entry["metadata"]["direction"] != "ascending"
    if got != sorted(got, reverse=descending):
        return 0.0
    return 1.0 if all(abs(a - b) <= 1 for a, b in zip(got, want)) else 0.0


_INTEGER = re.compile(r"\b\d+\b")


def countdown_score(answer: str, entry: dict, config: dict) -> float:
    """reasoning-gym's countdown rewards (1.0 solved, 0.05 wrong value or numbers, 0.01 unparsable),
    with the expression parsed by `evaluate_arithmetic` (+ - * /, unary minus, parentheses) instead
    of sympy. The numbers used must be exactly the given ones; the value must be within
    numpy.isclose's tolerance of the target (atol 1e-6, rtol 1e-5)."""
    if not isinstance(answer, str) or not answer.strip():
        return 0.01
    parsed = evaluate_arithmetic(answer.strip(), max_chars=MAX_EXPRESSION_CHARS, unary=True)
    if parsed is None:
        return 0.01
    value, _ = parsed
    used = [int(m) for m in _INTEGER.findall(answer)]
    if sorted(used) != sorted(entry["metadata"]["numbers"]):
        return 0.05
    target = Fraction(entry["metadata"]["target"])
    return 1.0 if abs(value - target) <= Fraction(1, 10**6) + abs(target) / 10**5 else 0.05


def puzzle24_score(answer: str, entry: dict, config: dict) -> float:
    """1.0 when the expression (+ - * /, parentheses) uses exactly the puzzle's four numbers and
    equals 24, else reasoning-gym's 0.01. Stricter than reasoning-gym, which truncates the value
    with int() and accepts any four numbers in the configured range."""
    if not isinstance(answer, str):
        return 0.01
    parsed = evaluate_arithmetic(answer.strip(), max_chars=MAX_EXPRESSION_CHARS, unary=True)
    if parsed is None:
        return 0.01
    value, used = parsed
    return 1.0 if value == 24 and Counter(used) == Counter(entry["metadata"]["numbers"]) else 0.01


MAX_LITERAL_CHARS = 4096


def _literal(answer: str) -> Any:
    """`ast.literal_eval` of a bounded answer (numbers, strings, lists, ...), never eval; raises ValueError."""
    if not isinstance(answer, str) or len(answer) > MAX_LITERAL_CHARS or not is_bounded_expression(answer):
        raise ValueError("answer too large to read as a literal")
    try:
        return ast.literal_eval(answer.strip())
    except (SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise ValueError(str(e)) from None


def binary_matrix_score(answer: str, entry: dict, config: dict) -> float:
    """reasoning-gym's binary_matrix rule (1.0 exact; 0.1 for the right matrix as a Python list of
    lists), with the list read by `ast.literal_eval` instead of eval."""
    if not isinstance(answer, str):
        return 0.0
    if answer == entry["answer"]:
        return 1.0
    try:
        matrix = _literal(answer)
        text = "\n".join(" ".join(str(x) for x in row) for row in matrix)
    except (ValueError, TypeError):
        return 0.0
    return 0.1 if text == entry["answer"] else 0.0


def spiral_matrix_score(answer: str, entry: dict, config: dict) -> float:
    """reasoning-gym's spiral_matrix rule (1.0 exact after strip; 0.1 for the right Python list),
    with `ast.literal_eval` instead of eval."""
    oracle = entry["answer"].strip()
    if not isinstance(answer, str) or not answer:
        return 0.0
    answer = answer.strip()
    if answer == oracle:
        return 1.0
    try:
        text = " ".join(str(item) for item in _literal(answer))
    except (ValueError, TypeError):
        return 0.0
    return 0.1 if text == oracle else 0.0


def string_insertion_score(answer: str, entry: dict, config: dict) -> float:
    """reasoning-gym's string_insertion rule (1.0 exact; 0.1 for the right list of characters),
    with `ast.literal_eval` instead of eval."""
    if not isinstance(answer, str):
        return 0.0
    if answer == entry["answer"]:
        return 1.0
    try:
        text = "".join(_literal(answer))
    except (ValueError, TypeError):
        return 0.0
    return 0.1 if text == entry["answer"] else 0.0


def n_queens_score(answer: str, entry: dict, config: dict) -> float:
    """reasoning-gym's n_queens rule (1.0 for one of the valid boards; 0.5 for one as a Python list
    of rows), with `ast.literal_eval` instead of eval."""
    valid = entry["metadata"]["valid_answers"]
    if not isinstance(answer, str):
        return 0.0
    if answer in valid:
        return 1.0
    try:
        text = "\n".join(" ".join(x for x in row) for row in _literal(answer))
    except (ValueError, TypeError):
        return 0.0
    return 0.5 if text in valid else 0.0


Scorer = Callable[[str, dict, dict], float]
OWN_SCORERS: dict[str, Scorer] = {
    "chain_sum": decimal_score,
    "products": decimal_score,
    "number_sorting": number_sorting_score,
    "countdown": countdown_score,
    "puzzle24": puzzle24_score,
    "binary_matrix": binary_matrix_score,
    "spiral_matrix": spiral_matrix_score,
    "string_insertion": string_insertion_score,
    "n_queens": n_queens_score,
}
# Sandboxed datasets whose scorer hands the answer to sympy.parse_expr (an eval): only plain
# symbolic expressions (`safe_math.is_symbolic_expression`) are sent, so no answer runs code even
# in the worker (where it could forge its own score).
SYMPY_PARSED = frozenset({"polynomial_multiplication", "simple_integration", "intermediate_integration"})


def scoring_mode(dataset: str) -> str:
    """ "own" when r1kit scores `dataset` itself, "sandbox" when its reasoning-gym scorer runs confined."""
    return "own" if _own_scorer(dataset) is not None else "sandbox"


def _own_scorer(dataset: str) -> Scorer | None:
    if dataset in OWN_SCORERS:
        return OWN_SCORERS[dataset]
    from reasoning_gym.dataset import ProceduralDataset
    from reasoning_gym.factory import DATASETS

    entry = DATASETS.get(dataset)
    cls = entry[0] if isinstance(entry, tuple) else entry
    if isinstance(cls, type) and cls.score_answer is ProceduralDataset.score_answer:
        return default_score
    return None


class GymTask(Task):
    """Wraps `reasoning_gym.create_dataset(name, size=..., seed=..., **config)`.

    config: the dataset's configuration keywords (e.g. min_terms=2 for chain_sum). Problems carry
    the reasoning-gym entry in meta["entry"]; they have no worked solution. `scoring` is "own" or
    "sandbox" (see the module docstring); sandboxed tasks start their workers when built.
    """

    def __init__(self, dataset: str, **config: Any):
        """dataset: a reasoning-gym dataset name; config: its options."""
        names = gym_dataset_names()
        if not names:
            raise ImportError("reasoning-gym is not installed: pip install 'r1kit[tasks]'")
        if dataset not in names:
            raise ValueError(f"unknown reasoning-gym dataset {dataset!r}; available: {', '.join(names)}")
        self.dataset = dataset
        self.config = dict(config)
        self.name = f"gym:{dataset}"
        self._own = _own_scorer(dataset)
        self.scoring = "own" if self._own is not None else "sandbox"
        if self._own is None:
            self._sandbox().start()  # the workers import reasoning-gym while we go on

    def _sandbox(self):
        config = tuple(sorted(self.config.items()))
        return get_sandbox(SANDBOX_PRELOAD, (("gym_prepare", self.dataset, config),))

    def _create(self, size: int, seed: int):
        import reasoning_gym

        return reasoning_gym.create_dataset(self.dataset, size=size, seed=seed, **self.config)

    def problems(self, split: str = "train", n: int = 100, seed: int = 0) -> list[Problem]:
        """`n` distinct problems of `split`, generated in chunks from seeds derived from (split, seed)."""
        check_split(split)
        rng = rng_for(self.name, repr(sorted(self.config.items())), split, seed)
        out: list[Problem] = []
        seen: set[str] = set()
        chunk = max(64, 4 * n if split == "train" else 12 * n)
        for _ in range(50):
            for entry in self._create(chunk, rng.randrange(2**31)):
                question = str(entry["question"])
                if question in seen or split_of(question) != split:
                    continue
                seen.add(question)
                out.append(
                    Problem(id=question, prompt=question, answer=str(entry["answer"]), meta={"entry": entry})
                )
                if len(out) == n:
                    return out
        raise ValueError(f"{self.name}: found only {len(out)} of {n} distinct {split!r} problems")

    def check(self, answer: str, problem: Problem) -> float:
        """The dataset's score: r1kit's own scorer, or reasoning-gym's in the sandbox (0.0 on timeout)."""
        entry = problem.meta.get("entry")
        if entry is None:
            return 0.0
        if self._own is not None:
            return self._own(answer, entry, self.config)
        bounded = is_symbolic_expression if self.dataset in SYMPY_PARSED else is_bounded_expression
        if not bounded(answer):  # code, a power tower, deep nesting: never sent
            return 0.0
        config = tuple(sorted(self.config.items()))
        return as_score(self._sandbox().call("gym", answer, entry, self.dataset, config))
