"""Tasks: worked solutions score 1, wrong answers 0, determinism, disjoint splits, registry, files."""

from __future__ import annotations

import json

import pytest

from r1kit.safe_math import evaluate_arithmetic, math_equal
from r1kit.tasks import MixtureTask, Problem, get_task
from r1kit.tasks.arithmetic import AdditionTask
from r1kit.tokenizer import R1_CHAT_TEMPLATE, Tokenizer

BUILTIN = [
    ("addition", {"digits": 4}),
    ("addition", {"min_digits": 1, "max_digits": 5, "terms": 3}),
    ("multiplication", {}),
    ("multiplication", {"digits": 3, "multiplier_digits": 2}),
    ("countdown", {}),
    ("countdown", {"numbers": (3, 5), "max_failed": 4}),
]


@pytest.mark.parametrize("name,kwargs", BUILTIN)
def test_builtin_task(name, kwargs):
    task = get_task(name, **kwargs)
    train = task.problems("train", 300, seed=0)
    test = task.problems("test", 100, seed=0)
    assert len(train) == 300 and len({p.id for p in train}) == 300
    assert train == task.problems("train", 300, seed=0)
    assert train != task.problems("train", 300, seed=1)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert not {p.prompt for p in train} & {p.prompt for p in task.problems("val", 100, seed=3)}
    for p in train[:100] + test:
        # a countdown trace whose bounded search gave up answers with its closest attempt: 0
        full = 0.0 if p.meta.get("solved") is False else 1.0
        assert task.score(task.completion(p), p) == full
        assert task.reward(task.completion(p), p) == full
        assert task.score(f"{p.solution}\n</think>\n{p.answer}1", p) == 0.0
        assert task.score(p.solution, p) == 0.0  # no </think>: no answer yet
        assert len(p.prompt) <= 40
    messages = task.sft_messages(train[0])
    assert [m["role"] for m in messages] == ["user", "assistant"]
    tok = Tokenizer.train([p.prompt + task.completion(p) for p in train], vocab_size=300)
    prompt = tok.apply_chat_template(messages[:1], add_generation_prompt=True)
    full = tok.apply_chat_template(messages)
    assert full == prompt + task.completion(train[0]) + "<|eos|>"


def test_addition_worked_solution_matches_experiments():
    p = Problem("347+589", "347+589", "936", "7+9+0=16,4+8+1=13,3+5+1=09")
    task = AdditionTask(digits=3)
    sample = [q for q in task.problems("train", 2000, seed=0) if q.prompt == "347+589"]
    from r1kit.tasks.arithmetic import addition_steps

    assert addition_steps([347, 589]) == p.solution
    assert task.score("7+9+0=16,4+8+1=13,3+5+1=09\n</think>\n936", p) == 1.0
    assert task.score("</think>936", p) == 1.0
    assert task.score("</think>935", p) == 0.0
    assert all(q.answer == "936" for q in sample)
    assert get_task("addition", digits=5).problems("train", 5)[0].meta["digits"] == 5


def test_countdown_scoring():
    task = get_task("countdown")
    p = Problem("x", "Make 46 from 3 7 25 8", "(25-7)*3-8", None, {"numbers": [3, 7, 25, 8], "target": 46})
    assert task.score("</think>(25-7)*3-8", p) == 1.0
    assert task.score("</think>(25 - 7) * 3 - 8 = 46", p) == 1.0
    assert task.score("</think>3*(25-7)-8", p) == 1.0
    assert task.score("</think>(25-7)*3-8+3-3", p) == 0.0  # 3 used more often than given
    assert task.score("</think>(25-7)*3", p) == 0.0  # wrong value
    assert task.score("</think>46", p) == 0.0  # 46 is not a given number
    assert task.score("</think>__import__('os')", p) == 0.0
    assert task.score("</think>" + "(" * 10_000, p) == 0.0
    assert task.score("</think>(25-7)**3", p) == 0.0
    problems = get_task("countdown", max_failed=3).problems("train", 50)
    assert any(" no\n" in q.solution for q in problems)
    assert all(q.solution.endswith(" ok" if q.meta["solved"] else " no") for q in problems)


def test_safe_arithmetic():
    assert evaluate_arithmetic("(25-7)*3/2") == (27, [25, 7, 3, 2])
    for bad in [
        "1/0",
        "-3+4",
        "2**3",
        "a+1",
        "1e5",
        "1.5+1",
        "(" * 500 + "1" + ")" * 500,
        "9" * 20,
        "",
        "()",
    ]:
        assert evaluate_arithmetic(bad) is None, bad


def test_mixture():
    task = MixtureTask([AdditionTask(min_digits=1, max_digits=4), AdditionTask(digits=5)], [0.9, 0.1])
    problems = task.problems("train", 200, seed=0)
    five = [p for p in problems if p.meta["digits"] == 5 and len(p.prompt) == 11]
    assert 5 <= len(five) <= 50
    assert all(task.score(task.completion(p), p) == 1.0 for p in problems)


def test_registry_errors():
    with pytest.raises(ValueError, match="valid names: addition, multiplication, countdown"):
        get_task("nope")
    with pytest.raises(ValueError, match="unknown reasoning-gym dataset"):
        get_task("gym:nope")


@pytest.mark.parametrize("dataset", ["basic_arithmetic", "chain_sum"])
def test_reasoning_gym_adapter(dataset):
    task = get_task(f"gym:{dataset}")
    train = task.problems("train", 30, seed=0)
    test = task.problems("test", 10, seed=0)
    assert train == task.problems("train", 30, seed=0)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    for p in train[:10] + test:
        assert task.score(task.completion(p), p) == 1.0
        assert task.score("x\n</think>\nbanana", p) == 0.0
    assert get_task(dataset).name == f"gym:{dataset}"


def test_math_equivalences():
    assert math_equal("\\boxed{0.5}", "\\frac{1}{2}")
    assert math_equal("so \\boxed{\\frac{1}{2}}.", "1/2")
    assert math_equal("\\boxed{\\dfrac{2}{4}}", "0.5")
    assert math_equal("1,000", "1000")
    assert math_equal("\\boxed{x^2+2x+1}", "(x+1)^2")
    assert math_equal("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}")
    assert not math_equal("\\boxed{3}", "4")
    assert not math_equal("\\boxed{9^{9^{9^{9}}}}", "1")
    assert not math_equal("", "1")


def test_math_and_jsonl_tasks(tmp_path):
    path = tmp_path / "math.jsonl"
    rows = [
        {"problem": f"What is {i}/{2 * i}?", "answer": "\\frac{1}{2}", "solution": "halve"}
        for i in range(1, 40)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    task = get_task(f"math:{path}")
    problems = task.problems("train") + task.problems("val") + task.problems("test")
    assert len(problems) == 39 and len({p.id for p in problems}) == 39
    p = problems[0]
    assert p.prompt.endswith("\\boxed{}.")
    assert task.score("halve\n</think>\nThe answer is \\boxed{0.5}", p) == 1.0
    assert task.score("halve\n</think>\n\\boxed{0.25}", p) == 0.0
    assert task.score(task.sft_messages(p)[1]["content"], p) == 1.0
    assert len(get_task(f"math:{path}", hash_split=False).problems("test")) == 39

    chat = tmp_path / "chat.jsonl"
    record = {
        "messages": [
            {"role": "user", "content": "2+2"},
            {"role": "assistant", "content": "<think>\nx\n</think>\n4"},
        ]
    }
    chat.write_text(
        json.dumps(record) + "\n\n" + json.dumps({"prompt": "1+1", "answer": 2}) + "\n", encoding="utf-8"
    )
    jtask = get_task(f"jsonl:{chat}", hash_split=False)
    first, second = jtask.problems("train")
    assert (first.prompt, first.answer, first.solution) == ("2+2", "4", "x")
    assert jtask.sft_messages(first) == record["messages"]
    assert jtask.score("y</think>4", first) == 1.0 and jtask.score("y</think>5", first) == 0.0
    assert second.answer == "2" and jtask.score("</think> 2 ", second) == 1.0
    tok = Tokenizer.train(["2+2 x 4"], vocab_size=300)
    assert tok.chat_template == R1_CHAT_TEMPLATE
    ids, mask = tok.encode_chat(jtask.sft_messages(first))
    assert sum(mask) > 0


@pytest.mark.parametrize(
    "lines,lineno,message",
    [
        (['{"prompt": "a", "answer": "b"}', "{not json"], 2, "invalid JSON"),
        (['{"prompt": "a", "answer": "b"}', "", '{"prompt": "a"}'], 3, "no 'answer'"),
        (["[1, 2]"], 1, "expected a JSON object"),
        (['{"text": "a"}'], 1, "needs 'messages'"),
        (['{"messages": [{"role": "robot", "content": "x"}]}'], 1, "messages\\[0\\]"),
        (['{"messages": [{"role": "user", "content": "x"}]}'], 1, "assistant"),
        (['{"prompt": ["a"], "answer": "b"}'], 1, "must be a string"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, lines, lineno, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        get_task(f"jsonl:{path}")
    assert f"{path}:{lineno}" in str(info.value)
