"""Prompt selection for GRPO on pass rate: a difficulty filter and more samples on hard prompts.

A group whose G rewards are all equal has zero advantages and teaches nothing. DAPO's dynamic sampling
(arXiv 2503.14476) drops such groups *after* sampling them; this module also acts *before* sampling,
from a per-prompt running estimate of the pass rate (the share of a group's completions the task
scored correct):

- `PassRateTracker.admit` skips a prompt whose estimate is outside the open interval
  ``(lo, hi)`` of `rollout.pass_rate_filter` (``[0.0, 1.0]``: always solved or never solved the last
  time it was seen), as GRESO does (arXiv 2506.02177: a prompt that was uninformative in one epoch
  usually stays so); prompts never seen are always admitted, and a skipped prompt comes back after
  `rollout.pass_rate_retry` skips, so the estimate follows the policy as it improves;
- `PassRateTracker.is_hard` marks prompts whose estimate is below `rollout.hard_pass_rate`; the trainer
  samples `rollout.hard_prompt_samples` completions for them instead of G, and `balanced_subset` keeps
  G of them with the successes first (at most half the group) and failures at random, a fixed-size
  group with reward diversity as in Reinforce-Ada (arXiv 2510.04996). This over-weights a hard
  prompt's rare successes relative to their true rate: the point is a learning signal where G samples
  would give none.

Shapes: N groups, G completions per group, M >= G samples of a hard prompt.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch


def group_pass_rates(correct_B: torch.Tensor, group_size: int) -> list[float]:
    """(N,) pass rate of each group: the mean of its rows' correctness, clamped to [0, 1]."""
    return correct_B.float().clamp(0.0, 1.0).reshape(-1, group_size).mean(dim=1).tolist()


class PassRateTracker:
    """Per-prompt running pass-rate estimates and the admission rule (see the module docstring).

    Args:
        interval: (lo, hi): a seen prompt is admitted when lo < estimate < hi; None = admit all.
        alpha: weight of the newest group in the running estimate (1.0 = the last group's pass rate).
        retry: a prompt skipped this many times in a row is admitted once more (0 = never again).
        hard_below: prompts whose estimate is below this are hard (more samples); 0 = none.
    """

    def __init__(
        self,
        interval: Sequence[float] | None = None,
        alpha: float = 1.0,
        retry: int = 2,
        hard_below: float = 0.0,
    ):
        if interval is not None and (len(interval) != 2 or not 0.0 <= interval[0] < interval[1] <= 1.0):
            raise ValueError(f"pass_rate_filter must be [lo, hi] with 0 <= lo < hi <= 1, got {interval}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"pass_rate_alpha must be in (0, 1], got {alpha}")
        self.interval = tuple(float(x) for x in interval) if interval is not None else None
        self.alpha, self.retry, self.hard_below = float(alpha), int(retry), float(hard_below)
        self.estimate: dict[str, float] = {}
        self.skips: dict[str, int] = {}
        self.skipped_total = 0

    def observe(self, prompt_ids: Sequence[str], rates: Sequence[float]) -> None:
        """Fold each prompt's new group pass rate into its estimate (in order, so repeats compound)."""
        for pid, rate in zip(prompt_ids, rates):
            old = self.estimate.get(pid)
            self.estimate[pid] = float(rate) if old is None else (1 - self.alpha) * old + self.alpha * rate

    def admit(self, prompt_id: str) -> bool:
        """Whether to sample this prompt now; counts the skip when not."""
        est = self.estimate.get(prompt_id)
        if self.interval is None or est is None or self.interval[0] < est < self.interval[1]:
            self.skips.pop(prompt_id, None)
            return True
        skips = self.skips.get(prompt_id, 0) + 1
        if self.retry and skips > self.retry:
            self.skips.pop(prompt_id, None)
            return True
        self.skips[prompt_id] = skips
        self.skipped_total += 1
        return False

    def is_hard(self, prompt_id: str) -> bool:
        """Whether the prompt has an estimate below `hard_below`."""
        est = self.estimate.get(prompt_id)
        return est is not None and est < self.hard_below

    def select(self, take, n: int, max_draws: int) -> tuple[list[Any], int]:
        """`n` problems admitted by the filter, drawn with `take(k)` (at most `max_draws` draws; when
        fewer pass, the batch is completed with skipped ones so its size never changes).

        Returns (problems, skipped count).
        """
        chosen: list[Any] = []
        rejected: list[Any] = []
        draws = 0
        while len(chosen) < n and draws < max_draws:
            for p in take(min(n - len(chosen), max_draws - draws)):
                draws += 1
                (chosen if self.admit(p.id) else rejected).append(p)
        skipped = len(rejected)
        chosen += rejected[: n - len(chosen)]
        return chosen, skipped

    def state_dict(self) -> dict[str, Any]:
        """Estimates and skip counts (JSON-friendly)."""
        return {
            "estimate": dict(self.estimate),
            "skips": dict(self.skips),
            "skipped_total": self.skipped_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.estimate = {str(k): float(v) for k, v in state.get("estimate", {}).items()}
        self.skips = {str(k): int(v) for k, v in state.get("skips", {}).items()}
        self.skipped_total = int(state.get("skipped_total", 0))


def balanced_subset(correct: Sequence[float], group_size: int, rng: random.Random) -> list[int]:
    """Indices of `group_size` of the M samples of one hard prompt: its successes first (correct >= 0.5;
    at most half the group, at least one failure kept when there is one), then failures at random, in
    index order. With no success, a random subset."""
    wins = [i for i, c in enumerate(correct) if c >= 0.5]
    losses = [i for i, c in enumerate(correct) if c < 0.5]
    rng.shuffle(wins)
    rng.shuffle(losses)
    n_win = min(len(wins), max(group_size // 2, 1)) if losses else min(len(wins), group_size)
    keep = wins[:n_win] + losses[: group_size - n_win]
    keep += wins[n_win : n_win + group_size - len(keep)]
    return sorted(keep)


def take_rows(rollout, rows: Sequence[int]):
    """The `Rollout` restricted to `rows` (in that order)."""
    from r1kit.rl.rollout import Rollout

    index = torch.tensor(list(rows), dtype=torch.long)
    return Rollout(
        [rollout.problems[i] for i in rows],
        [rollout.prompt_ids[i] for i in rows],
        [rollout.completions[i] for i in rows],
        rollout.rewards_B[index],
        {k: v[index] for k, v in rollout.parts.items()},
    )


def correctness(rollout) -> torch.Tensor:
    """(B,) what counts as solved per row: the "accuracy" reward part when logged, else the total reward."""
    return rollout.parts.get("accuracy", rollout.rewards_B)
