"""Completions scored per second, for the built-in tasks, math answers and the generic rewards.

    python benchmarks/bench_rewards.py            # default run, well under 30 s
    python benchmarks/bench_rewards.py --n 20000  # more completions per row

Half of the completions are the reference solution, half a wrong answer; the math rows use short
boxed answers (numbers, compared in-process) and symbolic ones (math-verify in the worker process).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from r1kit.rewards import combine, format_reward, language_reward, overlong_reward
from r1kit.safe_math import default_verifier
from r1kit.tasks import get_task


def _time(score, pairs) -> tuple[float, float]:
    start = time.perf_counter()
    total = sum(score(c, p) for c, p in pairs)
    return time.perf_counter() - start, total / max(1, len(pairs))


def _task_pairs(task, n):
    problems = task.problems("train", n // 2, seed=0)
    right = [(task.completion(p), p) for p in problems]
    wrong = [(f"{p.solution}\n</think>\n{p.answer}7", p) for p in problems]
    return right + wrong


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000, help="completions per task row")
    parser.add_argument("--n-symbolic", type=int, default=200, help="completions for the symbolic math row")
    args = parser.parse_args(argv)

    rows = []
    for label, name, kwargs in [
        ("addition, 4 digits", "addition", {"digits": 4}),
        ("multiplication, 4x1 digits", "multiplication", {"digits": 4}),
        ("multiplication, 3x2 digits", "multiplication", {"digits": 3, "multiplier_digits": 2}),
        ("countdown, 4 numbers", "countdown", {"numbers": 4}),
    ]:
        task = get_task(name, **kwargs)
        pairs = _task_pairs(task, args.n)
        rows.append((f"{label} (task.score)", len(pairs), *_time(task.score, pairs)))

    gym = get_task("gym:chain_sum")
    pairs = _task_pairs(gym, min(args.n, 1000))
    rows.append(("reasoning-gym chain_sum (score_answer)", len(pairs), *_time(gym.score, pairs)))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "math.jsonl"
        records = [
            {"problem": f"p{i}", "answer": f"\\frac{{{i}}}{{{i + 1}}}"} for i in range(1, args.n // 2 + 1)
        ]
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
        math_task = get_task(f"math:{path}", hash_split=False)
        problems = math_task.problems("test")
        numeric = [
            (f"so\n</think>\nThe answer is \\boxed{{{i + 1}/{i + 2}}}.", p) for i, p in enumerate(problems)
        ]
        numeric += [(f"so\n</think>\n\\boxed{{{i}.5}}", p) for i, p in enumerate(problems)]
        rows.append(("math, numeric answers (in-process)", len(numeric), *_time(math_task.score, numeric)))
        default_verifier().equal("1", "1")  # worker start-up is not part of the throughput
        symbolic = [
            (f"so\n</think>\n\\boxed{{\\frac{{{i + 1}\\sqrt{{2}}}}{{{i + 2}\\sqrt{{2}}}}}}", p)
            for i, p in enumerate(problems[: args.n_symbolic])
        ]
        rows.append(
            ("math, symbolic answers (math-verify worker)", len(symbolic), *_time(math_task.score, symbolic))
        )

    task = get_task("addition", digits=4)
    pairs = _task_pairs(task, args.n)
    combined = combine([(task.reward, 1.0), (format_reward, 0.1), (language_reward("en"), 0.1)])
    rows.append(("format reward", len(pairs), *_time(format_reward, pairs)))
    rows.append(("overlong reward (chars)", len(pairs), *_time(overlong_reward(64, 16), pairs)))
    rows.append(("language reward (en)", len(pairs), *_time(language_reward("en"), pairs)))
    rows.append(("accuracy + format + language", len(pairs), *_time(combined, pairs)))

    print(f"`python benchmarks/bench_rewards.py --n {args.n} --n-symbolic {args.n_symbolic}`")
    print(f"Python {platform.python_version()} on {platform.machine()}, {sys.platform}\n")
    print("| reward | completions | seconds | completions/s | mean value |")
    print("|---|---:|---:|---:|---:|")
    for label, count, seconds, mean in rows:
        print(f"| {label} | {count} | {seconds:.3f} | {count / max(seconds, 1e-9):,.0f} | {mean:.2f} |")


if __name__ == "__main__":
    main()
