"""Countdown: reach a target with given numbers and + - * /, each number used at most once.

Prompt "Make 46 from 3 7 25"; the worked solution is a search trace, one attempt per line, each a
chain of steps "25-7=18,18*3=54 no", ending with the attempt that hits the target ("... =46 ok");
the answer is the expression, e.g. "(25-7)*3-8". The number of failed attempts before the success
varies (0..max_failed), so longer searches are part of the data: the task where reasoning length
can pay off (docs/LOG.md). Scoring parses the answer with `safe_math.evaluate_arithmetic` (an
AST walker, never eval) and checks the numbers used and the value.
"""

from __future__ import annotations

import random
from collections import Counter

from r1kit.safe_math import evaluate_arithmetic
from r1kit.tasks.base import Problem, ProceduralTask

# An expression string with its precedence: 3 literal, 2 * /, 1 + -.
_Expr = tuple[str, int]


def _combine(a: int, b: int, op: str) -> int | None:
    """a op b when it stays a positive integer (the classic Countdown rule), else None."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b if a > b else None
    if op == "*":
        return a * b
    return a // b if b > 1 and a % b == 0 else None


def _join(left: _Expr, op: str, right: _Expr) -> _Expr:
    """Expression text of left op right with only the parentheses precedence needs."""
    prec = 1 if op in "+-" else 2
    left_text = f"({left[0]})" if left[1] < prec else left[0]
    needs = right[1] < prec or (op in "-/" and right[1] == prec)
    right_text = f"({right[0]})" if needs else right[0]
    return f"{left_text}{op}{right_text}", prec


def _random_path(rng: random.Random, numbers: list[int], stop_at: int | None = None):
    """A random chain of steps combining numbers until one is left (or `stop_at` is reached).

    Returns (steps, final value, final expression); steps are "a op b=c" strings.
    """
    pool: list[tuple[int, _Expr]] = [(x, (str(x), 3)) for x in numbers]
    steps: list[str] = []
    while len(pool) > 1:
        for _ in range(20):
            i, j = rng.sample(range(len(pool)), 2)
            (a, ea), (b, eb) = pool[i], pool[j]
            op = rng.choice("+-*/")
            value = _combine(a, b, op)
            if value is not None:
                break
        else:  # no valid random operation found: addition always is
            op, value = "+", a + b
        pool = [p for k, p in enumerate(pool) if k not in (i, j)]
        pool.append((value, _join(ea, op, eb)))
        steps.append(f"{a}{op}{b}={value}")
        if stop_at is not None and value == stop_at:
            return steps, value, pool[-1][1][0]
    return steps, pool[0][0], pool[0][1][0]


class CountdownTask(ProceduralTask):
    """Reach `target` from `numbers` (each used at most once) with + - * / and parentheses.

    numbers: how many numbers (int or (min, max)); max_number: numbers are drawn in 1..max_number;
    max_target: targets are in 1..max_target; max_failed: the worked search trace shows 0..max_failed
    failed attempts before the successful one.
    """

    name = "countdown"

    def __init__(
        self,
        numbers: int | tuple[int, int] = 4,
        max_number: int = 25,
        max_target: int = 100,
        max_failed: int = 2,
    ):
        """See the class docstring."""
        lo, hi = (numbers, numbers) if isinstance(numbers, int) else tuple(numbers)
        if not 2 <= lo <= hi <= 8:
            raise ValueError(f"numbers must be in 2..8, got {numbers}")
        if max_number < 2 or max_target < 1 or max_failed < 0:
            raise ValueError("need max_number >= 2, max_target >= 1, max_failed >= 0")
        self.lo, self.hi = int(lo), int(hi)
        self.max_number, self.max_target, self.max_failed = max_number, max_target, max_failed

    def config(self) -> dict:
        """The knobs that define the problem distribution."""
        return {
            "numbers": (self.lo, self.hi),
            "max_number": self.max_number,
            "max_target": self.max_target,
            "max_failed": self.max_failed,
        }

    def sample(self, rng: random.Random) -> Problem:
        """Draw numbers, build a random solution whose value becomes the target, write the trace."""
        while True:
            numbers = [rng.randint(1, self.max_number) for _ in range(rng.randint(self.lo, self.hi))]
            steps, target, expr = _random_path(rng, numbers)
            if 1 <= target <= self.max_target and target not in numbers:
                break
        lines = []
        for _ in range(rng.randint(0, self.max_failed)):
            failed, value, _ = _random_path(rng, numbers, stop_at=target)
            if value != target:
                lines.append(",".join(failed) + " no")
        lines.append(",".join(steps) + " ok")
        prompt = f"Make {target} from {' '.join(map(str, numbers))}"
        return Problem(
            id=prompt,
            prompt=prompt,
            answer=expr,
            solution="\n".join(lines),
            meta={"numbers": numbers, "target": target},
        )

    def check(self, answer: str, problem: Problem) -> float:
        """1.0 when the answer expression uses only given numbers (each at most once) and equals the target.

        A trailing "= target" is allowed. The expression is parsed, never executed.
        """
        expr = answer.split("=", 1)[0].strip()
        result = evaluate_arithmetic(expr)
        if result is None:
            return 0.0
        value, used = result
        available = Counter(problem.meta["numbers"])
        if any(count > available[x] for x, count in Counter(used).items()):
            return 0.0
        return 1.0 if value == problem.meta["target"] else 0.0
