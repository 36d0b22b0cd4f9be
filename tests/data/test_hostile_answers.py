"""Hostile model answers: code, huge powers and literals, deep nesting, giant completions.

Every task scorer (built-in tasks, reasoning-gym datasets scored by r1kit and in the sandbox,
math-verify) must return a float in [0, 1], within a bound, and leave nothing on the filesystem.
Time limits here are generous on purpose (the machine running CI may be loaded); the sandbox's own
deadline is what keeps each call near 2 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import r1kit
from r1kit.sandbox import Sandbox, _seccomp_program
from r1kit.tasks import get_task
from r1kit.tasks.gym import SANDBOX_PRELOAD, scoring_mode

GENEROUS = 30.0  # seconds: far above the 2 s bound, so only a hang fails the test


def code_answers(sentinel: str) -> list[str]:
    """Answers that try to run code (each would create `sentinel` if it ran)."""
    touch = f"__import__('os').system('touch {sentinel}')"
    return [
        touch,
        f"(lambda: {touch})()",
        f"[{touch} for _ in range(1)]",
        f"open('{sentinel}', 'w').write('x')",
        f"__builtins__.__dict__['exec'](\"open('{sentinel}', 'w')\")",
        f"exec(\"import os; os.system('touch {sentinel}')\")",
        f"eval(compile(\"open('{sentinel}', 'w')\", 's', 'exec'))",
        "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0]"
        f"(['touch', '{sentinel}'])",
        f"__import__('subprocess').run(['touch', '{sentinel}'])",
        f"__import__('ctypes').CDLL(None).system(b'touch {sentinel}')",
        f"__import__('pathlib').Path('{sentinel}').touch()",
        f"__import__('shutil').copy('/etc/hostname', '{sentinel}')",
        "__import__('socket').create_connection(('127.0.0.1', 9))",
        f"Symbol('x').__class__.__init__.__globals__['__builtins__']['open']('{sentinel}', 'w')",
        "x.__class__.__mro__[-1].__subclasses__()",
        f"\\boxed{{__import__('os').system('touch {sentinel}')}}",
        f"[[{touch}]]",
    ]


HUGE_POWERS = [
    "9**9**9**9",
    "9^9^9^9",
    "2**10**10",
    "10**(10**100)",
    "(9**9)**(9**9)",
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{10^{10^{10}}}",
    "factorial(10**10)",
    "99999999!",
    "x**(9**9**9) + 1",
    "2**2**2**2**2**2",
    "integrate(x**(10**10), x)",
]
HUGE_LITERALS = [
    "1" * 1_000_000,
    "1e999999999",
    "0." + "9" * 100_000,
    "9" * 5_000 + "*" + "9" * 5_000,
    "1/" * 50_000 + "1",
    "1" * 4300 + ".5",
    "[" + ",".join(["1e308"] * 50_000) + "]",
    "-" * 100_000 + "1",
]
DEEP_NESTING = [
    "(" * 10_000 + "1" + ")" * 10_000,
    "[" * 10_000 + "]" * 10_000,
    "{" * 10_000 + "}" * 10_000,
    "\\frac{" * 2_000,
    "\\boxed{" + "x^{" * 300 + "}" * 300 + "}",
    "(" * 100_000,
    "-(" * 5_000 + "1" + ")" * 5_000,
    '{"a":' * 5_000 + "1" + "}" * 5_000,
]


def giant_completions() -> list[str]:
    """Whole completions, not answers: huge reasoning, many tags, a huge answer."""
    return [
        "x" * 2_000_000 + "\n</think>\n42",
        "</think>" * 20_000,
        "<think>" * 20_000 + "</think>1",
        "ok\n</think>\n" + "9" * 3_000_000,
        "\u7b54" * 500_000 + "</think>" + "(" * 500_000,
    ]


def hostile_completions(sentinel: str) -> dict[str, list[str]]:
    """Hostile completions by area: each answer follows a short reasoning and `</think>`."""
    areas = {
        "code": code_answers(sentinel),
        "huge powers": HUGE_POWERS,
        "huge literals": HUGE_LITERALS,
        "deep nesting": DEEP_NESTING,
    }
    out = {area: [f"reasoning\n</think>\n{a}" for a in answers] for area, answers in areas.items()}
    out["giant completions"] = giant_completions()
    return out


def _math_task(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"problem": "half of 1?", "answer": "\\frac{1}{2}"}) + "\n", encoding="utf-8")
    return get_task(f"math:{path}", hash_split=False)


BUILTIN = [("addition", {}), ("multiplication", {"multiplier_digits": 2}), ("countdown", {})]
GYM_OWN = [
    "countdown", "puzzle24", "chain_sum", "products", "number_sorting", "basic_arithmetic", "gcd",
    "binary_matrix", "spiral_matrix", "string_insertion", "n_queens",
]  # fmt: skip
# The sympy scorers get every hostile answer; the other sandboxed datasets a sample.
GYM_SANDBOXED_FULL = ("polynomial_multiplication", "simple_integration", "intermediate_integration")
GYM_SANDBOXED = [
    *GYM_SANDBOXED_FULL, "polynomial_equations", "complex_arithmetic", "decimal_arithmetic", "zebra_puzzles",
    "family_relationships", "codeio",
]  # fmt: skip


@pytest.fixture(scope="module")
def fast_gym_sandbox():
    """One sandbox for all the sandboxed datasets, with a 0.5 s deadline so hangs stay quick."""
    setup = tuple(("gym_prepare", name, ()) for name in GYM_SANDBOXED)
    box = Sandbox(SANDBOX_PRELOAD, setup, timeout=0.5)
    box.start()

    def use(task):
        task._sandbox = lambda: box
        return box

    yield use
    box.close()


def _assert_bounded(task, completion, problem, limit=GENEROUS):
    start = time.monotonic()
    value = task.reward(completion, problem)
    elapsed = time.monotonic() - start
    assert isinstance(value, float) and 0.0 <= value <= 1.0, (task, value, completion[:60])
    assert elapsed < limit, (task, elapsed, completion[:60])


def test_scoring_modes_match_the_readme():
    assert all(scoring_mode(name) == "own" for name in GYM_OWN)
    assert all(scoring_mode(name) == "sandbox" for name in GYM_SANDBOXED)


def test_builtin_tasks_survive_hostile_answers(tmp_path):
    sentinel = str(tmp_path / "pwned")
    tasks = [get_task(name, **kwargs) for name, kwargs in BUILTIN]
    math_task = _math_task(tmp_path)
    tasks.append(math_task)
    counts = {}
    for task in tasks:
        pool = task.problems("test" if task is math_task else "train", 1 if task is math_task else 200)
        problem = next(p for p in pool if p.meta.get("solved", True))  # a trace that reaches its answer
        for area, completions in hostile_completions(sentinel).items():
            counts[area] = counts.get(area, 0) + len(completions)
            for completion in completions:
                _assert_bounded(task, completion, problem)
        assert task.reward(task.completion(problem), problem) == 1.0  # still scores right afterwards
    assert not os.path.exists(sentinel)
    assert sorted(os.listdir(tmp_path)) == ["m.jsonl"]
    assert sum(counts.values()) >= 4 * 50


@pytest.mark.parametrize("dataset", GYM_OWN)
def test_own_scored_gym_datasets_survive_hostile_answers(tmp_path, dataset):
    sentinel = str(tmp_path / "pwned")
    task = get_task(f"gym:{dataset}")
    problem = task.problems("train", 1)[0]
    for completions in hostile_completions(sentinel).values():
        for completion in completions:
            _assert_bounded(task, completion, problem)
    assert task.reward(f"x</think>{problem.answer}", problem) == 1.0
    assert not os.path.exists(sentinel) and os.listdir(tmp_path) == []


@pytest.mark.parametrize("dataset", GYM_SANDBOXED)
def test_sandboxed_gym_datasets_survive_hostile_answers(tmp_path, dataset, fast_gym_sandbox):
    sentinel = str(tmp_path / "pwned")
    task = get_task(f"gym:{dataset}")
    box = fast_gym_sandbox(task)
    # (intermediate_integration has problems sympy could not integrate: their reference holds Integral)
    problems = [p for p in task.problems("train", 6) if "Integral(" not in p.answer][:3]
    assert box.warm_up(120)
    assert [task.reward(f"x</think>{p.answer}", p) for p in problems] == [1.0] * 3
    for completions in hostile_completions(sentinel).values():
        for completion in completions if dataset in GYM_SANDBOXED_FULL else completions[:3]:
            _assert_bounded(task, completion, problems[0])
    assert not os.path.exists(sentinel) and os.listdir(tmp_path) == []
    assert box.warm_up(120)  # the killed workers were replaced
    assert task.reward(f"x</think>{problems[1].answer}", problems[1]) == 1.0


def test_default_deadline_holds_and_the_spare_worker_answers(tmp_path):
    """At the default 2 s deadline: a plain expression that keeps sympy's simplify busy for minutes
    returns 0.0 in about 2 s, and the next call is served by the spare worker while the killed one
    restarts."""
    task = get_task("gym:simple_integration")
    box = task._sandbox()
    problem = task.problems("train", 1)[0]
    assert box.warm_up(120) and box.timeout == 2.0
    start = time.monotonic()
    assert task.reward("x</think>(x+y+z+1)**999", problem) == 0.0  # within the static bounds
    assert time.monotonic() - start < GENEROUS
    restarts = box.stats["restarts"]
    assert restarts >= 1
    assert task.reward(f"x</think>{problem.answer}", problem) == 1.0
    assert box.stats["restarts"] == restarts


def test_reasoning_gym_eval_would_run_code_without_r1kit(tmp_path):
    """The hole being closed: reasoning-gym's binary_matrix scorer evals the answer in-process.
    Run in a throwaway subprocess to show it, then check that r1kit's scorer does not."""
    sentinel = tmp_path / "ran"
    code = (
        "import reasoning_gym, sys; ds = reasoning_gym.create_dataset('binary_matrix', size=1, seed=0); "
        "ds.score_answer(sys.argv[1], ds[0])"
    )
    subprocess.run([sys.executable, "-c", code, f"open({str(sentinel)!r}, 'w')"], check=True, timeout=120)
    assert sentinel.exists()
    sentinel.unlink()
    task = get_task("gym:binary_matrix")
    problem = task.problems("train", 1)[0]
    assert task.reward(f"x</think>open({str(sentinel)!r}, 'w')", problem) == 0.0
    assert not sentinel.exists()


def test_worker_environment_is_clean(monkeypatch, tmp_path):
    """A worker inherits no environment variable and runs in its own empty directory.

    Probed through binary_matrix's eval (it runs in the worker): an answer that evaluates to the
    right matrix scores 0.1, anything else 0.0, so "matrix if condition else 0" reads a condition.
    """
    import reasoning_gym

    monkeypatch.setenv("R1KIT_TEST_SECRET", "hunter2")
    box = Sandbox(("reasoning_gym",), (("gym_prepare", "binary_matrix", ()),), workers=1)
    entry = reasoning_gym.create_dataset("binary_matrix", size=1, seed=0)[0]
    matrix = repr([[int(x) for x in row.split()] for row in entry["answer"].splitlines()])

    def holds(condition: str) -> bool:
        value = box.call("gym", f"{matrix} if {condition} else 0", entry, "binary_matrix", (), default=-1.0)
        assert value in (0.0, 0.1), value
        return value == 0.1

    try:
        assert holds("True") and not holds("False")
        assert holds("'R1KIT_TEST_SECRET' not in __import__('os').environ")
        assert holds("'hunter2' not in open('/proc/self/environ').read()")
        assert holds("__import__('os').listdir('.') == []")
        assert holds("'Max address space         2147483648' in open('/proc/self/limits').read()")
        # 80 GB asked for: MemoryError inside the worker under RLIMIT_AS, scored 0, worker kept.
        assert box.call("gym", "[0] * 10**10", entry, "binary_matrix", (), default=-1.0) == 0.0
        assert box.stats["restarts"] == 0
        assert holds("__import__('os').environ['HOME'].startswith(__import__('os').getcwd()[:-3])")
        assert holds(
            "set(__import__('os').environ) <= {'PATH', 'PYTHONPATH', 'HOME', 'TMPDIR', 'LANG', "
            "'PYTHONNOUSERSITE', 'PYTHONDONTWRITEBYTECODE', 'PYTHONHASHSEED', 'OMP_NUM_THREADS', "
            "'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'LC_CTYPE'}"
        )
    finally:
        box.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.uname().machine == "x86_64"), reason="x86-64"
)
def test_seccomp_filter_refuses_process_and_file_creation(tmp_path):
    """The filter alone (no audit hook) stops os.system, subprocess, writes, sockets and ctypes."""
    target = tmp_path / "made"
    code = f"""
import ctypes, os, socket, subprocess
from r1kit.sandbox import _install_seccomp
assert _install_seccomp()
libc = ctypes.CDLL(None)
attempts = [
    lambda: os.system('touch {target}') == 0 or 1 / 0,
    lambda: subprocess.run(['touch', '{target}']),
    lambda: open('{target}', 'w'),
    lambda: os.mkdir('{target}'),
    lambda: libc.system(b'touch {target}') == 0 or 1 / 0,
    lambda: socket.socket(),
    lambda: os.fork(),
]
refused = 0
for attempt in attempts:
    try:
        attempt()
    except Exception:
        refused += 1
print(refused, len(attempts), len(open('/etc/hostname').read()) >= 0)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(r1kit.__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.split() == ["7", "7", "True"], out.stderr[-500:]
    assert not target.exists()
    assert len(_seccomp_program()) < 256


def test_a_sandbox_that_cannot_start_returns_defaults():
    box = Sandbox(("no_such_module_r1kit",), workers=1, startup_timeout=60)
    with pytest.warns(UserWarning, match="cannot start"):
        assert box.call("math", "1", "1", default="fallback") == "fallback"
    assert box.broken and box.call("math", "1", "1", default=0.0) == 0.0
    box.close()
