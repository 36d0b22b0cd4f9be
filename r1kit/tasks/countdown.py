"""Countdown: reach a target with given numbers and + - * /, each number used at most once.

Prompt "Make 46 from 3 7 25"; the worked solution is the trace of a *bounded random search*: one
attempt per line, each a chain of steps "25-7=18,18*3=54 no" (an attempt combines random pairs until
one number is left or the target is hit), every new attempt starting with the word "Wait, ", the
search stopping at the first attempt that hits the target ("Wait, 3*7=21,21+25=46 ok") or after
`max_failed + 1` attempts. A trace that ran out of attempts gives up: its answer is the attempt
closest to the target, and it scores 0. So the cold-start data shows *short* searches only, and a
model that keeps searching (one more "Wait, ..." line) finds more answers: the task where thinking
longer pays (DeepSeek-R1-Zero's length curve, arXiv 2501.12948; "Wait" is s1's budget-forcing word,
arXiv 2501.19393, and here it is the in-distribution word that starts a new attempt).

With `recheck` > 0 that share of the solved traces re-checks the hit before stopping: one more line
"Wait, check 3*7=21,21+25=46 ok" (the hit's chain replayed). Then a line that follows a hit is in
the data, so budget forcing's forced "Wait, " after a hit (s1) continues in distribution (a re-check,
the answer still the hit) instead of starting an attempt the answer would copy.

A problem's difficulty is its *hit rate*: the share of random attempts that reach the target,
estimated from `HIT_TRIALS` attempts with a generator seeded by the problem (deterministic).
`min_hit_rate` / `max_hit_rate` select problems by it (easy ones where a short search suffices, or
a hard split that needs a long one); `solved_only` keeps only problems the bounded search solved.

The answer is an expression ("(25-7)*3-8") or, with `answer_format="steps"`, the step chain of the
successful attempt ("25-7=18,18*3=54,54-8=46", easier for a tiny model to copy). The checker accepts
both: an expression is parsed with `safe_math.evaluate_arithmetic` (an AST walker, never eval) and
its numbers and value checked; a step chain is replayed step by step (each operand must be a given
number or an earlier result, used once; every step's arithmetic must be right; the last result must
be the target).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter

from r1kit.safe_math import evaluate_arithmetic
from r1kit.tasks.base import Problem, SearchTraceTask, rng_for

# An expression string with its precedence: 3 literal, 2 * /, 1 + -.
_Expr = tuple[str, int]
# Random attempts used to estimate a problem's hit rate.
HIT_TRIALS = 64
# The verified-search reward reads at most this many characters of the thinking.
MAX_TRACE_CHARS = 8192
# The word that starts a re-check line (the hit's chain replayed, see `format_trace`).
CHECK = "check "
# One step of a step-chain answer: "a op b=c".
_STEP = re.compile(r"\s*(\d{1,12})\s*([-+*/])\s*(\d{1,12})\s*=\s*(\d{1,12})\s*")


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


def _random_path(
    rng: random.Random, numbers: list[int], stop_at: int | None = None, ops: str = "+-*/"
) -> tuple[list[str], int, str]:
    """A random chain of steps combining numbers until one is left (or `stop_at` is reached).

    Each step picks two numbers of the pool and an operation of `ops` at random (20 tries for a
    valid one, else "+"). Returns (steps, final value, final expression); steps are "a op b=c".
    """
    pool: list[tuple[int, _Expr]] = [(x, (str(x), 3)) for x in numbers]
    steps: list[str] = []
    while len(pool) > 1:
        for _ in range(20):
            i, j = rng.sample(range(len(pool)), 2)
            (a, ea), (b, eb) = pool[i], pool[j]
            op = rng.choice(ops)
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


def hit_rate(numbers: list[int], target: int, ops: str = "+-*/", trials: int = HIT_TRIALS) -> float:
    """Share of `trials` random attempts (`_random_path` with stop_at=target) that reach `target`.

    The generator is seeded by the problem, so the estimate is the same on every call.
    """
    rng = rng_for("countdown-hit", ops, target, *numbers)
    return sum(_random_path(rng, numbers, target, ops)[1] == target for _ in range(trials)) / trials


def bounded_search(
    rng: random.Random, numbers: list[int], target: int, attempts: int, ops: str = "+-*/"
) -> list[tuple[list[str], int, str]]:
    """Random attempts (steps, value, expression) until one reaches `target` or `attempts` are made."""
    out = []
    for _ in range(attempts):
        out.append(_random_path(rng, numbers, target, ops))
        if out[-1][1] == target:
            break
    return out


def format_trace(
    attempts: list[tuple[list[str], int, str]], target: int, wait: str = "Wait", recheck: bool = False
) -> str:
    """The search trace: one line per attempt, "... ok" for a hit, "... no" otherwise; every attempt
    after the first starts with "<wait>, " (no prefix when `wait` is empty). With `recheck` and a hit,
    one more line "<wait>, check <the hit's steps> ok" (`CHECK` then the chain)."""
    lines = []
    for k, (steps, value, _) in enumerate(attempts):
        prefix = f"{wait}, " if wait and k else ""
        lines.append(prefix + ",".join(steps) + (" ok" if value == target else " no"))
    if recheck and attempts and attempts[-1][1] == target:
        lines.append((f"{wait}, " if wait else "") + CHECK + ",".join(attempts[-1][0]) + " ok")
    return "\n".join(lines)


def check_steps(answer: str, numbers: list[int], target: int) -> bool:
    """Whether a step chain "a op b=c,c op d=e,..." reaches `target` from `numbers`.

    Each operand must be a given number or an earlier result not used yet (each used once), each
    step's arithmetic must hold under the Countdown rule (positive integers, exact division), and the
    last result must equal `target`. A trailing " ok" is allowed.
    """
    text = answer.strip()
    if text.endswith(" ok"):
        text = text[:-3]
    parts = text.split(",")
    if not text or len(parts) > 16:
        return False
    pool = Counter(numbers)
    value = None
    for part in parts:
        m = _STEP.fullmatch(part)
        if m is None:
            return False
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        pool[a] -= 1
        pool[b] -= 1
        if pool[a] < 0 or pool[b] < 0 or _combine(a, b, op) != c:
            return False
        pool[c] += 1
        value = c
    return value == target


class CountdownTask(SearchTraceTask):
    """Reach `target` from `numbers` (each used at most once) with the operations `ops` and parentheses.

    numbers: how many numbers (int or (min, max)); max_number: numbers are drawn in 1..max_number;
    max_target: targets are in 1..max_target (every target is reachable: it is the value of a random
    combination of the numbers); max_failed: the worked trace is a random search with a budget drawn
    in 1..max_failed + 1 attempts, so it shows at most max_failed failed attempts before a hit (a
    search that spends its budget gives up, see the module docstring); ops: the operations of
    the attempts (a subset of "+-*/"); wait: the word that starts every attempt after the first ("" =
    none); answer_format: "expression" or "steps" (the successful attempt's step chain); solved_only:
    keep only problems the bounded search solved (no give-up traces); min_hit_rate / max_hit_rate:
    keep problems whose hit rate (share of random attempts that reach the target) is in this range;
    recheck: the share of solved traces that replay the hit on one more line before stopping
    ("Wait, check ... ok", see the module docstring).
    """

    name = "countdown"

    def __init__(
        self,
        numbers: int | tuple[int, int] = 4,
        max_number: int = 25,
        max_target: int = 100,
        max_failed: int = 2,
        ops: str = "+-*/",
        wait: str = "Wait",
        answer_format: str = "expression",
        solved_only: bool = False,
        min_hit_rate: float = 0.0,
        max_hit_rate: float = 1.0,
        recheck: float = 0.0,
    ):
        """See the class docstring."""
        lo, hi = (numbers, numbers) if isinstance(numbers, int) else tuple(numbers)
        if not 2 <= lo <= hi <= 8:
            raise ValueError(f"numbers must be in 2..8, got {numbers}")
        if max_number < 2 or max_target < 1 or max_failed < 0:
            raise ValueError("need max_number >= 2, max_target >= 1, max_failed >= 0")
        if not ops or set(ops) - set("+-*/") or "+" not in ops:
            raise ValueError(f"ops must be a subset of '+-*/' that contains '+', got {ops!r}")
        if answer_format not in ("expression", "steps"):
            raise ValueError(f"answer_format must be 'expression' or 'steps', got {answer_format!r}")
        if not 0.0 <= min_hit_rate <= max_hit_rate <= 1.0:
            raise ValueError(
                f"need 0 <= min_hit_rate <= max_hit_rate <= 1, got {min_hit_rate}, {max_hit_rate}"
            )
        if not 0.0 <= recheck <= 1.0:
            raise ValueError(f"recheck must be a share in 0..1, got {recheck}")
        if "\n" in wait or "," in wait:
            raise ValueError("wait must be one word without a comma or newline")
        self.lo, self.hi = int(lo), int(hi)
        self.max_number, self.max_target, self.max_failed = max_number, max_target, max_failed
        self.ops, self.wait, self.answer_format = (
            "".join(sorted(set(ops), key="+-*/".index)),
            wait,
            answer_format,
        )
        self.solved_only = bool(solved_only)
        self.min_hit_rate, self.max_hit_rate = float(min_hit_rate), float(max_hit_rate)
        self.recheck = float(recheck)

    def config(self) -> dict:
        """The knobs that define the problem distribution (`recheck` only when set: the problems of a
        configuration without it, drawn from this, stay those of earlier versions)."""
        out = {
            "numbers": (self.lo, self.hi),
            "max_number": self.max_number,
            "max_target": self.max_target,
            "max_failed": self.max_failed,
            "ops": self.ops,
            "wait": self.wait,
            "answer_format": self.answer_format,
            "solved_only": self.solved_only,
            "min_hit_rate": self.min_hit_rate,
            "max_hit_rate": self.max_hit_rate,
        }
        if self.recheck:
            out["recheck"] = self.recheck
        return out

    def _answer(self, attempt: tuple[list[str], int, str]) -> str:
        return ",".join(attempt[0]) if self.answer_format == "steps" else attempt[2]

    def sample(self, rng: random.Random) -> Problem:
        """Draw numbers, a random solution whose value becomes the target, then the bounded search."""
        filtered = self.min_hit_rate > 0.0 or self.max_hit_rate < 1.0
        while True:
            numbers = [rng.randint(1, self.max_number) for _ in range(rng.randint(self.lo, self.hi))]
            solution = _random_path(rng, numbers, ops=self.ops)
            target = solution[1]
            if not 1 <= target <= self.max_target or target in numbers:
                continue
            rate = hit_rate(numbers, target, self.ops) if filtered else None
            if rate is not None and not self.min_hit_rate <= rate <= self.max_hit_rate:
                continue
            budget = rng.randint(1, self.max_failed + 1)
            attempts = bounded_search(rng, numbers, target, budget, self.ops)
            solved = attempts[-1][1] == target
            if solved or not self.solved_only:
                break
        # drawn only when asked, so recheck = 0 keeps the problems of earlier versions
        recheck = solved and self.recheck > 0.0 and rng.random() < self.recheck
        # a give-up trace answers with its closest attempt (and scores 0); the reference answer is right
        closest = min(attempts, key=lambda a: abs(a[1] - target))
        prompt = f"Make {target} from {' '.join(map(str, numbers))}"
        meta = {
            "numbers": numbers,
            "target": target,
            "attempts": len(attempts),
            "solved": solved,
            "trace_answer": self._answer(attempts[-1] if solved else closest),
        }
        if rate is not None:
            meta["hit_rate"] = rate
        return Problem(
            id=prompt,
            prompt=prompt,
            answer=self._answer(solution),
            solution=format_trace(attempts, target, self.wait, recheck),
            meta=meta,
        )

    def check(self, answer: str, problem: Problem) -> float:
        """1.0 when the answer reaches the target from the given numbers, each used at most once.

        An expression (a trailing "= target" allowed) is parsed, never executed; a step chain
        "a op b=c,..." is replayed (`check_steps`).
        """
        numbers, target = problem.meta["numbers"], problem.meta["target"]
        first = answer.strip().splitlines()[0] if answer.strip() else ""
        if _STEP.fullmatch(first.split(",", 1)[0].removesuffix(" ok")):
            return 1.0 if check_steps(first, numbers, target) else 0.0
        expr = first.split("=", 1)[0].strip()
        result = evaluate_arithmetic(expr)
        if result is None:
            return 0.0
        value, used = result
        available = Counter(numbers)
        if any(count > available[x] for x, count in Counter(used).items()):
            return 0.0
        return 1.0 if value == target else 0.0


def search_success(rate: float, attempts: int) -> float:
    """P(at least one of `attempts` independent random attempts hits) for a problem of hit rate `rate`."""
    return 1.0 - math.pow(1.0 - rate, attempts)


def verified_search_reward(completion: str, problem: Problem) -> float:
    """-1.0 when the thinking claims a hit it did not make (a line ending " ok" whose step chain does not
    replay to the target), else 0.0: a reward term that makes a false "ok" worse than an honest "no".

    Without it a false claim costs the same as giving up (both score 0), so GRPO can learn to stop
    verifying instead of searching longer. Use it as ``reward.names = ["accuracy", "format",
    "r1kit.tasks.countdown:verified_search_reward"]``. Never raises.
    """
    try:
        think = completion.split("</think>", 1)[0] if isinstance(completion, str) else ""
        numbers, target = problem.meta["numbers"], problem.meta["target"]
        for line in think[:MAX_TRACE_CHARS].split("\n"):
            line = line.strip()
            if line.endswith(" ok"):
                chain = line.split(",", 1)[1] if line.startswith("Wait,") else line
                if not check_steps(chain.strip().removeprefix(CHECK), numbers, target):
                    return -1.0
        return 0.0
    except Exception:  # odd input: no claim to judge
        return 0.0
