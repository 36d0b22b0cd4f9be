"""Addition and multiplication with column-by-column worked solutions a tiny model can learn.

Addition of 347 and 589 (docs/LOG.md): prompt "347+589", reasoning
"7+9+0=16,4+8+1=13,3+5+1=09" (per column, least significant first: digit + digit + carry-in =
carry-out digit), answer "936". Multiplication by one digit: "347*8" -> "7*8+0=56,4*8+5=37,3*8+3=27"
-> "2776"; longer multipliers add one line per partial product, then column additions.
"""

from __future__ import annotations

import random

from r1kit.tasks.base import Problem, ProceduralTask


def _digit_range(
    digits: int | tuple[int, int] | None, min_digits: int | None, max_digits: int | None
) -> tuple:
    """Resolve `digits=4`, `digits=(1, 4)` or `min_digits/max_digits` into (lo, hi)."""
    if digits is not None:
        lo, hi = (digits, digits) if isinstance(digits, int) else tuple(digits)
    else:
        lo, hi = min_digits or 1, max_digits or min_digits or 4
    if not 1 <= lo <= hi <= 60:
        raise ValueError(f"digit range must satisfy 1 <= min <= max <= 60, got {lo}..{hi}")
    return int(lo), int(hi)


def _random_number(rng: random.Random, lo: int, hi: int) -> int:
    """A number whose digit count is uniform in [lo, hi] (no leading zero)."""
    n = rng.randint(lo, hi)
    return rng.randint(10 ** (n - 1) if n > 1 else 0, 10**n - 1)


def addition_steps(numbers: list[int]) -> str:
    """Column working for the sum of `numbers`: "7+9+0=16,4+8+1=13,3+5+1=09".

    Each step adds one column's digits and the carry-in; the result is written with at least two
    digits (carry-out, then the column digit).
    """
    width = max(len(str(x)) for x in numbers)
    columns = [str(x).zfill(width)[::-1] for x in numbers]
    carry, steps = 0, []
    for i in range(width):
        digits = [int(c[i]) for c in columns]
        total = sum(digits) + carry
        steps.append("+".join(map(str, digits)) + f"+{carry}={total:02d}")
        carry = total // 10
    return ",".join(steps)


def multiplication_steps(a: int, digit: int) -> str:
    """Column working for a * digit: "7*8+0=56,4*8+5=37,3*8+3=27" (digit*digit + carry-in)."""
    carry, steps = 0, []
    for c in str(a)[::-1]:
        total = int(c) * digit + carry
        steps.append(f"{c}*{digit}+{carry}={total:02d}")
        carry = total // 10
    return ",".join(steps)


class AdditionTask(ProceduralTask):
    """Integer addition "a+b" with a column-by-column worked solution; the answer is a+b.

    digits: operand length, an int (exactly that many digits) or a (min, max) range; each operand's
    length is drawn uniformly in the range. `min_digits`/`max_digits` are the same range spelled out.
    terms: how many numbers are added (2 by default); more terms make longer reasoning.
    """

    name = "addition"

    def __init__(
        self,
        digits: int | tuple[int, int] | None = None,
        min_digits: int | None = None,
        max_digits: int | None = None,
        terms: int = 2,
    ):
        """See the class docstring; the default is 1..4-digit operands."""
        self.lo, self.hi = _digit_range(digits, min_digits, max_digits)
        if not 2 <= terms <= 10:
            raise ValueError(f"terms must be in 2..10, got {terms}")
        self.terms = terms

    def config(self) -> dict:
        """The knobs: digit range and number of terms."""
        return {"min_digits": self.lo, "max_digits": self.hi, "terms": self.terms}

    def sample(self, rng: random.Random) -> Problem:
        """Draw one sum."""
        numbers = [_random_number(rng, self.lo, self.hi) for _ in range(self.terms)]
        prompt = "+".join(map(str, numbers))
        return Problem(
            id=prompt,
            prompt=prompt,
            answer=str(sum(numbers)),
            solution=addition_steps(numbers),
            meta={"numbers": numbers, "digits": max(len(str(x)) for x in numbers)},
        )


class MultiplicationTask(ProceduralTask):
    """Integer multiplication "a*b" with partial-product working; the answer is a*b.

    digits: length of the first operand (int or (min, max) range); multiplier_digits: length of the
    second (1 by default: one line of column steps). With a longer multiplier each partial product
    gets a line "347*2: ...=694", then the shifted partials are summed column by column.
    """

    name = "multiplication"

    def __init__(
        self,
        digits: int | tuple[int, int] | None = None,
        min_digits: int | None = None,
        max_digits: int | None = None,
        multiplier_digits: int = 1,
    ):
        """See the class docstring; the default is a 1..4-digit number times a 1-digit number."""
        self.lo, self.hi = _digit_range(digits, min_digits, max_digits)
        if not 1 <= multiplier_digits <= 6:
            raise ValueError(f"multiplier_digits must be in 1..6, got {multiplier_digits}")
        self.multiplier_digits = multiplier_digits

    def config(self) -> dict:
        """The knobs: digit range of a and length of b."""
        return {"min_digits": self.lo, "max_digits": self.hi, "multiplier_digits": self.multiplier_digits}

    def sample(self, rng: random.Random) -> Problem:
        """Draw one product."""
        a = _random_number(rng, self.lo, self.hi)
        m = self.multiplier_digits
        b = rng.randint(2 if m == 1 else 10 ** (m - 1), 10**m - 1)
        prompt = f"{a}*{b}"
        return Problem(
            id=prompt, prompt=prompt, answer=str(a * b), solution=self.working(a, b), meta={"a": a, "b": b}
        )

    @staticmethod
    def working(a: int, b: int) -> str:
        """The worked solution of a*b."""
        if b < 10:
            return multiplication_steps(a, b)
        lines, total = [], 0
        for place, d in enumerate(str(b)[::-1]):
            partial = a * int(d) * 10**place
            shift = "0" * place
            lines.append(f"{a}*{d}: {multiplication_steps(a, int(d))} ={a * int(d)}{shift}")
            if place:
                lines.append(f"{total}+{partial}: {addition_steps([total, partial])} ={total + partial}")
            total += partial
        return "\n".join(lines)
