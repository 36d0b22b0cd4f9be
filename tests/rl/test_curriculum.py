"""The pass-rate curriculum of GRPO (`r1kit/rl/curriculum.py` and its hooks in `GRPOTrainer.collect`):
hand-computed group pass rates, the running estimate, the admission rule with retries, the balanced
subset of a hard prompt's samples, and the trainer's use of both."""

from __future__ import annotations

import random

import pytest
import torch
from grpo_fixtures import grpo_test_config, make_policy_dir

from r1kit.config import ConfigError
from r1kit.rl import grpo
from r1kit.rl.curriculum import PassRateTracker, balanced_subset, group_pass_rates
from r1kit.tasks.base import Problem


def parity_reward(completion: str, problem) -> float:
    """0 on every sample of a problem whose answer is a multiple of 4 (never solved); on the others the
    parity of the completion's character codes (mixed groups from a random policy)."""
    return 0.0 if int(problem.answer) % 4 == 0 else float(sum(map(ord, completion)) % 2)


def test_group_pass_rates_by_hand():
    r = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0.6, 2.0, -1.0, 0])
    assert group_pass_rates(r, 4) == pytest.approx([0.5, 0.0, 1.0, 0.4])  # values clamped to [0, 1]


def test_running_estimate_and_admission():
    t = PassRateTracker((0.0, 1.0), alpha=0.5, retry=2)
    assert t.admit("new")  # never seen: always runs
    t.observe(["a", "b", "c"], [0.5, 0.0, 1.0])
    assert t.estimate == {"a": 0.5, "b": 0.0, "c": 1.0}
    assert t.admit("a") and not t.admit("b") and not t.admit("c")
    assert not t.admit("b")  # second skip
    assert t.admit("b")  # third time: retried (retry = 2)
    assert not t.admit("b")  # and the count starts again
    t.observe(["c"], [0.0])  # 0.5 * 1.0 + 0.5 * 0.0
    assert t.estimate["c"] == 0.5 and t.admit("c")
    assert t.skipped_total == 4
    never = PassRateTracker((0.0, 1.0), retry=0)
    never.observe(["x"], [1.0])
    assert not any(never.admit("x") for _ in range(10))
    # a narrower band: only prompts solved between 20 % and 80 % of the time
    band = PassRateTracker((0.2, 0.8))
    band.observe(["lo", "mid", "hi"], [0.2, 0.5, 0.875])
    assert [band.admit(k) for k in ("lo", "mid", "hi")] == [False, True, False]
    hard = PassRateTracker(None, hard_below=0.25)
    hard.observe(["h", "e"], [0.125, 0.25])
    assert hard.is_hard("h") and not hard.is_hard("e") and not hard.is_hard("unseen")
    with pytest.raises(ValueError):
        PassRateTracker((0.8, 0.2))


def test_select_skips_and_fills():
    problems = [Problem(str(i), str(i), str(i)) for i in range(6)]
    stream = iter(problems * 10)

    def take(k):
        return [next(stream) for _ in range(k)]

    t = PassRateTracker((0.0, 1.0), retry=0)
    t.observe(["0", "2", "4"], [1.0, 0.0, 0.5])  # 0 always solved, 2 never: skipped; 4 is informative
    chosen, skipped = t.select(take, 3, max_draws=100)
    assert [p.id for p in chosen] == ["1", "3", "4"] and skipped == 2
    # with too few admissible prompts the batch is completed with skipped ones (its size never changes)
    t.observe(["1", "3", "4", "5"], [1.0, 1.0, 0.0, 0.0])
    chosen, skipped = t.select(take, 3, max_draws=6)
    assert len(chosen) == 3 and skipped == 6


def test_balanced_subset_by_hand():
    rng = random.Random(0)
    keep = balanced_subset([0, 1, 0, 0, 0, 0, 1, 0], 4, rng)
    assert len(keep) == 4 and {1, 6} <= set(keep) and keep == sorted(keep)  # both successes kept
    keep = balanced_subset([1, 1, 1, 1, 1, 1, 0, 0], 4, rng)
    assert sum(i < 6 for i in keep) == 2 and {6, 7} <= set(keep)  # successes at most half the group
    assert len(balanced_subset([0] * 8, 4, rng)) == 4
    assert len(set(balanced_subset([1] * 8, 4, rng))) == 4


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    return make_policy_dir(tmp_path_factory.mktemp("dense"), "dense")


def _config(model_dir, run_dir, *extra: str) -> grpo.Config:
    return grpo_test_config(
        model_dir,
        run_dir,
        *extra,
        data__train_problems="4",
        rollout__max_new_tokens="8",
        reward__names="test_curriculum:parity_reward",
        reward__weights="1.0",
        train__lr="3e-06",  # GRPO's default
    )


def test_trainer_filter_skips_never_solved_prompts(dense_dir, tmp_path):
    cfg = _config(dense_dir, tmp_path / "run", "--rollout.pass_rate_filter", "[0.0, 1.0]")
    cfg.rollout.pass_rate_retry = 0
    trainer = grpo.GRPOTrainer(cfg)
    first, stats = trainer.collect()  # every prompt is new: all four run
    assert stats["curriculum/skipped"] == 0
    pool = {p.id for p in trainer.prompts.problems}
    assert {p.id for p in first.problems} == pool
    est = trainer.curriculum.estimate
    never = {p.id for p in trainer.prompts.problems if int(p.answer) % 4 == 0}
    assert never and all(est[i] == 0.0 for i in never)
    admissible = {i for i in pool if 0.0 < est[i] < 1.0}
    assert admissible  # seeded: some odd-answer group is mixed
    second, stats = trainer.collect()
    assert stats["curriculum/skipped"] > 0
    assert {p.id for p in second.problems} <= admissible  # never-solved prompts were not sampled
    assert len(second) == 16


def test_trainer_hard_prompts_get_more_samples(dense_dir, tmp_path):
    cfg = _config(dense_dir, tmp_path / "run", "--rollout.hard_prompt_samples", "8")
    trainer = grpo.GRPOTrainer(cfg)
    _, stats = trainer.collect()
    assert stats["curriculum/hard_groups"] == 0  # nothing is known yet
    sampled_first = stats["sampled_tokens"]
    rollout, stats = trainer.collect()
    n_never = sum(int(p.answer) % 4 == 0 for p in trainer.prompts.problems)
    assert stats["curriculum/hard_groups"] >= n_never > 0  # estimate 0 < 0.25: hard
    assert len(rollout) == 16  # cut back to G per prompt
    for g in range(4):  # groups stay adjacent, one problem each
        assert len({p.id for p in rollout.problems[4 * g : 4 * g + 4]}) == 1
    assert stats["sampled_tokens"] > sampled_first * 1.2  # 8 samples were drawn for the hard ones
    result = trainer.train()  # the whole step runs
    assert result.steps == 2


def test_curriculum_config_errors(dense_dir, tmp_path):
    with pytest.raises(ConfigError, match="pass_rate_filter"):
        _config(dense_dir, tmp_path, "--rollout.pass_rate_filter", "[0.9, 0.1]")
    with pytest.raises(ConfigError, match="hard_prompt_samples"):
        _config(dense_dir, tmp_path, "--rollout.hard_prompt_samples", "2")


def test_curriculum_unused_when_no_prompt_comes_back(dense_dir, tmp_path):
    """The pass-rate rules read a prompt's last estimate: a pool no run reaches twice makes them no-ops,
    and the trainer says so (and with a pool it revisits, it does not)."""
    cfg = _config(dense_dir, tmp_path / "run", "--rollout.hard_prompt_samples", "8")
    cfg.rollout.dynamic_sampling = False
    steps, prompts = cfg.train.steps, cfg.rollout.prompts_per_step
    msg = grpo.curriculum_unused(cfg, steps * prompts)
    assert msg is not None and "rollout.hard_prompt_samples will never act" in msg
    assert f"data.train_problems < {steps * prompts}" in msg
    assert grpo.curriculum_unused(cfg, steps * prompts - 1) is None
    cfg.rollout.hard_prompt_samples, cfg.rollout.pass_rate_filter = 0, []
    assert grpo.curriculum_unused(cfg, 10**6) is None  # rules off: nothing to say
    cfg.rollout.pass_rate_filter = [0.0, 1.0]
    assert "rollout.pass_rate_filter will never act" in grpo.curriculum_unused(cfg, 10**6)
    cfg.rollout.dynamic_sampling, cfg.rollout.max_sampling_rounds = True, 2  # refills draw up to 3x
    assert grpo.curriculum_unused(cfg, 3 * steps * prompts - 1) is None
    assert grpo.curriculum_unused(cfg, 3 * steps * prompts) is not None
    cfg.data.train_problems = 3 * steps * prompts
    with pytest.warns(UserWarning, match="never act"):
        grpo.GRPOTrainer(cfg)
