"""Rejection sampling keeps only verified traces in the layout SFT reads; logit distillation's loss by
hand; the `r1kit sample` / `r1kit distill` stages on a tiny model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from r1kit import distill
from r1kit.engine import SamplingParams
from r1kit.evaluate import problem_seed
from r1kit.tasks import Problem, Task
from r1kit.tokenizer import Tokenizer
from r1kit.train.data import ChatExamples, read_conversations
from r1kit.train.loop import IGNORE_INDEX


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"
    sample_index: int = 0
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)


def _c(text: str, n_tokens: int | None = None, finish: str = "stop") -> FakeCompletion:
    return FakeCompletion(text, list(range(n_tokens or len(text))), finish)


PROBLEM = Problem(id="12+34", prompt="12+34", answer="46")
TASK = Task()


def test_select_traces_keeps_only_verified_well_formed_completions():
    group = [
        _c("2+4+0=06,1+3+0=04\n</think>\n46"),  # correct
        _c("2+4+0=06\n</think>\n45"),  # wrong answer
        _c("46"),  # right answer but no </think>: never scored correct by the task anyway
        _c("x\n</think>\n46", finish="length"),  # truncated at the cap
        _c("2+4+0=06,1+3+0=04\n</think>\n46"),  # duplicate of the first
        _c("short\n</think>\n46", 5),  # correct and shortest
    ]
    scores = [TASK.score(c.text, PROBLEM) for c in group]
    assert scores == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert distill.select_traces(group, scores) == [0, 5]
    assert distill.select_traces(group, scores, dedupe=False) == [0, 4, 5]
    assert distill.select_traces(group, scores, require_format=False) == [0, 3, 5]
    assert distill.select_traces(group, scores, keep="shortest") == [5]
    assert distill.select_traces(group, scores, keep="shortest", max_per_prompt=2) == [5, 0]
    assert distill.select_traces(group, scores, max_per_prompt=1) == [0]
    assert distill.select_traces(group, scores, verify=False) == [0, 1, 5]  # the no-rejection ablation
    assert sorted(distill.select_traces(group, scores, keep="random")) == [0, 5]


class ScriptedTeacher:
    """`Engine.generate`'s signature; every prompt gets the same k scripted completions."""

    def __init__(self, texts: list[str]):
        self.texts, self.seeds = texts, []

    def generate(self, prompts, params):
        params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        self.seeds += [sp.seed for sp in params]
        return [
            FakeCompletion(t, list(range(len(t) // 2)), "stop" if "</think>" in t else "length", j)
            for sp in params
            for j, t in enumerate(self.texts[: sp.n])
        ]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(["12+34 7+9 2+4+0=06,1+3+0=04 </think> 46 45"] * 5, vocab_size=300)


def test_rejection_sampling_writes_what_sft_trains_on(tmp_path, tok):
    correct = "2+4+0=06,1+3+0=04\n</think>\n46"
    teacher = ScriptedTeacher([correct, "2+4+0=06\n</think>\n45", "2+4+0=06,1+3+0", correct])
    problems = [
        PROBLEM,
        Problem(id="13+33", prompt="13+33", answer="46"),
        Problem(id="1+1", prompt="1+1", answer="2"),
    ]
    result = distill.rejection_sample(teacher, tok, {"addition": TASK}, {"addition": problems}, k=4)
    # each prompt samples from its own seed, a function of (seed, problem id) only
    assert teacher.seeds == [problem_seed(0, p.id) for p in problems] and len(set(teacher.seeds)) == 3
    # problems 0 and 1 keep their one distinct correct trace; problem 2 has none
    assert [r["id"] for r in result.rows] == ["12+34", "13+33"]
    s = result.stats["addition"]
    assert (s["samples"], s["correct"], s["kept"]) == (12, 4, 2)
    assert s["acceptance_rate"] == pytest.approx(4 / 12) and s["solved_rate"] == pytest.approx(2 / 3)
    assert s["duplicates"] == 2 and result.stats["total"]["kept"] == 2
    assert s["mean_tokens"] == len(correct) // 2

    path = distill.write_chat_jsonl(tmp_path / "traces.jsonl", result.rows)
    (chat,) = read_conversations([path])[:1]
    assert chat == [
        {"role": "user", "content": "12+34"},
        {"role": "assistant", "content": "<think>\n2+4+0=06,1+3+0=04\n</think>\n46"},
    ]
    # SFT's targets are exactly the teacher's completion after the generation prompt, then EOS
    (example, _) = ChatExamples(read_conversations([path]), tok, max_len=128).examples
    kept = example["targets"][example["targets"] != IGNORE_INDEX].tolist()
    assert tok.decode(kept) == correct + tok.decode([tok.eos_id])
    prompt = tok.apply_chat_template(chat[:1], add_generation_prompt=True)
    assert tok.decode(example["input_ids"].tolist()).startswith(prompt) and prompt.endswith("<think>\n")


def test_distillation_loss_by_hand():
    torch.manual_seed(0)
    student = torch.randn(1, 3, 5)
    teacher = torch.randn(1, 3, 5)
    targets = torch.tensor([[2, IGNORE_INDEX, 4]])
    T = 2.0
    loss, metrics = distill.distillation_loss(student, teacher, targets, temperature=T, alpha=1.0)
    expected = 0.0
    for t in (0, 2):  # the ignored position carries no loss
        p = torch.softmax(teacher[0, t] / T, -1)
        q = torch.softmax(student[0, t] / T, -1)
        expected += float((p * (p.log() - q.log())).sum())
    assert metrics["kl"].item() == pytest.approx(expected / 2, rel=1e-5)
    assert loss.item() == pytest.approx(T * T * expected / 2, rel=1e-5)  # T^2 scaling, mean over 2 tokens
    # zero when the student is the teacher, at any temperature
    same, _ = distill.distillation_loss(teacher, teacher.clone(), targets, temperature=3.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    # alpha = 0 is plain cross-entropy on the trace tokens; token_norm sets the divisor
    ce, _ = distill.distillation_loss(student, teacher, targets, alpha=0.0, token_norm=4)
    reference = F.cross_entropy(student[0, [0, 2]], targets[0, [0, 2]], reduction="sum") / 4
    assert ce.item() == pytest.approx(reference.item(), rel=1e-6)
    mixed, _ = distill.distillation_loss(student, teacher, targets, temperature=T, alpha=0.25)
    full_ce, _ = distill.distillation_loss(student, teacher, targets, alpha=0.0)
    assert mixed.item() == pytest.approx(0.25 * loss.item() + 0.75 * full_ce.item(), rel=1e-5)


def test_distillation_loss_gradient_only_at_completion_tokens():
    student = torch.randn(1, 3, 5, requires_grad=True)
    loss, _ = distill.distillation_loss(student, torch.randn(1, 3, 5), torch.tensor([[2, IGNORE_INDEX, 4]]))
    loss.backward()
    assert student.grad[0, 1].abs().sum() == 0 and student.grad[0, 0].abs().sum() > 0


def test_different_vocabularies_fail_clearly():
    with pytest.raises(ValueError, match="same vocabulary"):
        distill.distillation_loss(
            torch.zeros(1, 2, 5), torch.zeros(1, 2, 6), torch.zeros(1, 2, dtype=torch.long)
        )

    class M:
        def __init__(self, v):
            self.config = type("C", (), {"vocab_size": v})()

    with pytest.raises(ValueError, match="shared vocabulary.*teacher has vocab_size 300, the student 310"):
        distill.check_same_vocabulary(M(300), M(310))


# ----------------------------------------------------------------------------------------------
# the stages on a tiny random teacher

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tok):
    from r1kit.model import ModelConfig, Transformer

    path = tmp_path_factory.mktemp("teacher")
    cfg = ModelConfig.preset("tiny-llama", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, **TINY)
    torch.manual_seed(0)
    Transformer(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _config(tmp_path, teacher_dir, **overrides):
    from r1kit.config import load_config

    base = {
        "teacher.path": str(teacher_dir),
        "sample.prompts": 4,
        "sample.k": 2,
        "sample.max_new_tokens": 8,
        "sample.verify": False,  # a random teacher is never right: keep everything to exercise the stage
        "sample.require_format": False,
        "sample.out": str(tmp_path / "traces.jsonl"),
        "student.overrides": {**TINY, "hidden_size": 16},
        "distill.max_len": 32,
        "train.steps": 2,
        "train.batch_size": 2,
        "train.device": "cpu",
        "run.dir": str(tmp_path / "student"),
        "run.progress": False,
    }
    return load_config(distill.Config, "configs/distill_tiny.toml", {**base, **overrides})


def test_sample_then_distill_stages(tmp_path, teacher_dir):
    config = _config(tmp_path, teacher_dir)
    sampled = distill.run_sample(config)
    assert sampled.metrics["kept"] == 8 and sampled.metrics["samples"] == 8
    assert sampled.path == Path(config.sample.out) and sampled.stats["total"]["kept"] == 8
    assert sampled.stats_file.is_file() and len(sampled.path.read_text().splitlines()) == 8
    stats = json.loads(distill.stats_path(config.sample.out).read_text())
    assert stats["stats"]["addition"]["prompts"] == 4
    sft_result = distill.run(config)
    assert sft_result.metrics["steps"] == 2 and (tmp_path / "student" / "model" / "config.json").is_file()
    assert sft_result.model_dir == tmp_path / "student" / "model" and sft_result.method == "sft"
    assert "wall_s" in sft_result.cost

    logits = _config(tmp_path, teacher_dir, **{"distill.method": "logits", "run.dir": str(tmp_path / "kd")})
    kd_result = distill.run(logits)
    assert (
        math.isfinite(kd_result.metrics["loss"]) and (tmp_path / "kd" / "model" / "tokenizer.json").is_file()
    )
    assert kd_result.model_dir == tmp_path / "kd" / "model" and kd_result.method == "logits"


def test_generation_flops_by_hand():
    from r1kit.model import ModelConfig
    from r1kit.model.counting import flops_per_token

    cfg = ModelConfig.preset("tiny-llama", vocab_size=64, **TINY)
    # 2 prompts of 5 tokens, 3 samples each (30 prompt tokens over the rows), 60 generated tokens
    got = distill.generation_flops(cfg, prefilled=10, row_prompt_tokens=30, generated=60, rows=6)
    assert got == pytest.approx(flops_per_token(cfg, 15, include_mtp=False) * 70 / 3)  # seq (30 + 60) / 6


def test_rejection_sampling_flops_count_the_prompts_once_and_every_generated_token(tmp_path, teacher_dir):
    from r1kit.evaluate import render_prompts
    from r1kit.loaders import load_model
    from r1kit.model.counting import flops_per_token
    from r1kit.tasks import get_task, task_kwargs

    config = _config(tmp_path, teacher_dir)
    sampled = distill.run_sample(config)
    model, tok, _ = load_model(str(teacher_dir), device="cpu")
    s = config.sample
    problems = get_task(s.tasks[0], **task_kwargs(s.task_args, s.tasks[0])).problems(
        s.split, s.prompts, s.seed
    )
    prompt = sum(
        len(ids) for ids in render_prompts(tok, problems, config.prompt.template, config.prompt.system)
    )
    generated = sampled.stats["total"]["generated_tokens"]
    assert prompt > 0 and generated > 0
    seq = (prompt * s.k + generated) // (s.prompts * s.k)
    expected = flops_per_token(model.config, seq, include_mtp=False) * (prompt + generated) / 3
    assert sampled.cost["flops"] == pytest.approx(expected)


def test_logit_distillation_refuses_another_vocabulary(tmp_path, teacher_dir):
    (tmp_path / "traces.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]})
        + "\n"
    )
    config = _config(
        tmp_path,
        teacher_dir,
        **{"distill.method": "logits", "student.overrides": {**TINY, "vocab_size": 400}},
    )
    with pytest.raises(ValueError, match="shared vocabulary"):
        distill.run(config)


def test_distill_without_traces_says_what_to_run(tmp_path, teacher_dir):
    with pytest.raises(FileNotFoundError, match="r1kit sample"):
        distill.run(_config(tmp_path, teacher_dir))


# ----------------------------------------------------------------------------------------------
# end to end (slow): teacher SFT -> rejection sampling -> distilled student vs the same student without traces


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_distilled_student_beats_the_same_student_without_traces(tmp_path):
    """benchmarks/bench_distill.py at its default settings (~3 CPU minutes): every kept trace verifies, and the
    student distilled from them beats the same student (same prompts, steps, batch, seed) trained on
    answer-only data, on held-out problems. (Verified vs unverified teacher samples is reported by the
    benchmark but not asserted: at this scale their gap is within seed noise.)"""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_distill.py"
    spec = importlib.util.spec_from_file_location("bench_distill", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.bench(bench.parse_args(["--out", str(tmp_path / "bench"), "--quiet", "--no-gold"]))
    sampling, scores = report["sampling"], report["scores"]
    assert sampling["kept"] > 0 and sampling["verified_wrong"] == 0
    traces = [json.loads(line) for line in (tmp_path / "bench" / "traces.jsonl").read_text().splitlines()]
    task = bench.get_task("addition", **bench.TASK_ARGS)
    assert all(task.score(r["messages"][-1]["content"], bench._problem(r)) == 1.0 for r in traces)
    distilled, control = scores["verified traces (distilled)"], scores["answer-only, same prompts (baseline)"]
    assert distilled["greedy_acc"] > control["greedy_acc"] + 0.05, scores
    assert distilled["pass@1"] > control["pass@1"] + 0.05, scores
