"""Every stage goes through the one loop (`r1kit.train.loop.Trainer`), so logit distillation and GRPO
get exact resume and data parallelism like pretraining and SFT: a stopped-and-resumed run follows the
uninterrupted trajectory, and 2 gloo ranks (DDP, FSDP2) follow the single-process one."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from stage_runs import (
    GRPO_EVAL,
    STAGE_CASES,
    grpo_config,
    logits_config,
    make_policy_dir,
    make_teacher,
    record_rollouts,
    replay_rollouts,
    stage_worker,
)

from r1kit import distill
from r1kit.model import Transformer
from r1kit.rl import grpo

TRAJECTORY = ("loss", "grad_norm", "lr", "kl", "ce", "entropy", "reward/mean")


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _rows(run_dir: Path) -> dict[int, dict]:
    """The metrics rows of a run by step (rows of the same step merged)."""
    rows: dict[int, dict] = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)
    return rows


def _trajectory(run_dir: Path) -> dict[int, dict]:
    return {s: {k: r[k] for k in TRAJECTORY if k in r} for s, r in _rows(run_dir).items() if "loss" in r}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return Transformer.from_pretrained(Path(run_dir) / "model").state_dict()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_logit_distillation_resumes_exactly(tmp_path: Path):
    teacher, traces = make_teacher(tmp_path)
    distill.run(logits_config(teacher, traces, tmp_path / "straight", steps=4))
    first = distill.run(logits_config(teacher, traces, tmp_path / "split", steps=4, stop_after=2))
    assert first.metrics["steps"] == 2 and first.metrics["stop_reason"] == "run.stop_after = 2"
    resumed = distill.run(logits_config(teacher, traces, tmp_path / "split", steps=4, resume=True))
    assert resumed.metrics["steps"] == 4
    straight, split = _trajectory(tmp_path / "straight"), _trajectory(tmp_path / "split")
    assert sorted(split) == [1, 2, 3, 4] and all("kl" in r and "ce" in r for r in split.values())
    assert split == straight  # bit for bit: weights, AdamW moments, schedule, data order, RNG
    for name, value in _weights(tmp_path / "straight").items():
        assert torch.equal(value, _weights(tmp_path / "split")[name]), name


def test_logit_distillation_first_step_loss_by_hand(tmp_path: Path):
    """Step 1 through the loop (4 micro-batches of 1, loss shares over the global token count) equals
    `distillation_loss` of the teacher and the fresh student on the whole first batch at once."""
    from r1kit.tokenizer import Tokenizer
    from r1kit.train.data import BatchStream, ChatExamples, read_conversations
    from r1kit.train.pretrain import build_model

    teacher_dir, traces = make_teacher(tmp_path)
    cfg = logits_config(teacher_dir, traces, tmp_path / "kd", steps=1)
    distill.run(cfg)
    row = _rows(tmp_path / "kd")[1]
    tok = Tokenizer.from_pretrained(teacher_dir)
    teacher = Transformer.from_pretrained(teacher_dir)
    student = build_model(cfg.student, tok, torch.device("cpu"), cfg.train.seed)
    examples = ChatExamples(read_conversations([traces]), tok, cfg.distill.max_len)
    (batch,) = BatchStream(examples, 4, 0, seed=cfg.train.seed, pad_id=tok.pad_id or 0).next_micro_batches()
    with torch.no_grad():
        mask = batch["attention_mask"]
        loss, parts = distill.distillation_loss(
            student(batch["input_ids"], attention_mask=mask),
            teacher(batch["input_ids"], attention_mask=mask),
            batch["targets"],
            temperature=cfg.distill.temperature,
            alpha=cfg.distill.alpha,
        )
    assert row["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert row["kl"] == pytest.approx(float(parts["kl"]), rel=1e-5) and row["kl"] > 0
    assert row["ce"] == pytest.approx(float(parts["ce"]), rel=1e-5)


def test_grpo_resumes_exactly_with_reference_and_mu(tmp_path: Path):
    """The rollout state (prompt streams, the reference model reset at step 2, the sampling seeds, RNG)
    comes back from the loop's checkpoint: sampled completions, rewards and losses all match."""
    policy = make_policy_dir(tmp_path / "policy")
    extra = ("--loss.ref_reset_every", "2", "--rollout.dynamic_sampling", "true")
    grpo.run(grpo_config(policy, tmp_path / "straight", *extra, "--train.steps", "3"))
    grpo.run(grpo_config(policy, tmp_path / "split", *extra, "--train.steps", "2"))
    resumed = grpo.run(
        grpo_config(policy, tmp_path / "split", *extra, "--train.steps", "3", "--run.resume", "true")
    )
    assert resumed.metrics["steps"] == 3
    straight, split = _trajectory(tmp_path / "straight"), _trajectory(tmp_path / "split")
    assert sorted(split) == [1, 2, 3] and all(r["grad_norm"] > 0 and "kl" in r for r in split.values())
    assert split == straight
    for name, value in _weights(tmp_path / "straight").items():
        assert torch.equal(value, _weights(tmp_path / "split")[name]), name


def test_two_ranks_follow_one_rank_for_grpo_and_logit_distillation(tmp_path: Path, monkeypatch):
    make_policy_dir(tmp_path / "policy")
    make_teacher(tmp_path)
    rollouts = record_rollouts(tmp_path / "policy", tmp_path)
    # one spawn of 2 ranks runs every case (process start-up dominates these tiny runs)
    mp.spawn(stage_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    monkeypatch.setattr(grpo.GRPOTrainer, "collect", grpo.GRPOTrainer.collect)  # undone after the test
    replay_rollouts(rollouts)
    one_grpo = tmp_path / "one" / "grpo"
    grpo.run(grpo_config(tmp_path / "policy", one_grpo, *GRPO_EVAL))
    one_logits = tmp_path / "one" / "logits"
    distill.run(logits_config(tmp_path / "teacher", tmp_path / "traces.jsonl", one_logits))
    for stage, strategy in STAGE_CASES:
        name = f"{stage}-{strategy}"
        one_dir, two_dir = (one_grpo if stage == "grpo" else one_logits), tmp_path / "two" / name
        one, two = _trajectory(one_dir), _trajectory(two_dir)
        assert sorted(two) == sorted(one) == ([1, 2, 3] if stage == "grpo" else [1, 2, 3, 4]), name
        for step in one:
            # same data, losses normalised by global counts: equal up to float reduction order
            for key, value in one[step].items():
                assert two[step][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, step, key)
        for key, value in _weights(one_dir).items():  # AdamW amplifies reduction-order noise a little
            torch.testing.assert_close(_weights(two_dir)[key], value, rtol=1e-4, atol=1e-5)
        if stage == "grpo":  # held-out greedy eval before training ran on the (FSDP2-gathered) policy
            assert _rows(two_dir)[0]["eval/greedy_acc"] == _rows(one_dir)[0]["eval/greedy_acc"]
            assert "eval/greedy_acc" in _rows(two_dir)[2]


def test_checkpoints_with_a_plain_optimizer_state_still_load():
    """GRPO checkpoints written before the one loop hold ``optimizer.state_dict()`` (parameters by index);
    the loop's restore accepts them (its own state, parameters by name, is what the resume tests load)."""
    from r1kit.train.loop import _FullOptimizerState, build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    trained = build_optimizer(model, 1e-2)
    model(torch.randn(2, 3)).sum().backward()
    trained.step()
    fresh = build_optimizer(model, 1e-2)
    _FullOptimizerState(model, fresh).load_state_dict(trained.state_dict())
    want, got = trained.state_dict()["state"], fresh.state_dict()["state"]
    assert sorted(got) == sorted(want) == [0, 1, 2, 3]
    for index in want:
        torch.testing.assert_close(got[index]["exp_avg_sq"], want[index]["exp_avg_sq"], rtol=0, atol=0)
