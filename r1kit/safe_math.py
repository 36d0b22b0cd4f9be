"""Evaluate model-written maths without executing it, in bounded time.

Two tools:
- `evaluate_arithmetic(expr)`: an AST walker that allows only integer literals, + - * / and
  parentheses, with size bounds, computing exactly with Fractions (Countdown scoring).
- `math_equal(pred, gold)`: are two final answers the same number/expression? Plain numbers
  (3, -0.5, 1/2, \\frac{1}{2}, 1,000) are compared exactly in-process. Anything else is bounded
  statically (`is_tractable`: length, nesting, exponents) and then goes to math-verify (sympy) in
  a confined worker process (`r1kit.sandbox`) with a hard timeout: math-verify's own timeout uses
  signal.alarm, which fails off the main thread, sympy can run for ever on inputs like
  9^{9^{9^9}}, and math-verify's plain-expression path calls sympy's parse_expr, which runs
  Python (the worker uses LaTeX extraction only). A worker past its time is killed and replaced.
Nothing here calls eval or exec.
"""

from __future__ import annotations

import ast
import re
import threading
from fractions import Fraction

from r1kit.sandbox import Sandbox

# ----------------------------------------------------------------- arithmetic (Countdown)
MAX_EXPR_CHARS = 200
MAX_LITERAL_DIGITS = 12
_ARITH_CHARS = re.compile(r"[0-9+\-*/() \t]*")
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def evaluate_arithmetic(
    expr: str, max_chars: int = MAX_EXPR_CHARS, unary: bool = False
) -> tuple[Fraction, list[int]] | None:
    """Exact value of an arithmetic expression and the integer literals it uses, or None.

    Allowed: non-negative integer literals (at most 12 digits), binary + - * /, parentheses,
    spaces, and with `unary=True` a leading - or +. No powers, no names, no calls. Division by
    zero, an expression longer than `max_chars`, or any other syntax gives None. Never raises.
    """
    if not isinstance(expr, str) or len(expr) > max_chars or not _ARITH_CHARS.fullmatch(expr):
        return None
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    numbers: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            if node.value >= 10**MAX_LITERAL_DIGITS:
                raise ValueError("literal too large")
            numbers.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if right == 0:
                raise ZeroDivisionError
            return left / right
        if unary and isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        raise ValueError(f"disallowed syntax: {type(node).__name__}")

    try:
        return walk(tree.body), numbers
    except (ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return None


# ----------------------------------------------------------------- final answers
MAX_MATH_CHARS = 300  # longer candidate answers are not compared (MATH answers are far shorter)
MAX_NESTING = 24
MAX_POWERS = 6
_LATEX_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\$|\\displaystyle|\s")
_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}$")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRAC = re.compile(r"([-+]?)\\[dt]?frac\{([-+]?\d+)\}\{([-+]?\d+)\}")
_SLASH = re.compile(r"([-+]?\d+)/([-+]?\d+)")
_BIG_EXPONENT = re.compile(r"\^\s*\{?\s*[-+]?\d{4,}|\d{4,}\s*!|\*\*|\^\s*[\w.]+\s*\^")


def brace_group(text: str, i: int) -> str | None:
    """What stands inside the brace group that opens at ``text[i]`` (a "{"), nested braces matched;
    None when it is never closed. ``brace_group("\\frac{a{b}}{c}", 5) == "a{b}"``."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def extract_boxed(text: str, max_scan: int = 200_000) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in `text`, braces matched; None if absent.

    Scans at most the last `max_scan` characters, so huge inputs stay cheap.
    """
    if not isinstance(text, str):
        return None
    text = text[-max_scan:]
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    while start >= 0:
        i = text.find("{", start)
        if i >= 0 and text[start:i].strip() in ("\\boxed", "\\fbox"):
            group = brace_group(text, i)
            if group is not None:
                return group
        start = max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))
    return None


def normalize_answer(text: str) -> str:
    """Strip what never changes an answer's meaning: spaces, $, \\left/\\right, a \\text{} wrapper, a final '.'."""
    text = _LATEX_NOISE.sub("", text)
    match = _TEXT_WRAPPER.match(text)
    if match:
        text = match.group(1)
    return text.rstrip(".")


def parse_number(text: str) -> Fraction | None:
    """An exact number from "3", "-0.25", "1,000", "1/2", "\\frac{1}{2}", "-\\dfrac{3}{4}"; else None."""
    text = normalize_answer(text)
    if not text or len(text) > 64:
        return None
    try:
        if _NUMBER.fullmatch(text):
            return Fraction(text)
        if _THOUSANDS.fullmatch(text):
            return Fraction(text.replace(",", ""))
        for pattern in (_FRAC, _SLASH):
            match = pattern.fullmatch(text)
            if match:
                groups = match.groups()
                sign = -1 if len(groups) == 3 and groups[0] == "-" else 1
                num, den = Fraction(groups[-2]), Fraction(groups[-1])
                return None if den == 0 else sign * num / den
    except (ValueError, ZeroDivisionError):
        return None
    return None


def is_tractable(text: str) -> bool:
    """Static bounds on an answer before it reaches sympy.

    Rejects long answers, deep nesting, big exponents or factorials, more than one "!", and towers
    of powers (a "^" inside an exponent or applied to a bracket holding a "^"), which sympy would
    try to evaluate exactly. The worker's timeout catches whatever slips through.
    """
    if len(text) > MAX_MATH_CHARS or text.count("^") > MAX_POWERS or text.count("!") > 1:
        return False
    if _BIG_EXPONENT.search(text):
        return False
    depth = 0
    open_at: list[int] = []  # positions of the open brackets
    power_depths: list[int] = []  # bracket depths of the exponents being read
    for i, ch in enumerate(text):
        if ch in "({[":
            depth += 1
            open_at.append(i)
            if depth > MAX_NESTING:
                return False
        elif ch in ")}]":
            depth -= 1
            start = open_at.pop() if open_at else 0
            closes_exponent = bool(power_depths) and depth < power_depths[-1]
            if closes_exponent:
                power_depths.pop()
            if text[i + 1 : i + 2] == "^" and (closes_exponent or "^" in text[start:i]):
                return False
        elif ch == "^":
            if power_depths:
                return False
            if text[i + 1 : i + 2] == "{":
                power_depths.append(depth + 1)
    return True


MAX_EXPRESSION_NESTING = 64
MAX_EXPRESSION_DIGITS = 200  # digits in one number: sympy takes seconds on a few thousand
_LONG_NUMBER = re.compile(rf"\d{{{MAX_EXPRESSION_DIGITS + 1}}}|\d\s*[eE]\s*[-+]?\s*\d{{4}}")  # or 1e9999
MAX_EXPRESSION_POWERS = 100  # ** or ^ operators in one answer (each is checked with a scan)
_HUGE_FACTORIAL = re.compile(
    r"(?<!\d)\d{4,}\s*!|\b(?:factorial|factorial2|subfactorial|gamma|binomial|Integral|Sum|Product)\s*\("
)
_OPENERS, _CLOSERS = "([{", ")]}"


def _group_end(text: str, start: int) -> int:
    """Index just past the bracket group opening at `start`, or -1 if it never closes."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in _OPENERS:
            depth += 1
        elif text[i] in _CLOSERS:
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


def _group_start(text: str, end: int) -> int:
    """Index of the bracket opening the group that closes at `end`, or -1."""
    depth = 0
    for i in range(end, -1, -1):
        if text[i] in _CLOSERS:
            depth += 1
        elif text[i] in _OPENERS:
            depth -= 1
            if depth == 0:
                return i
    return -1


def is_bounded_expression(text: str, max_nesting: int = MAX_EXPRESSION_NESTING) -> bool:
    """Static bounds on a Python/sympy-syntax answer before a third-party scorer evaluates it.

    Rejects bracket nesting deeper than `max_nesting`, numbers of more than 200 digits or with an
    exponent of 4 or more digits (1e9999), more than
    100 powers, power
    towers (a ** or ^ in or right after an exponent: 9**9**9, 2**(10**10)), exponents of 4 or more
    digits, a power of a power of a power ((((9**99)**99)**99), and factorials, gamma, binomials,
    sums and integrals (which sympy would try to evaluate). Whatever slips through is cut off by
    the sandbox's deadline.
    """
    if not isinstance(text, str):
        return False
    depth = 0
    for ch in text:
        if ch in _OPENERS:
            depth += 1
            if depth > max_nesting:
                return False
        elif ch in _CLOSERS:
            depth -= 1
    if _LONG_NUMBER.search(text) or _HUGE_FACTORIAL.search(text):
        return False
    text = text.replace("**", "^")
    if text.count("^") > MAX_EXPRESSION_POWERS:
        return False
    i = text.find("^")
    while i >= 0:
        j = i + 1
        while j < len(text) and text[j] in " +-":
            j += 1
        k = j
        if k < len(text) and text[k].isdigit():
            while k < len(text) and (text[k].isdigit() or text[k] == "."):
                k += 1
            if sum(c.isdigit() for c in text[j:k]) >= 4:
                return False
        else:
            while k < len(text) and (text[k].isalnum() or text[k] in "_."):
                k += 1
            if k < len(text) and text[k] in _OPENERS:
                end = _group_end(text, k)
                if end < 0 or "^" in text[k:end]:
                    return False
                k = end
        while k < len(text) and text[k] == " ":
            k += 1
        if k < len(text) and text[k] == "^":
            return False
        b = i - 1
        while b >= 0 and text[b] == " ":
            b -= 1
        if b >= 0 and text[b] in _CLOSERS:  # (base)^exponent: a power of a power stays small
            inner = text[_group_start(text, b) : b + 1]
            exponent = text[j:k]
            if "^" in inner and (
                sum(c.isdigit() for c in exponent) > 3 or any(c.isalpha() for c in exponent)
            ):
                return False
            if any(inner[m] in _CLOSERS and inner[m + 1 : m + 2] == "^" for m in range(len(inner))):
                return False
        i = text.find("^", i + 1)
    return True


MAX_EXPRESSION_NODES = 2000
# Functions a symbolic answer may call (sympy names); anything else called is refused.
SYMPY_FUNCTIONS = frozenset(
    "sqrt cbrt root exp log ln sin cos tan cot sec csc asin acos atan acot atan2 sinh cosh tanh coth "
    "asinh acosh atanh Abs abs sign re im conjugate floor ceiling Rational Integer Min Max".split()
)
_SYMPY_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.BitXor)
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def is_symbolic_expression(text: str) -> bool:
    """Whether `text` is a plain symbolic expression that sympy can parse without running code.

    `is_bounded_expression` first, then a Python-syntax AST whitelist: numbers, names without
    underscores, + - * / ** ^, unary signs, and calls of `SYMPY_FUNCTIONS` by name with positional
    arguments. No attributes, subscripts, strings, lambdas, comprehensions or keywords, so
    `sympy.parse_expr` (an eval) on such text only builds sympy expressions.
    """
    if not is_bounded_expression(text):
        return False
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    nodes = 0
    for node in ast.walk(tree):
        nodes += 1
        if nodes > MAX_EXPRESSION_NODES:
            return False
        if isinstance(node, (ast.Expression, ast.Load, ast.USub, ast.UAdd, *_SYMPY_BINOPS)):
            continue
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, _SYMPY_BINOPS):
                return False
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                return False
        elif isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):
                return False
        elif isinstance(node, ast.Name):
            if not _IDENTIFIER.fullmatch(node.id):
                return False
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in SYMPY_FUNCTIONS) or node.keywords:
                return False
        else:
            return False
    return True


def candidate_answer(text: str) -> str:
    """The final-answer candidate of a model answer: the last \\boxed{} content, else the last 300 chars."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed.strip()
    return text.strip()[-MAX_MATH_CHARS:]


class MathVerifier:
    """math-verify in confined worker processes (`r1kit.sandbox`) with a hard per-call timeout.

    `equal(pred, gold)` returns True/False within `timeout` seconds and never raises; thread-safe.
    The workers start on first use (importing sympy takes a second or two) and a worker that runs
    past its time is killed and replaced.
    """

    def __init__(self, timeout: float = 2.0, startup_timeout: float = 120.0, workers: int = 2):
        """timeout: seconds one comparison may take; startup_timeout: seconds to import math-verify."""
        warm_up = (("math", "$x^2+2x+1$", "$(x+1)^2$"), ("math", "$\\frac{\\sqrt{2}}{2}$", "$0.5$"))
        self.sandbox = Sandbox(
            ("math_verify",), warm_up, workers=workers, timeout=timeout, startup_timeout=startup_timeout
        )

    def close(self) -> None:
        """Stop the workers."""
        self.sandbox.close()

    def equal(self, pred: str, gold: str) -> bool:
        """Whether math-verify finds `pred` equivalent to `gold` (both short LaTeX/plain answers)."""
        return self.sandbox.call("math", _as_latex(pred), _as_latex(gold), default=False) is True


_default_verifier: MathVerifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> MathVerifier:
    """The process-wide MathVerifier (one worker shared by all threads), created on first use."""
    global _default_verifier
    with _default_lock:
        if _default_verifier is None:
            _default_verifier = MathVerifier()
        return _default_verifier


def math_equal(pred: str, gold: str, verifier: MathVerifier | None = None) -> bool:
    """Whether answer `pred` equals reference `gold` (1/2 == 0.5 == \\frac{1}{2}); never raises.

    pred may be a whole answer text: its last \\boxed{} is used when present.
    """
    try:
        if not isinstance(pred, str) or not isinstance(gold, str):
            return False
        pred = candidate_answer(pred)
        gold = candidate_answer(gold)
        if not pred or not gold:
            return False
        if normalize_answer(pred) == normalize_answer(gold):
            return True
        pred_value, gold_value = parse_number(pred), parse_number(gold)
        if pred_value is not None and gold_value is not None:
            return pred_value == gold_value
        if not (is_tractable(pred) and is_tractable(gold)):
            return False
        return (verifier or default_verifier()).equal(pred, gold)
    except Exception:
        return False


def _as_latex(text: str) -> str:
    """Wrap a bare answer so math-verify's LaTeX extraction sees it."""
    return text if "$" in text or "\\boxed" in text else f"${text}$"
