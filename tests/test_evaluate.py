"""Evaluation: aggregation (pass@k, maj@k, best-of-N, greedy, lengths) on scripted completions, budget
forcing through the real engine on a scripted-logits model, and the `r1kit eval` stage end to end."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
import torch
from history_cache import HistoryCache
from torch import nn

from r1kit import evaluate
from r1kit.engine import SamplingParams
from r1kit.tasks import Problem, Task
from r1kit.tokenizer import Tokenizer

S = evaluate.SamplingSection

SPECIALS = ["<pad>", "<eos>", "<think>", "</think>"]


class CharTokenizer:
    """Character-level tokenizer with the think tags as single tokens and a one-line chat template."""

    def __init__(self, chars: str = "abcdefghijklmnopqrstuvwxyz0123456789 +=?\nWxq"):
        self.vocab = SPECIALS + list(chars)
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.pad_id, self.eos_id, self.think_start_id, self.think_end_id = 0, 1, 2, 3

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            special = next((s for s in SPECIALS if text.startswith(s, i)), None)
            ids.append(self.index[special or text[i]])
            i += len(special or text[i])
        return ids

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt=False):
        text = "".join(m["content"] for m in messages if m["role"] == "user")
        return "q" + text + ("<think>" if add_generation_prompt else "")

    render_prompt = Tokenizer.render_prompt  # the real renderer over this stub's template and encode
    prompt_ids = Tokenizer.prompt_ids


@dataclass
class FakeCompletion:
    prompt_index: int
    sample_index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    mask: list[int] = field(default_factory=list)
    finish_reason: str = "stop"


class ScriptedEngine:
    """`Engine.generate`'s signature, answering from a script: prompt text -> (greedy text, [(sample text,
    mean log-prob)]). Records every call."""

    def __init__(self, tok: CharTokenizer, script: dict[str, tuple[str, list[tuple[str, float]]]]):
        self.tok, self.script, self.calls, self.params = tok, script, [], []

    def generate(self, prompts, params):
        params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        self.params += params
        self.calls.append([(self.tok.decode(p), sp.n, sp.temperature) for p, sp in zip(prompts, params)])
        outs = []
        for i, (p, sp) in enumerate(zip(prompts, params)):
            greedy, samples = self.script[self.tok.decode(p)]
            chosen = [(greedy, 0.0)] if sp.temperature == 0 else samples[: sp.n]
            for j, (text, logprob) in enumerate(chosen):
                ids = self.tok.encode(text) + [self.tok.eos_id]
                outs.append(FakeCompletion(i, j, text, ids, [logprob] * len(ids), [1] * len(ids)))
        return outs


def _problems(answers: list[str]) -> list[Problem]:
    return [Problem(id=str(i), prompt=str(i), answer=a) for i, a in enumerate(answers)]


# Problem 0 (answer 7): samples 7, 7, 3, 7 -> 3 correct; the most confident sample is the wrong "3".
# Problem 1 (answer 5): 4, 4, 5, (no answer) -> 1 correct, majority "4" is wrong; "5" is the most confident.
# Problem 2 (answer 9): 1, 2, 1, 8 -> none correct.
SCRIPT = {
    "q0<think>": (
        "ab</think>7",
        [("ab</think>7", -1.0), ("a</think>7", -1.0), ("a</think>3", -0.1), ("c</think>7", -2.0)],
    ),
    "q1<think>": (
        "ab</think>4",
        [("a</think>4", -1.0), ("a</think>4", -1.0), ("a</think>5", -0.5), ("abc", -3.0)],
    ),
    "q2<think>": (
        "abcd</think>9",
        [("a</think>1", -1.0), ("a</think>2", -1.0), ("a</think>1", -1.0), ("a</think>8", -0.3)],
    ),
}


@pytest.fixture
def scripted():
    tok = CharTokenizer()
    return tok, ScriptedEngine(tok, SCRIPT), Task(), _problems(["7", "5", "9"])


def test_aggregation_by_hand(scripted):
    tok, engine, task, problems = scripted
    result = evaluate.evaluate(engine, tok, task, problems, S(k=4, best_of=["logprob", "accuracy"]))
    m = result.metrics
    assert m["pass@1"] == pytest.approx((3 / 4 + 1 / 4 + 0) / 3)
    # pass@2: 1 - C(n-c, 2) / C(4, 2) = 1 for c = 3, 1 - 3/6 for c = 1, 0 for c = 0
    assert m["pass@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["pass@4"] == pytest.approx(2 / 3)
    # maj@4: "7" wins on problem 0 only; maj@2 averages blocks [7,7]=1, [3,7]=tie->earliest "3"=0 and
    # [4,4]=0, [5,-]=1 (a missing answer does not vote)
    assert m["maj@4"] == pytest.approx(1 / 3)
    assert m["maj@2"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert m["maj@1"] == pytest.approx(m["pass@1"])
    # best-of-4 by log-prob picks the confident "3" (wrong) and "5" (right)
    assert m["best_of_4/logprob"] == pytest.approx(1 / 3)
    assert m["best_of_2/logprob"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    # best-of-N under the verifier is an oracle: it equals pass@N
    assert m["best_of_4/accuracy"] == pytest.approx(m["pass@4"])
    assert m["greedy_acc"] == pytest.approx(2 / 3)
    assert result.curves["k"] == [1.0, 2.0, 4.0]
    assert result.curves["maj@k"] == [m["maj@1"], m["maj@2"], m["maj@4"]]


def test_lengths_answers_and_records(scripted):
    tok, engine, task, problems = scripted
    result = evaluate.evaluate(engine, tok, task, problems, S(k=4))
    r1 = result.records[1]
    assert r1["answers"] == ["4", "4", "5", ""] and r1["correct"] == [False, False, True, False]
    assert r1["think_tokens"] == [1, 1, 1, 3] and r1["answer_tokens"] == [1, 1, 1, 0]
    assert r1["majority"] == "4" and r1["reference"] == "5" and r1["greedy"]["answer"] == "4"
    assert result.metrics["think_tokens"] == pytest.approx(
        (2 + 1 + 1 + 1 + 1 + 1 + 1 + 3 + 1 + 1 + 1 + 1) / 12
    )
    assert result.metrics["answered"] == pytest.approx(11 / 12)
    assert result.metrics["greedy_think_tokens"] == pytest.approx((2 + 2 + 4) / 3)
    assert evaluate.completion_lengths([5, 3, 6, 6, 1], tok) == (1, 2)  # EOS and </think> count in neither


def test_generation_is_batched(scripted):
    tok, engine, task, problems = scripted
    evaluate.evaluate(engine, tok, task, problems, S(k=4, batch_problems=2))
    # two calls (2 + 1 problems), each with a greedy and a k-sample request per problem
    assert [len(call) for call in engine.calls] == [4, 2]
    assert engine.calls[0][:2] == [("q0<think>", 1, 0.0), ("q0<think>", 4, 0.6)]
    engine.calls.clear()
    evaluate.evaluate(engine, tok, task, problems, S(k=4, batch_problems=0))  # 0 = everything in one call
    assert [len(call) for call in engine.calls] == [6]
    # every problem samples from its own seed, a function of (seed, problem id) only
    seeds = [sp.seed for sp in engine.params if sp.temperature > 0]
    assert seeds[-3:] == [evaluate.problem_seed(0, p.id) for p in problems] and len(set(seeds[-3:])) == 3


def test_maj_at_k_uses_normalised_answers():
    task = Task()
    records = [
        {
            "samples": ["", "", ""],
            "answers": [
                evaluate.extract_answer(t) for t in ("x</think>1,000", "x</think>\\boxed{1000}", "x</think>7")
            ],
            "correct": [True, True, False],
            "scores": [1.0, 1.0, 0.0],
            "think_tokens": [1, 1, 1],
            "answer_tokens": [1, 1, 1],
            "finish_reasons": ["stop"] * 3,
        }
    ]
    assert records[0]["answers"] == ["1000", "1000", "7"]
    metrics, _ = evaluate.aggregate(records, [3])
    assert metrics["maj@3"] == 1.0 and task.score("x</think>7", Problem("a", "a", "7")) == 1.0


class EndsWithTask(Task):
    """A verifier that accepts any answer ending with the reference (like math-verify reading "3 + 83 = 86")."""

    name = "endswith"

    def check(self, answer, problem):
        return float(answer.strip().endswith(problem.answer))


def test_maj_at_k_counts_every_verified_variant_as_one_answer():
    """Three correct samples written three ways outvote two identical wrong ones: the verifier says they
    are the reference, so they are one answer; by text alone the wrong "85" would win 2 to 1."""
    tok = CharTokenizer()
    texts = ["a</think>86", "a</think>3 + 83 = 86", "a</think>85", "a</think>85", "a</think>x = 86"]
    engine = ScriptedEngine(tok, {"q0<think>": ("a</think>86", [(t, -1.0) for t in texts])})
    result = evaluate.evaluate(engine, tok, EndsWithTask(), [Problem("0", "0", "86")], S(k=5))
    (record,) = result.records
    assert record["correct"] == [True, True, False, False, True]
    assert record["votes"] == [evaluate.CORRECT_VOTE] * 2 + ["85", "85", evaluate.CORRECT_VOTE]
    assert result.metrics["maj@5"] == 1.0 and record["majority"] == "86"
    text_only = dict(record, votes=record["answers"])  # the text vote: "85" wins
    assert evaluate.aggregate([text_only], [5])[0]["maj@5"] == 0.0


# ----------------------------------------------------------------------------------------------
# budget forcing through the real engine


class ThinkingModel(nn.Module):
    """Scripted logits: thinks "x" until its block holds NATURAL tokens, then `</think>`; then answers "1"
    if the block held at least d tokens (d = the digit of the prompt "q<d><think>"), else "0"; then EOS."""

    NATURAL = 6

    def __init__(self, tok: CharTokenizer):
        super().__init__()
        self.tok = tok
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def new_cache(self, batch, max_len, device=None, dtype=None):
        return HistoryCache(batch)

    def next_token(self, history: list[int]) -> int:
        t = self.tok
        start = len(history) - 1 - history[::-1].index(t.think_start_id)
        need = int(t.vocab[history[start - 1]])
        after = history[start + 1 :]
        if t.think_end_id not in after:
            return t.index["x"] if len(after) < self.NATURAL else t.think_end_id
        think = after.index(t.think_end_id)
        if len(after) == think + 1:
            return t.index["1" if think >= need else "0"]
        return t.eos_id

    def forward(self, input_ids, attention_mask=None, positions=None, cache=None, return_hidden=False):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.tok.vocab_size)
        for b in range(B):
            cache.rows[b].extend(input_ids[b].tolist())
            logits[b, -1, self.next_token([i for i in cache.rows[b] if i != self.tok.pad_id])] = 30.0
        cache.length += T
        return logits


@pytest.fixture
def thinking():
    tok = CharTokenizer()
    # need 2, 5 and 7 thinking tokens; the model thinks 6 on its own
    problems = [Problem(id=d, prompt=d, answer="1") for d in ("2", "5", "7")]
    return tok, ThinkingModel(tok), Task(), problems


def test_budget_curve_caps_and_waits_with_the_engine(thinking):
    tok, model, task, problems = thinking
    budget = evaluate.BudgetSection(caps=[1, 3, 6, 10], waits=[0, 1, 2], wait_string="W")
    points = evaluate.budget_curve(model, tok, task, problems, budget, max_new_tokens=24)
    caps = [p for p in points if p["mode"] == "cap"]
    waits = [p for p in points if p["mode"] == "wait"]
    # a cap forces </think> after c thinking tokens: min(c, 6) tokens, correct when >= the need
    assert [p["think_tokens"] for p in caps] == [1, 3, 6, 6]
    assert [p["accuracy"] for p in caps] == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3])
    # each "Wait" replaces a </think> and adds its token: 6, 7, 8 thinking tokens
    assert [p["think_tokens"] for p in waits] == [6, 7, 8]
    assert [p["accuracy"] for p in waits] == pytest.approx([2 / 3, 1, 1])
    assert all(p["answered"] == 1.0 for p in points)


def test_evaluate_with_the_engine(thinking):
    tok, model, task, problems = thinking
    result = evaluate.evaluate(model, tok, task, problems, S(k=3, max_new_tokens=24, batch_problems=2))
    assert result.metrics["greedy_acc"] == pytest.approx(2 / 3)
    assert result.metrics["pass@3"] == pytest.approx(2 / 3)  # peaked logits: every sample is the greedy one
    assert result.metrics["think_tokens"] == 6 and result.metrics["truncated"] == 0
    assert result.timing["problems_per_s"] > 0


def test_plots_and_records_are_written(tmp_path, scripted):
    tok, engine, task, problems = scripted
    result = evaluate.evaluate(engine, tok, task, problems, S(k=4))
    png = evaluate.plot_scaling(result.curves, tmp_path / "scaling.png")
    points = [
        {"mode": "cap", "value": v, "accuracy": a, "think_tokens": v, "answer_tokens": 1, "answered": 1}
        for v, a in ((4, 0.2), (8, 0.5))
    ] + [{"mode": "wait", "value": 1, "accuracy": 0.6, "think_tokens": 9, "answer_tokens": 1, "answered": 1}]
    png2 = evaluate.plot_budget(points, tmp_path / "budget.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png2.read_bytes()[:4] == b"\x89PNG"
    path = evaluate.write_records(tmp_path / "records.jsonl", result.records)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["samples"][2] == "a</think>3" and rows[0]["scores"] == [1, 1, 0, 1]


# ----------------------------------------------------------------------------------------------
# the stage


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random ~10k-parameter Llama-style model with an r1kit tokenizer, saved in the HF layout."""
    from r1kit.model import ModelConfig, Transformer
    from r1kit.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("tiny_model")
    tok = Tokenizer.train(["12+34 7+9+0=16 </think> 46"] * 5, vocab_size=300)
    cfg = ModelConfig.preset(
        "tiny-llama",
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        eos_token_id=tok.eos_id,
    )
    torch.manual_seed(0)
    Transformer(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_eval_stage_writes_results(tmp_path, tiny_model_dir):
    from r1kit.cli import main

    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "configs/eval_tiny.toml",
            "--model.path", str(tiny_model_dir),
            "--data.problems", "3",
            "--data.splits", '["test", "val"]',
            "--sampling.k", "2",
            "--sampling.max_new_tokens", "6",
            "--budget.caps", "[2]",
            "--budget.waits", "[1]",
            "--budget.problems", "2",
            "--run.dir", str(out),
            "--run.device", "cpu",
            "--run.progress", "false",
        ]
    )  # fmt: skip
    assert code == 0
    payload = json.loads((out / "results.json").read_text())
    assert [(r["task"], r["split"]) for r in payload["results"]] == [
        ("addition", "test"),
        ("addition", "val"),
    ]
    first = payload["results"][0]
    assert 0 <= first["metrics"]["pass@1"] <= first["metrics"]["pass@2"] <= 1
    assert [p["mode"] for p in first["budget"]] == ["cap", "wait"]
    assert first["budget"][0]["think_tokens"] <= 2
    assert payload["protocol"]["temperature"] == 0.6 and payload["protocol"]["top_p"] == 0.95
    for name in ("records_addition_test.jsonl", "scaling_addition_test.png", "budget_addition_val.png"):
        assert (out / name).is_file(), name
    record = json.loads((out / "records_addition_test.jsonl").read_text().splitlines()[0])
    assert record["prompt"].endswith("<think>\n") and len(record["samples"]) == 2
    assert math.isfinite(payload["cost"]["wall_s"])


def test_evaluate_api_from_a_model_directory(tiny_model_dir):
    """The demo's call: a model directory, a task name and a problem count; budgets in the same call."""
    result = evaluate.evaluate(
        str(tiny_model_dir),
        None,
        "addition",
        3,
        S(k=2, max_new_tokens=6),
        evaluate.BudgetSection(caps=[2], waits=[1]),
        task_args={"max_digits": 2},
        device="cpu",
    )
    assert result["pass@1"] == result.metrics["pass@1"] and dict(result) == result.metrics
    assert "maj@2" in result and result.get("nope", -1) == -1
    with pytest.raises(KeyError, match="available: problems"):
        result["nope"]
    assert len(result.records) == 3 and result.split == "test" and result.task == "addition"
    assert [p["mode"] for p in result.budget] == ["cap", "wait"] and result.budget[0]["think_tokens"] <= 2
    assert result.timing["budget_generated_tokens"] == sum(p["generated_tokens"] for p in result.budget) > 0
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate.evaluate(object(), None, "addition", 1)


def test_eval_config_rejects_bad_ks():
    from r1kit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="sampling.ks"):
        load_config(evaluate.Config, None, {"sampling.k": 4, "sampling.ks": [8]})


def test_unknown_best_of_scorer_fails_before_generating(scripted):
    tok, engine, task, problems = scripted
    with pytest.raises(ValueError, match="unknown best-of scorer 'bogus': valid are logprob"):
        evaluate.evaluate(engine, tok, task, problems, S(k=4, best_of=["bogus"]))
    assert engine.calls == []
