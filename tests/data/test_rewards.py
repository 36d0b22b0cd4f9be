"""Rewards: values, composition, loading, and totality under adversarial input (fuzz, threads)."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1kit import rewards
from r1kit.rewards import (
    accuracy_reward,
    combine,
    format_reward,
    get_reward,
    language_reward,
    language_share,
    load_reward,
    overlong_penalty,
    overlong_reward,
)
from r1kit.safe_math import default_verifier
from r1kit.tasks import get_task

TIME_LIMIT = 1.0


def test_format_reward():
    assert format_reward("reasoning\n</think>\n42", None) == 1.0
    assert format_reward("<think>\nreasoning\n</think>\n42", None) == 1.0
    assert format_reward("\n</think>\n42", None) == 1.0
    assert format_reward("reasoning\n</think>\n  ", None) == 0.0
    assert format_reward("reasoning only", None) == 0.0
    assert format_reward("a</think>b</think>c", None) == 0.0
    assert format_reward("<think>a<think>b</think>c", None) == 0.0
    assert format_reward("a</think><think>c", None) == 0.0


def test_overlong_matches_dapo_formula():
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(90, 100, 20) == -0.5
    assert overlong_penalty(100, 100, 20) == -1.0
    assert overlong_penalty(101, 100, 20) == -1.0
    assert overlong_reward(10, 4)("x" * 8, None) == -0.5
    assert overlong_reward(10, 4, length_fn=lambda s: len(s.split()))("a b c d e f g h", None) == -0.5
    assert overlong_reward(10, 4, length_fn=lambda s: 1 / 0)("x" * 6, None) == 0.0

    class Chars:
        def encode(self, text):
            return list(text)

    assert overlong_reward(10, 4, tokenizer=Chars())("x" * 20, None) == -1.0


def test_language_consistency():
    assert language_share("the answer is four") == 1.0
    assert language_share("答案是 the", "zh") == 0.75
    assert language_share("答案是 the", "en") == 0.25
    assert language_share("12+3=15") == 1.0
    assert language_share("привет world", "ru") == 0.5
    assert language_reward("en")("思考 think\n</think>\n答案", None) == 1 / 3
    with pytest.raises(ValueError, match="unknown language"):
        language_reward("klingon")


def test_combine_and_load():
    task = get_task("addition", digits=2)
    p = task.problems("train", 1)[0]
    reward = combine(
        [
            (accuracy_reward(task), 1.0),
            ("r1kit.rewards:format_reward", 0.5),
            ("len", overlong_reward(10, 5), 1.0),
        ]
    )
    assert reward.names == ["accuracy", "format", "len"]
    good = task.completion(p)
    parts = reward.breakdown(good, p)
    assert parts["accuracy"] == 1.0 and parts["format"] == 1.0 and parts["len"] == -1.0
    assert parts["total"] == reward(good, p) == 0.5
    assert load_reward("r1kit.rewards:format_reward") is format_reward
    assert get_reward("accuracy", task=task)(good, p) == 1.0
    with pytest.raises(ImportError, match="no_such_module"):
        load_reward("no_such_module:fn")
    with pytest.raises(AttributeError, match="missing"):
        load_reward("r1kit.rewards:missing")
    with pytest.raises(ValueError, match="module:function"):
        load_reward("format_reward")
    with pytest.raises(ValueError, match="unique"):
        combine([(format_reward, 1.0), (format_reward, 1.0)])
    with pytest.raises(ValueError, match="unknown reward"):
        get_reward("nope")


# ------------------------------------------------------------------ fuzzing every reward
def _math_problem(tmp_path_factory) -> tuple:
    path = tmp_path_factory.mktemp("math") / "m.jsonl"
    path.write_text(json.dumps({"problem": "half of 1?", "answer": "\\frac{1}{2}"}) + "\n", encoding="utf-8")
    task = get_task(f"math:{path}", hash_split=False)
    return task, task.problems("test")[0]


@pytest.fixture(scope="module")
def all_rewards(tmp_path_factory):
    """(name, reward, problem) for every task scorer and every built-in reward."""
    out = []
    for name, kwargs in [("addition", {}), ("multiplication", {"multiplier_digits": 2}), ("countdown", {})]:
        task = get_task(name, **kwargs)
        out.append((name, task.reward, task.problems("train", 1)[0]))
    gym = get_task("gym:chain_sum")
    out.append(("gym:chain_sum", gym.reward, gym.problems("train", 1)[0]))
    math_task, math_problem = _math_problem(tmp_path_factory)
    out.append(("math", math_task.reward, math_problem))
    p = out[0][2]
    out += [
        ("format", format_reward, p),
        ("overlong", overlong_reward(64, 16), p),
        ("language_en", language_reward("en"), p),
        ("language_zh", language_reward("zh"), p),
        ("combined", combine([(out[0][1], 1.0), (format_reward, 0.1), (language_reward("en"), 0.1)]), p),
    ]
    default_verifier().equal("1", "1")  # start the math worker outside the timed calls
    return out


NASTY = [
    "",
    "\x00\x01\x02\xff",
    "</think>",
    "</think></think></think>",
    "<think>" * 1000,
    "(" * 100_000,
    "</think>" + "(" * 100_000,
    "</think>" + "9" * 100_000,
    "</think>" + "1/" * 50_000 + "1",
    "</think>" + "(1+" * 5_000 + "1" + ")" * 5_000,
    "</think>\\boxed{" + "{" * 10_000,
    "</think>\\boxed{" + "}" * 10_000,
    "</think>\\boxed{9^{9^{9^{9}}}}",
    "</think>\\boxed{10^{10^{10}}}",
    "</think>\\boxed{9^9^9^9}",
    "</think>\\boxed{((9^9)^9)^9}",
    "</think>\\boxed{99999999!}",
    "</think>\\boxed{\\binom{10^{8}}{5000}}",
    "</think>1e999999999",
    "</think>" + "\\frac{" * 2_000,
    "</think>\\boxed{" + "x^{" * 300 + "}" * 300 + "}",
    "</think>__import__('os').system('echo hi')",
    "</think>\ud800\udfff",
    "x" * 1_000_000,
    "</think>"
    + "".join(chr(random.Random(0).randrange(1, 0x10FFFF)) for _ in range(20_000)).replace("\ud800", ""),
    "</think>" + "a</think>" * 10_000,
    "答案" * 100_000 + "</think>42",
]


def _check_total(name, fn, completion, problem):
    start = time.perf_counter()
    value = fn(completion, problem)
    elapsed = time.perf_counter() - start
    assert isinstance(value, float), (name, type(value))
    assert value == value and abs(value) < 1e9, (name, value)
    assert elapsed < TIME_LIMIT, (name, elapsed, completion[:80])


def test_rewards_total_on_nasty_inputs(all_rewards):
    for name, fn, problem in all_rewards:
        for completion in NASTY:
            _check_total(name, fn, completion, problem)


FRAGMENTS = st.sampled_from(
    ["<think>", "</think>", "\\boxed{", "}", "{", "(", ")", "^", "9", "1", "0", "+", "-", "*", "/", "**", "!", " ",
     "\n", "\\frac{", "x", "=", ".", "e", "答", "é", "\\sqrt{", "\\", "$", ","]
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=300), st.lists(FRAGMENTS, max_size=60).map("".join)))
def test_rewards_total_fuzz(all_rewards, completion):
    for name, fn, problem in all_rewards:
        _check_total(name, fn, completion, problem)


def test_rewards_total_from_threads(all_rewards):
    errors = []

    def work(seed):
        rng = random.Random(seed)
        try:
            for _ in range(10):
                completion = rng.choice(NASTY[:22]) + "</think>\\boxed{0.5}"[: rng.randrange(20)]
                for name, fn, problem in all_rewards:
                    _check_total(name, fn, completion, problem)
        except Exception as e:  # collected: pytest does not see thread exceptions
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_math_reward_in_thread_is_correct(all_rewards):
    _, fn, problem = next(r for r in all_rewards if r[0] == "math")
    results = []
    t = threading.Thread(target=lambda: results.append(fn("x</think>\\boxed{\\frac{2}{4}}", problem)))
    t.start()
    t.join()
    assert results == [1.0]
    assert fn("x</think>\\boxed{\\sqrt{1/4}}", problem) == 1.0


def test_rewards_module_is_light():
    import subprocess
    import sys

    code = "import r1kit.rewards, r1kit.tasks, r1kit.tokenizer, sys; print([m for m in ('transformers', "
    code += "'reasoning_gym', 'math_verify', 'sympy', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert rewards.MAX_LANGUAGE_CHARS > 0
