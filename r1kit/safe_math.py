"""Evaluate model-written maths without executing it, in bounded time.

Two tools:
- `evaluate_arithmetic(expr)`: an AST walker that allows only integer literals, + - * / and
  parentheses, with size bounds, computing exactly with Fractions (Countdown scoring).
- `math_equal(pred, gold)`: are two final answers the same number/expression? Plain numbers
  (3, -0.5, 1/2, \\frac{1}{2}, 1,000) are compared exactly in-process. Anything else goes to
  math-verify (sympy) in a worker process with a hard timeout: math-verify's own timeout uses
  signal.alarm, which fails off the main thread, and sympy can run for ever on inputs like
  9^{9^{9^9}}. The worker is killed and restarted when a comparison runs past its time.
Nothing here calls eval or exec.
"""

from __future__ import annotations

import ast
import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

# ----------------------------------------------------------------- arithmetic (Countdown)
MAX_EXPR_CHARS = 200
MAX_LITERAL_DIGITS = 12
_ARITH_CHARS = re.compile(r"[0-9+\-*/() \t]*")
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def evaluate_arithmetic(expr: str, max_chars: int = MAX_EXPR_CHARS) -> tuple[Fraction, list[int]] | None:
    """Exact value of an arithmetic expression and the integer literals it uses, or None.

    Allowed: non-negative integer literals (at most 12 digits), binary + - * /, parentheses,
    spaces. No unary minus, no powers, no names, no calls. Division by zero, an expression longer
    than `max_chars`, or any other syntax gives None. Never raises.
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
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j]
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


def candidate_answer(text: str) -> str:
    """The final-answer candidate of a model answer: the last \\boxed{} content, else the last 300 chars."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed.strip()
    return text.strip()[-MAX_MATH_CHARS:]


class MathVerifier:
    """math-verify in a worker process, with a hard per-call timeout; thread-safe.

    `equal(pred, gold)` returns True/False and never raises. The worker starts on first use
    (importing sympy takes a second or two) and is replaced when a call times out or it dies.
    """

    def __init__(self, timeout: float = 2.0, startup_timeout: float = 120.0):
        """timeout: seconds one comparison may take; startup_timeout: seconds to import math-verify."""
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._pid = None
        self._buffer = b""
        self._ready = False
        atexit.register(self.close)

    def _spawn(self) -> None:
        """Start a worker without waiting for it (it imports math-verify in the background)."""
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "r1kit.safe_math"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._pid = os.getpid()
        self._buffer = b""
        self._ready = False

    def _ensure_ready(self) -> None:
        if self._proc is None or self._pid != os.getpid() or self._proc.poll() is not None:
            self._proc = None  # a forked child must not share its parent's worker
            self._spawn()
        if not self._ready:
            if self._read_line(self.startup_timeout) != {"ready": True}:
                self._kill()
                raise RuntimeError("math-verify worker failed to start (is math-verify installed?)")
            self._ready = True

    def _read_line(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return None

    def _kill(self) -> None:
        if self._proc is not None and self._pid == os.getpid():
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def close(self) -> None:
        """Stop the worker (it also exits by itself when this process ends)."""
        with self._lock:
            self._kill()

    def equal(self, pred: str, gold: str) -> bool:
        """Whether math-verify finds `pred` equivalent to `gold` (both short LaTeX/plain answers)."""
        with self._lock:
            try:
                self._ensure_ready()
                self._proc.stdin.write(json.dumps({"pred": pred, "gold": gold}).encode() + b"\n")
                self._proc.stdin.flush()
                reply = self._read_line(self.timeout)
            except Exception:  # worker missing, dead or broken pipe: treat as not equal
                reply = None
            if reply is None:
                self._kill()
                self._spawn()  # warm up the replacement while the caller goes on
                return False
            return bool(reply.get("equal"))


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


def _worker_main() -> None:
    """Worker loop: one JSON request per line on stdin, one {"equal": bool} per line on stdout."""
    from math_verify import parse, verify

    out = sys.stdout.buffer
    out.write(b'{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            gold = parse(_as_latex(request["gold"]), parsing_timeout=None)
            pred = parse(_as_latex(request["pred"]), parsing_timeout=None)
            equal = bool(gold and pred and verify(gold, pred, timeout_seconds=None))
        except Exception:
            equal = False
        out.write(json.dumps({"equal": equal}).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    _worker_main()
