"""On-policy distillation (`distill.method = "on_policy"`, GKD with lambda = 1, arXiv 2306.13649): the
reverse-KL loss by hand, gradients only into the student, zero loss and no update when the student is the
teacher, the KL falling over a few steps, and exact resume through the one training loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from r1kit import distill
from r1kit.model import ModelConfig, Transformer
from r1kit.tasks import get_task
from r1kit.tokenizer import Tokenizer
from r1kit.train.loop import RunConfig, TrainConfig
from r1kit.train.pretrain import ModelSection

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def test_reverse_kl_by_hand_two_positions_three_tokens():
    p = [[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]  # student
    q = [[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]]  # teacher
    student = torch.tensor(p).log().requires_grad_(True)
    teacher = torch.tensor(q).log()
    tokens = torch.tensor([0, 2])
    kl = [sum(pi * math.log(pi / qi) for pi, qi in zip(pr, qr)) for pr, qr in zip(p, q)]
    assert kl[0] == pytest.approx(0.25 * math.log(2))
    loss, m = distill.on_policy_loss(student, teacher, tokens)
    assert loss.item() == pytest.approx(sum(kl) / 2, rel=1e-6) and m["kl"].item() == pytest.approx(
        sum(kl) / 2
    )
    # the sampled estimator's value is log p(y) - log q(y) of the sampled tokens
    sampled, m2 = distill.on_policy_loss(student, teacher, tokens, estimator="sampled", token_norm=4)
    by_hand = (math.log(0.5 / 0.25) + math.log((1 / 3) / 0.25)) / 4
    assert sampled.item() == pytest.approx(by_hand, rel=1e-6) and m2["kl"].item() == pytest.approx(
        sum(kl) / 4
    )
    # the full estimator's gradient is the exact gradient of the KL (autograd of the plain formula)
    loss.backward()
    ref = student.detach().clone().requires_grad_(True)
    lp, lq = torch.log_softmax(ref, -1), torch.log_softmax(teacher, -1)
    ((lp.exp() * (lp - lq)).sum() / 2).backward()
    torch.testing.assert_close(student.grad, ref.grad, rtol=1e-5, atol=1e-7)
    # the reward term: -A log p(y), weighted
    adv = torch.tensor([1.0, -0.5])
    mixed, m3 = distill.on_policy_loss(student, teacher, tokens, advantages=adv, reward_weight=0.5)
    pg = -(1.0 * math.log(0.5) - 0.5 * math.log(1 / 3)) / 2
    assert m3["pg"].item() == pytest.approx(pg, rel=1e-6)
    assert mixed.item() == pytest.approx(sum(kl) / 2 + 0.5 * pg, rel=1e-6)


def test_gradient_only_into_the_student_and_zero_when_equal():
    torch.manual_seed(0)
    s = torch.randn(4, 7, requires_grad=True)
    t = torch.randn(4, 7, requires_grad=True)
    loss, _ = distill.on_policy_loss(s, t, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    same = s.detach().clone().requires_grad_(True)
    zero, _ = distill.on_policy_loss(same, s.detach().clone(), torch.tensor([0, 1, 2, 3]))
    zero.backward()
    assert zero.item() == 0.0 and torch.count_nonzero(same.grad) == 0  # exactly: no drift for AdamW
    with pytest.raises(ValueError, match="same vocabulary"):
        distill.on_policy_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------------------------
# the stage through the loop, on a tiny random teacher


def _tokenizer() -> Tokenizer:
    task = get_task("addition", digits=(1, 2))
    tok = Tokenizer.train(["0123456789+=\n"], vocab_size=300)
    texts = [tok.apply_chat_template(task.sft_messages(p)) for p in task.problems("train", n=100, seed=0)]
    return Tokenizer.train(texts, vocab_size=300)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    tok = _tokenizer()
    path = tmp_path_factory.mktemp("teacher")
    cfg = ModelConfig.preset("tiny-llama", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, **TINY)
    torch.manual_seed(0)
    teacher = Transformer(cfg)
    with torch.no_grad():  # a peaked teacher: something to distil
        teacher.lm_head.weight.mul_(20.0)
    teacher.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _config(teacher: Path, run_dir: Path, steps: int = 4, student_init: str = "", lr: float = 1e-2, **run):
    student = ModelSection(preset="tiny-llama", init=student_init, overrides={**TINY, "hidden_size": 16})
    return distill.Config(
        teacher=distill.TeacherSection(path=str(teacher)),
        sample=distill.SampleSection(tasks=["addition"], task_args={"addition": {"digits": 2}}, prompts=32),
        student=student,
        distill=distill.DistillSection(method="on_policy", max_new_tokens=8, samples_per_prompt=2),
        train=TrainConfig(
            steps=steps,
            batch_size=4,
            micro_batch_size=2,
            lr=lr,
            warmup_steps=1,
            device="cpu",
            threads=1,
            weight_decay=0.0,
        ),  # fmt: skip
        run=RunConfig(dir=str(run_dir), progress=False, plot=False, **run),
    )


def _rows(run_dir: Path) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)
    return rows


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return Transformer.from_pretrained(run_dir / "model").state_dict()


def test_teacher_as_student_gives_zero_loss_and_no_update(tmp_path, teacher_dir):
    result = distill.run(_config(teacher_dir, tmp_path / "same", steps=2, student_init=str(teacher_dir)))
    assert result.method == "on_policy"
    rows = _rows(tmp_path / "same")
    assert all(rows[s]["loss"] == 0.0 and rows[s]["grad_norm"] == 0.0 for s in (1, 2))
    before = Transformer.from_pretrained(teacher_dir).state_dict()
    for name, value in _weights(tmp_path / "same").items():
        assert torch.equal(value, before[name]), name


def test_a_few_steps_reduce_the_reverse_kl(tmp_path, teacher_dir):
    distill.run(_config(teacher_dir, tmp_path / "kl", steps=20, lr=3e-2))
    rows = _rows(tmp_path / "kl")
    kl = [rows[s]["kl"] for s in sorted(rows) if "kl" in rows[s]]
    assert len(kl) == 20 and sum(kl[-3:]) / 3 < 0.8 * sum(kl[:3]) / 3, kl
    assert rows[20]["flops"] > rows[1]["flops"] > 0 and rows[1]["cost/tokens_sampled"] > 0


def test_on_policy_resumes_exactly(tmp_path, teacher_dir):
    distill.run(_config(teacher_dir, tmp_path / "straight"))
    first = distill.run(_config(teacher_dir, tmp_path / "split", stop_after=2))
    assert first.metrics["steps"] == 2
    resumed = distill.run(_config(teacher_dir, tmp_path / "split", resume=True))
    assert resumed.metrics["steps"] == 4
    keys = ("loss", "grad_norm", "lr", "kl", "reward/mean", "completion/length_mean")
    straight, split = _rows(tmp_path / "straight"), _rows(tmp_path / "split")
    assert sorted(split) == [1, 2, 3, 4]
    for step in range(1, 5):
        assert {k: split[step][k] for k in keys} == {k: straight[step][k] for k in keys}, step
    for name, value in _weights(tmp_path / "straight").items():
        assert torch.equal(value, _weights(tmp_path / "split")[name]), name


def test_on_policy_user_errors_say_what_to_type(tmp_path, teacher_dir):
    from dataclasses import replace

    from r1kit.config import ConfigError

    cfg = _config(teacher_dir, tmp_path / "odd")
    with pytest.raises(ConfigError, match="multiple of distill.samples_per_prompt"):
        distill.run(replace(cfg, train=replace(cfg.train, batch_size=5)))
    with pytest.raises(ConfigError, match="samples one task's prompts"):
        distill.run(replace(cfg, sample=replace(cfg.sample, tasks=["addition", "countdown"])))
