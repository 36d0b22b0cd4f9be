"""Rollouts for GRPO: prompts in, a scored and padded training batch out.

The GRPO stage (`r1kit/rl/grpo.py`) calls these pieces once per step:

1. `PromptStream` hands each rank its next prompts (a reshuffled pass over the train split per epoch,
   resumable from a cursor).
2. `sample_groups` renders and encodes the prompts, samples G completions per prompt with the
   `Engine` and scores each completion with the rewards (`score_completions`).
3. `keep_informative_groups` implements DAPO's dynamic sampling: groups whose rewards are all equal
   carry no gradient and are dropped, and the caller refills the batch from new prompts.
4. `build_batch` lays prompt + completion tokens out as one right-padded (B, L) batch, so the loss
   needs a single forward; `completion_logprobs` runs the backbone over it and the head only at the
   counted completion tokens, in chunks (`r1kit.rl.losses.head_logprobs`), giving (B, T) log-probs.

Shapes: B completions (n_groups x G, a group's rows adjacent), L prompt + completion positions,
T completion positions, V vocabulary.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from r1kit.engine import Completion, Engine, SamplingParams
from r1kit.rewards import overlong_penalty
from r1kit.rl.losses import HEAD_CHUNK, entropy_from_logits, head_logprobs, token_logprobs
from r1kit.tasks.base import Problem, answer_only, scoring_text
from r1kit.train.loop import final_hidden, head_weight


class PromptStream:
    """An endless, resumable stream of training problems: a fresh shuffle of the pool per epoch.

    Rank r of `world_size` reads positions r, r + world_size, ... of each epoch's permutation, so
    ranks never share a prompt within an epoch. `state_dict` / `load_state_dict` carry the cursor.
    """

    def __init__(self, problems: Sequence[Problem], seed: int = 0, rank: int = 0, world_size: int = 1):
        if len(problems) < world_size:
            raise ValueError(f"{len(problems)} training problems for {world_size} ranks")
        self.problems = list(problems)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(f"{self.seed}/{self.epoch}").shuffle(order)
        return order[self.rank :: self.world_size]

    def take(self, n: int) -> list[Problem]:
        """The next `n` problems of this rank (crossing into the next epoch when needed)."""
        out = []
        while len(out) < n:
            if self.cursor >= len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self.problems[self._order[self.cursor]])
            self.cursor += 1
        return out

    def state_dict(self) -> dict[str, int]:
        """Epoch and cursor of this rank."""
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved epoch and cursor."""
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation()


@dataclass
class Rollout:
    """G scored completions for each of some prompts (rows of a group adjacent).

    problems: (B,) the problem of each completion. prompt_ids: (B,) prompt token ids per row.
    completions: (B,) the engine's completions. rewards_B: (B,) float32 total (weighted) reward.
    parts: reward name -> (B,) float32 unweighted value, for logging.
    """

    problems: list[Problem]
    prompt_ids: list[list[int]]
    completions: list[Completion]
    rewards_B: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.completions)

    def select_groups(self, keep_N: torch.Tensor, group_size: int) -> Rollout:
        """The rollout restricted to groups whose entry of the (n_groups,) bool `keep_N` is True."""
        rows = [i for i in range(len(self)) if bool(keep_N[i // group_size])]
        index = torch.tensor(rows, dtype=torch.long)
        return Rollout(
            [self.problems[i] for i in rows],
            [self.prompt_ids[i] for i in rows],
            [self.completions[i] for i in rows],
            self.rewards_B[index],
            {k: v[index] for k, v in self.parts.items()},
        )

    @staticmethod
    def concat(rollouts: Sequence[Rollout]) -> Rollout:
        """Rows of several rollouts, in order (all must log the same reward parts)."""
        return Rollout(
            [p for r in rollouts for p in r.problems],
            [p for r in rollouts for p in r.prompt_ids],
            [c for r in rollouts for c in r.completions],
            torch.cat([r.rewards_B for r in rollouts]) if rollouts else torch.zeros(0),
            {k: torch.cat([r.parts[k] for r in rollouts]) for k in (rollouts[0].parts if rollouts else {})},
        )


def score_completions(
    reward_fn: Callable,
    completions: Sequence[Completion],
    problems: Sequence[Problem],
    *,
    overlong_cache: int = 0,
    overlong_weight: float = 1.0,
    max_new_tokens: int = 0,
    all_answer: Sequence[bool] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rewards of completions: (total_B, parts) with parts name -> (B,) unweighted values.

    `all_answer` (B,): rows whose completions without think tags are all answer
    (`r1kit.tasks.base.answer_only`: an instruct model's own chat template); default none.

    `reward_fn` is a `CombinedReward` (its `breakdown` gives the parts) or any `(text, problem) ->
    float`. With `overlong_cache` > 0, DAPO's soft overlong punishment on the token count (L_max =
    `max_new_tokens`, window `overlong_cache`) is added with weight `overlong_weight` as part "overlong".
    """
    totals, parts = [], {}
    for i, (c, p) in enumerate(zip(completions, problems)):
        text = scoring_text(c.text, bool(all_answer[i]) if all_answer is not None else False)
        if hasattr(reward_fn, "breakdown"):
            values = reward_fn.breakdown(text, p)
            total = values.pop("total")
        else:
            total = float(reward_fn(text, p))
            values = {}
        if overlong_cache > 0:
            values["overlong"] = overlong_penalty(len(c.token_ids), max_new_tokens, overlong_cache)
            total += overlong_weight * values["overlong"]
        totals.append(total)
        for name, value in values.items():
            parts.setdefault(name, []).append(value)
    return (
        torch.tensor(totals, dtype=torch.float32),
        {k: torch.tensor(v, dtype=torch.float32) for k, v in parts.items()},
    )


def sample_groups(
    engine: Engine,
    tokenizer,
    problems: Sequence[Problem],
    params: SamplingParams,
    reward_fn: Callable,
    *,
    template: str = "chat",
    system: str = "",
    overlong_cache: int = 0,
    overlong_weight: float = 1.0,
    prompt_cache: dict[str, list[int]] | None = None,
) -> tuple[Rollout, float, float]:
    """Sample `params.n` completions per problem and score them.

    Returns:
        (rollout, generate_seconds, score_seconds).
    """
    cache = prompt_cache if prompt_cache is not None else {}
    prompt_ids = []
    for p in problems:
        key = p.id
        if key not in cache:
            cache[key] = tokenizer.prompt_ids(p.prompt, template, system)
        prompt_ids.append(cache[key])
    t0 = time.perf_counter()
    completions = engine.generate(prompt_ids, params)
    t1 = time.perf_counter()
    row_problems = [problems[c.prompt_index] for c in completions]
    whole = [answer_only(tokenizer.decode(ids), template) for ids in prompt_ids]
    rewards_B, parts = score_completions(
        reward_fn,
        completions,
        row_problems,
        overlong_cache=overlong_cache,
        overlong_weight=overlong_weight,
        max_new_tokens=params.max_new_tokens,
        all_answer=[whole[c.prompt_index] for c in completions],
    )
    t2 = time.perf_counter()
    rows_prompt_ids = [prompt_ids[c.prompt_index] for c in completions]
    return Rollout(row_problems, rows_prompt_ids, completions, rewards_B, parts), t1 - t0, t2 - t1


def informative_groups(rewards_B: torch.Tensor, group_size: int) -> torch.Tensor:
    """(n_groups,) bool: True where a group's rewards are not all equal (its advantages are not all 0)."""
    r_NG = rewards_B.reshape(-1, group_size)
    return r_NG.amax(dim=1) != r_NG.amin(dim=1)


@dataclass
class Batch:
    """A padded training batch for one forward: prompt + completion per row, right-padded.

    input_ids_BL: (B, L) long. index_BT: (B, T) long, position of the logits that score completion
    token t (prompt length - 1 + t, clamped). targets_BT: (B, T) long completion tokens (padding 0).
    mask_BT: (B, T) float32, 1 for completion tokens that count in the loss (sampled, not forced,
    not padding, not an overlong-filtered completion). advantages_B: (B,) float32.
    old_logp_BT / ref_logp_BT: filled in by the trainer.
    """

    input_ids_BL: torch.Tensor
    index_BT: torch.Tensor
    targets_BT: torch.Tensor
    mask_BT: torch.Tensor
    advantages_B: torch.Tensor
    old_logp_BT: torch.Tensor | None = None
    ref_logp_BT: torch.Tensor | None = None

    @property
    def num_tokens(self) -> float:
        """Completion tokens that count in the loss."""
        return float(self.mask_BT.sum())

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`."""
        return Batch(
            *(t.to(device) for t in (self.input_ids_BL, self.index_BT, self.targets_BT, self.mask_BT)),
            self.advantages_B.to(device),
        )


def build_batch(
    rollout: Rollout,
    advantages_B: torch.Tensor,
    pad_id: int,
    *,
    overlong_filter: bool = False,
    rows: Sequence[int] | None = None,
) -> Batch:
    """Lay out `rows` of a rollout (default all) as one right-padded batch (see `Batch`).

    Right padding keeps every real token's causal context free of padding, so the forward needs no
    attention mask or custom positions. Forced tokens (engine mask 0) and, with `overlong_filter`,
    every token of a truncated completion (finish_reason "length") get mask 0.
    """
    rows = list(range(len(rollout))) if rows is None else list(rows)
    prompts = [rollout.prompt_ids[i] for i in rows]
    comps = [rollout.completions[i] for i in rows]
    L = max(len(p) + len(c.token_ids) for p, c in zip(prompts, comps))
    T = max(len(c.token_ids) for c in comps)
    B = len(rows)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    targets = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.float32)
    start = torch.zeros(B, dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompts, comps)):
        n = len(c.token_ids)
        input_ids[b, : len(p)] = torch.tensor(p, dtype=torch.long)
        input_ids[b, len(p) : len(p) + n] = torch.tensor(c.token_ids, dtype=torch.long)
        targets[b, :n] = torch.tensor(c.token_ids, dtype=torch.long)
        if not (overlong_filter and c.finish_reason == "length"):
            mask[b, :n] = torch.tensor(c.mask, dtype=torch.float32)
        start[b] = len(p) - 1
    # clamped positions belong to padding (mask 0); L - 2 is the last position with a real target
    index = (start[:, None] + torch.arange(T)[None, :]).clamp(max=max(L - 2, 0))
    return Batch(input_ids, index, targets, mask, advantages_B[torch.tensor(rows, dtype=torch.long)].float())


def completion_logprobs(
    model: torch.nn.Module,
    batch: Batch,
    temperature: float = 1.0,
    *,
    entropy: bool = False,
    chunk_size: int = HEAD_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward over prompt + completion; log-probs (and entropies) of the counted completion tokens.

    The backbone runs once over the batch; the head runs only at the positions that score a counted
    completion token (mask 1), through `head_logprobs`, which never holds more than `chunk_size`
    positions' logits in the forward or the backward (no (B, L, V) tensor: at vocabulary 151,936 that
    was most of the memory of a GRPO update). The logits are divided by the sampling temperature, so
    the log-probs are those of the distribution the rollout sampled from (top-k / top-p truncation
    aside). A model whose head is sharded (FSDP2) takes the plain path: full logits, then gather.

    Returns:
        (logp_BT float32, with grad when grad is enabled, 0 where mask_BT is 0;
        entropy_BT float32 in nats at the same positions when `entropy`, else None).
    """
    weight = head_weight(model)
    if weight is None:
        return _completion_logprobs_full(model, batch, temperature, entropy)
    hidden_BLD = final_hidden(model, batch.input_ids_BL)
    b_n, t_n = batch.mask_BT.nonzero(as_tuple=True)
    h_nD = hidden_BLD[b_n, batch.index_BT[b_n, t_n]]
    temp = temperature if temperature > 0 else 1.0
    out = head_logprobs(
        h_nD, weight, batch.targets_BT[b_n, t_n], temperature=temp, entropy=entropy, chunk_size=chunk_size
    )
    logp_n, ent_n = out if entropy else (out, None)
    zeros_BT = hidden_BLD.new_zeros(batch.mask_BT.shape, dtype=logp_n.dtype)
    logp_BT = zeros_BT.index_put((b_n, t_n), logp_n)
    ent_BT = None if ent_n is None else zeros_BT.index_put((b_n, t_n), ent_n)
    return logp_BT, ent_BT


def _completion_logprobs_full(
    model: torch.nn.Module, batch: Batch, temperature: float, entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`completion_logprobs` through the model's own head: (B, L, V) logits, then gathered (the
    fallback for a sharded head)."""
    logits_BLV = model(batch.input_ids_BL)
    scaled_BLV = logits_BLV / temperature if temperature > 0 and temperature != 1.0 else logits_BLV
    # position l scores token l + 1; the last column's target is padding and never gathered
    next_BL = torch.roll(batch.input_ids_BL, shifts=-1, dims=1)
    keep_BT = batch.mask_BT > 0
    logp_BT = token_logprobs(scaled_BLV, next_BL).gather(1, batch.index_BT)
    logp_BT = torch.where(keep_BT, logp_BT, torch.zeros_like(logp_BT))
    ent_BT = None
    if entropy:
        ent_BT = entropy_from_logits(scaled_BLV).gather(1, batch.index_BT)
        ent_BT = torch.where(keep_BT, ent_BT, torch.zeros_like(ent_BT))
    return logp_BT, ent_BT
