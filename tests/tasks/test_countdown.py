"""Countdown with bounded-search traces (`r1kit/tasks/countdown.py`): hand-checked traces, the search's
order and backtrack count, the short-search and hit-rate filters, and the checker."""

from __future__ import annotations

import random

import pytest

from r1kit.tasks import get_task, task_kwargs
from r1kit.tasks.base import Problem
from r1kit.tasks.countdown import (
    CountdownTask,
    _random_path,
    bounded_search,
    check_steps,
    format_trace,
    hit_rate,
    search_success,
)


def _problem(numbers, target):
    prompt = f"Make {target} from {' '.join(map(str, numbers))}"
    return Problem(prompt, prompt, "", meta={"numbers": list(numbers), "target": target})


def test_format_trace_by_hand():
    attempts = [(["3+4=7", "7+9=16"], 16, "3+4+9"), (["9-3=6", "6*4=24"], 24, "(9-3)*4")]
    assert format_trace(attempts, 24) == "3+4=7,7+9=16 no\nWait, 9-3=6,6*4=24 ok"
    assert format_trace(attempts, 24, wait="") == "3+4=7,7+9=16 no\n9-3=6,6*4=24 ok"
    assert format_trace(attempts[:1], 24) == "3+4=7,7+9=16 no"  # a give-up: no line ends "ok"
    checked = "3+4=7,7+9=16 no\nWait, 9-3=6,6*4=24 ok\nWait, check 9-3=6,6*4=24 ok"
    assert format_trace(attempts, 24, recheck=True) == checked
    assert format_trace(attempts[:1], 24, recheck=True) == "3+4=7,7+9=16 no"  # nothing to re-check


def test_recheck_share_and_answers():
    """recheck = 1 re-checks every solved trace (the answer still the hit), 0 none; the problems of a
    configuration without recheck keep their seed (its config, which seeds the draw, omits the knob)."""
    args = dict(numbers=3, max_number=9, max_target=30, ops="+-", max_failed=1, answer_format="steps")
    plain = CountdownTask(**args).problems("train", n=40, seed=0)
    every = CountdownTask(**args, recheck=1.0)
    checked = every.problems("train", n=40, seed=0)
    assert "recheck" not in CountdownTask(**args).config() and every.config()["recheck"] == 1.0
    solved = [p for p in checked if p.meta["solved"]]
    assert solved and all(p.solution.splitlines()[-1].startswith("Wait, check ") for p in solved)
    for p in solved:  # the re-check replays the hit line's chain, and the answer is the hit
        hit, check = p.solution.splitlines()[-2:]
        assert check.removeprefix("Wait, check ") == hit.removeprefix("Wait, ")
        assert every.check(every.completion(p).split("</think>\n")[1], p) == 1.0
    assert not any("check" in p.solution for p in checked if not p.meta["solved"])
    assert not any("check" in p.solution for p in plain)
    with pytest.raises(ValueError):
        CountdownTask(recheck=1.5)


def test_random_path_two_numbers_one_op():
    steps, value, expr = _random_path(random.Random(0), [4, 9], ops="+")
    assert steps == ["4+9=13"] or steps == ["9+4=13"]
    assert value == 13 and expr in ("4+9", "9+4")


def test_bounded_search_order_and_stop():
    numbers, target = [2, 3, 7], 13  # 2*3+7, 3*2+7, 7+2*3, ...
    rng = random.Random(5)
    attempts = bounded_search(rng, numbers, target, attempts=6, ops="+-*")
    # the search is the same random attempts, in order, as drawing them one by one from the same seed
    replay = random.Random(5)
    assert attempts == [_random_path(replay, numbers, target, "+-*") for _ in attempts]
    assert 1 <= len(attempts) <= 6
    assert all(a[1] != target for a in attempts[:-1])  # every attempt before the last missed
    if len(attempts) < 6:
        assert attempts[-1][1] == target  # it stopped because it hit
    # an attempt that hits stops there, before using every number
    assert all(check_steps(",".join(s), numbers, v) for s, v, _ in attempts)


def test_sampled_traces_are_consistent():
    task = CountdownTask(numbers=3, max_number=9, max_target=30, max_failed=2, ops="+-")
    problems = task.problems("train", n=60, seed=0)
    solved = [p for p in problems if p.meta["solved"]]
    assert 0 < len(solved) < len(problems)  # short searches solve some, give up on others
    for p in problems:
        lines = p.solution.split("\n")
        assert len(lines) == p.meta["attempts"] <= task.max_failed + 1  # at most max_failed backtracks
        assert not lines[0].startswith("Wait") and all(x.startswith("Wait, ") for x in lines[1:])
        assert all(x.endswith(" no") for x in lines[:-1])
        assert lines[-1].endswith(" ok") == p.meta["solved"]
        for line in lines:
            chain = line.removeprefix("Wait, ").rsplit(" ", 1)[0]
            final = int(chain.rsplit("=", 1)[1])
            assert check_steps(chain, p.meta["numbers"], final)  # each attempt's arithmetic is right
            assert (final == p.meta["target"]) == line.endswith(" ok")
        # the reference answer is right; the trace's own answer is right exactly when it was solved
        assert task.check(p.answer, p) == 1.0
        assert task.check(p.meta["trace_answer"], p) == float(p.meta["solved"])
        chat = task.sft_messages(p)
        assert chat[-1]["content"].endswith("</think>\n" + p.meta["trace_answer"])
        # a give-up ends its thinking right after a failed attempt: a forced "Wait" starts a new one
        assert task.completion(p).split("\n</think>\n")[0].endswith(" ok" if p.meta["solved"] else " no")


def test_short_search_filter_solved_only():
    task = CountdownTask(numbers=3, max_number=9, max_target=30, max_failed=1, ops="+-", solved_only=True)
    for p in task.problems("train", n=40, seed=1):
        assert p.meta["solved"] and p.meta["attempts"] <= 2
        assert p.solution.count(" no") == p.meta["attempts"] - 1 <= 1


def test_hit_rate_by_hand_and_filter():
    assert hit_rate([2, 3], 5, "+") == 1.0  # the only attempt is 2+3
    assert hit_rate([2, 3], 6, "+") == 0.0
    assert 0.25 < hit_rate([2, 3], 6, "+*") < 0.75  # "*" is drawn half of the time
    assert hit_rate([2, 3], 6, "+*") == hit_rate([2, 3], 6, "+*")  # seeded by the problem
    assert search_success(0.5, 3) == pytest.approx(0.875)
    hard = CountdownTask(numbers=3, max_number=9, max_target=30, ops="+-*", max_hit_rate=0.1)
    for p in hard.problems("test", n=20, seed=0):
        assert p.meta["hit_rate"] <= 0.1
        assert hit_rate(p.meta["numbers"], p.meta["target"], "+-*") == p.meta["hit_rate"]
    easy = CountdownTask(numbers=3, max_number=9, max_target=30, ops="+-*", min_hit_rate=0.3)
    assert all(p.meta["hit_rate"] >= 0.3 for p in easy.problems("train", n=20, seed=0))


def test_check_expressions_and_step_chains():
    task = CountdownTask()
    p = _problem([3, 7, 25, 8], 46)
    assert task.check("(25-7)*3-8", p) == 1.0
    assert task.check("(25-7)*3-8 = 46", p) == 1.0
    assert task.check("(25-7)*3-3", p) == 0.0  # 3 used twice
    assert task.check("25+21", p) == 0.0  # 21 is not given
    assert task.check("25-7=18,18*3=54,54-8=46", p) == 1.0
    assert task.check("25-7=18,18*3=54,54-8=46 ok", p) == 1.0
    assert task.check("25-7=18,18*3=55,55-9=46", p) == 0.0  # wrong arithmetic
    assert task.check("25-7=18,18*3=54", p) == 0.0  # does not reach the target
    assert task.check("25-7=18,25+3=28", p) == 0.0  # 25 used twice
    assert task.check("7-25=18", p) == 0.0  # negative intermediate (Countdown rule)
    assert task.check("", p) == 0.0 and task.check("__import__('os')", p) == 0.0
    assert check_steps("8/3=2", [8, 3], 2) is False  # inexact division
    assert check_steps("8/4=2,2*3=6", [8, 4, 3], 6) is True
    assert task.score("Wait, 25-7=18 no\n</think>\n25-7=18,18*3=54,54-8=46", p) == 1.0


def test_by_name_with_task_args_and_bad_args():
    args = task_kwargs({"countdown": {"numbers": [3, 3], "ops": "+-", "answer_format": "steps"}}, "countdown")
    task = get_task("countdown", **args)
    p = task.problems("train", n=5, seed=0)[0]
    assert task.check(p.answer, p) == 1.0 and "=" in p.answer  # a step chain
    for bad in (
        {"ops": "*"},
        {"ops": "+^"},
        {"answer_format": "x"},
        {"min_hit_rate": 0.5, "max_hit_rate": 0.2},
    ):
        with pytest.raises(ValueError):
            CountdownTask(**bad)


def test_verified_search_reward_by_hand():
    from r1kit.tasks.countdown import verified_search_reward

    p = _problem([2, 7, 5], 10)
    honest = "7+2=9,9+5=14 no\nWait, 7-2=5,5+5=10 ok\n</think>\n7-2=5,5+5=10"
    assert verified_search_reward(honest, p) == 0.0
    false_ok = "7+2=9,9+5=14 ok\n</think>\n7+2=9,9+5=14"  # claims a hit: 14 is not 10
    assert verified_search_reward(false_ok, p) == -1.0
    bad_sum = "7+2=9,9+5=10 ok\n</think>\n7+2=9,9+5=10"  # wrong arithmetic, claimed ok
    assert verified_search_reward(bad_sum, p) == -1.0
    assert verified_search_reward("7+2=9,9+5=14 no\n</think>\n7+2=9,9+5=14", p) == 0.0  # honest give-up
    recheck = "7-2=5,5+5=10 ok\nWait, check 7-2=5,5+5=10 ok\n</think>\n7-2=5,5+5=10"
    assert verified_search_reward(recheck, p) == 0.0  # an honest re-check
    assert (
        verified_search_reward("7-2=5,5+5=10 ok\nWait, check 7+2=9,9+5=14 ok\n</think>\n7-2=5,5+5=10", p)
        == -1.0
    )
    assert verified_search_reward(None, p) == 0.0 and verified_search_reward("x" * 100000, p) == 0.0
