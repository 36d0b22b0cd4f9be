"""Pointer chase: the map, the answer, the short-search traces and the checker, by hand."""

from __future__ import annotations

from collections import Counter

import pytest

from r1kit.tasks import get_task
from r1kit.tasks.base import Problem
from r1kit.tasks.chase import (
    ChaseTask,
    chain,
    honest_chase_reward,
    parse_map,
    search_lines,
    verified_chase_reward,
)

# a hand-made problem: 0>1 1>2 2>0 3>3, 2 hops; chains 012, 120, 201, 333
PROMPT = "01,12,20,33;to 0 in 2"
MAP = {"0": "1", "1": "2", "2": "0", "3": "3"}
HAND = Problem(PROMPT, PROMPT, "1", None, {"map": MAP, "target": "0"})


def test_parse_map_and_chain_by_hand():
    assert parse_map(PROMPT) == MAP
    assert chain(MAP, "1", 2) == ["1", "2", "0"]
    assert chain(MAP, "3", 3) == ["3", "3", "3", "3"]


def test_check_by_hand():
    task = ChaseTask(size=4, hops=2)
    assert task.score("</think>\n1", HAND) == 1.0
    assert task.score("</think>\n120", HAND) == 1.0  # the whole chain, right
    assert task.score("</think>\n100", HAND) == 0.0  # the right start with a wrong chain
    for wrong in ("0", "2", "3", "9", "", "1 2", "a"):
        assert task.score(f"</think>\n{wrong}", HAND) == 0.0, wrong
    assert task.score("1", HAND) == 0.0  # no </think>: no answer


def test_traces_are_true_chains_in_order_and_the_reference_is_the_only_start():
    task = ChaseTask(size=8, hops=3, continue_p=0.5, recheck=0.5)
    problems = task.problems("train", n=300, seed=1)
    digits = "01234567"
    for p in problems:
        mapping, target = p.meta["map"], p.meta["target"]
        assert parse_map(p.prompt) == mapping and sorted(mapping.values()) == sorted(digits)  # a permutation
        right = [s for s in digits if chain(mapping, s, 3)[-1] == target]
        assert right == [p.answer]
        lines = search_lines(p.solution + "\n</think>")
        attempts = [x for x in lines if not x[2]]
        assert len(attempts) == p.meta["attempts"]
        starts = [x[0][0] for x in attempts]
        # consecutive digits from a random first one, wrapping around, no repeats
        first = digits.index(starts[0])
        assert starts == [digits[(first + k) % 8] for k in range(len(starts))]
        for line, verdict, _ in lines:
            assert line == "".join(chain(mapping, line[0], 3))
            assert (verdict == "ok") == (chain(mapping, line[0], 3)[-1] == target)
        assert p.meta["solved"] == (attempts[-1][1] == "ok")
        assert task.score(task.completion(p), p) == float(p.meta["solved"])
        assert task.score("</think>\n" + p.answer, p) == 1.0
        assert p.solution.count("Wait,") == len(lines) - 1


def test_cold_start_searches_are_short_with_a_tail():
    task = ChaseTask(size=10, hops=3, continue_p=0.4)
    problems = task.problems("train", n=2000, seed=0)
    attempts = Counter(p.meta["attempts"] for p in problems)
    mean = sum(k * v for k, v in attempts.items()) / len(problems)
    assert 1.4 < mean < 1.9  # ~1 / (1 - 0.4), a little less where hits end the search
    assert attempts[1] > attempts[2] > attempts[3] > attempts[4] > 0
    solved = sum(p.meta["solved"] for p in problems) / len(problems)
    assert 0.12 < solved < 0.22  # mean attempts / size
    # an exhaustive search always finds the start
    full = ChaseTask(size=6, hops=3, continue_p=0.999).problems("train", n=50, seed=0)
    assert all(p.meta["solved"] for p in full)


def test_verified_chase_reward_flags_false_claims_only():
    honest = "120 ok\n</think>\n1"
    miss = "012 no\nWait,120 ok\nWait,check:120 ok\n</think>\n1"
    false_claim = "012 ok\n</think>\n0"
    wrong_chain = "301 ok\n</think>\n3"
    assert verified_chase_reward(honest, HAND) == 0.0
    assert verified_chase_reward(miss, HAND) == 0.0
    assert verified_chase_reward(false_claim, HAND) == -1.0
    assert verified_chase_reward(wrong_chain, HAND) == -1.0
    assert verified_chase_reward(None, HAND) == 0.0
    assert [x[2] for x in search_lines(miss)] == [False, False, True]


def test_honest_chase_reward_fines_false_verdicts_either_way():
    """The claims-only fine lets a hit be written "... no" and answered anyway (what GRPO learned); this
    one fines a false "no" on the map's hit as it fines a false "ok"."""
    hidden_hit = "012 no\nWait,120 no\n</think>\n1"  # 120 reaches 0: a hit, called "no", answered
    assert verified_chase_reward(hidden_hit, HAND) == 0.0
    assert honest_chase_reward(hidden_hit, HAND) == -1.0
    assert honest_chase_reward("012 no\nWait,120 ok\nWait,check:120 ok\n</think>\n1", HAND) == 0.0
    assert honest_chase_reward("012 no\n</think>\n0", HAND) == 0.0  # an honest give-up
    assert honest_chase_reward("012 ok\n</think>\n0", HAND) == -1.0  # a false "ok"
    assert honest_chase_reward("301 ok\n</think>\n3", HAND) == -1.0  # "ok" on a chain that is not the map's
    assert honest_chase_reward("301 no\n</think>\n3", HAND) == 0.0  # a wrong chain, honestly a miss
    assert honest_chase_reward(None, HAND) == 0.0


def test_every_digit_is_one_token():
    """The map, the chains and the answer spell each symbol as the same single token (a small model's
    lookup must match it): with letters written "a>f b>c" the 2-layer model never learned the lookup."""
    from r1kit.tokenizer import Tokenizer

    task = ChaseTask(recheck=0.5)
    problems = task.problems("train", n=200, seed=0)
    tok = Tokenizer.train([p.prompt + "\n" + task.completion(p) for p in problems], vocab_size=300)
    for p in problems[:20]:
        pieces = {tok.decode([i]) for i in tok.encode(p.prompt + "\n" + task.completion(p))}
        with_digit = {x for x in pieces if any(c.isdigit() for c in x)}
        assert all(len(x) == 1 for x in with_digit), with_digit


def test_pairs_symbols_by_hand_and_one_token_per_map_entry():
    """symbols="pairs": letters, the map "ab,bc,..." (each entry one token once merged), chains "a,b,c"."""
    from r1kit.tokenizer import Tokenizer

    hand = Problem("ab,bc,ca,dd;to:a,in:2", "ab,bc,ca,dd;to:a,in:2", "b", None,
                   {"map": {"a": "b", "b": "c", "c": "a", "d": "d"}, "target": "a"})  # fmt: skip
    task = ChaseTask(size=4, hops=2, symbols="pairs")
    assert parse_map(hand.prompt) == hand.meta["map"]
    assert task.score("</think>\nb", hand) == 1.0
    assert task.score("</think>\nb,c,a", hand) == 1.0  # the whole chain, right
    for wrong in ("a", "c", "d", "b,c,b", "1", ""):
        assert task.score(f"</think>\n{wrong}", hand) == 0.0, wrong
    assert verified_chase_reward("a,b,c no\nWait,b,c,a ok\n</think>\nb", hand) == 0.0
    assert verified_chase_reward("a,b,c ok\n</think>\na", hand) == -1.0
    assert search_lines("a,b,c no\nWait,check:b,c,a ok") == [("abc", "no", False), ("bca", "ok", True)]

    task = ChaseTask(size=10, hops=3, symbols="pairs", recheck=0.5)
    problems = task.problems("train", n=400, seed=0)
    for p in problems:
        mapping = p.meta["map"]
        assert sorted(mapping) == list("abcdefghij") and sorted(mapping.values()) == list("abcdefghij")
        for line, verdict, _ in search_lines(p.solution):
            assert line == "".join(chain(mapping, line[0], 3))
            assert (verdict == "ok") == (line[-1] == p.meta["target"])
        assert task.score(task.completion(p), p) == float(p.meta["solved"])
        assert task.score("</think>\n" + p.answer, p) == 1.0
    tok = Tokenizer.train([p.prompt + "\n" + task.completion(p) for p in problems], vocab_size=384)
    for p in problems[:20]:
        pieces = [tok.decode([i]) for i in tok.encode(p.prompt)]
        entries = p.prompt.split(";")[0].split(",")
        assert all(e in pieces for e in entries), pieces  # each map entry is one token
        chain_pieces = [tok.decode([i]) for i in tok.encode(p.solution.splitlines()[0])]
        assert all(len(x) == 1 for x in chain_pieces if x.isalpha()), chain_pieces


def test_registered_and_validated():
    assert isinstance(get_task("chase", size=5), ChaseTask)
    for bad in ({"size": 1}, {"size": 11}, {"hops": 0}, {"continue_p": 1.0}, {"max_attempts": 11},
                {"recheck": 2.0}, {"wait": "W1"}, {"symbols": "emoji"}):  # fmt: skip
        with pytest.raises(ValueError):
            ChaseTask(**bad)
