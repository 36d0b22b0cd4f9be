"""`r1kit grpo`: RL with verifiable rewards (GRPO, Dr. GRPO, DAPO, GSPO; arXiv 2402.03300, 2503.20783,
2503.14476, 2507.18071; DeepSeek-R1, arXiv 2501.12948).

One step:

1. sample: each rank takes its share of `prompts_per_step` prompts and the engine samples
   `group_size` completions per prompt (KV cache, prefill once per prompt);
2. score: rule-based rewards (task accuracy, format, DAPO soft overlong punishment, user rewards),
   weighted; with dynamic sampling, groups whose rewards are all equal are dropped and refilled
   from new prompts (at most `max_sampling_rounds` extra rounds);
3. advantages: `group_advantages` (group-normalised for GRPO, centred only for Dr. GRPO);
4. update: `mu` optimiser steps on the batch. Each step is one forward over prompt + completion
   (right-padded, plain causal attention) and `policy_loss`; at the first one the current policy is
   the sampling policy, so old_logp is that forward's log-prob, detached (never a second forward);
   the reference model (only when beta > 0) adds one no-grad forward per step;
5. after each optimiser step the MoE routing biases move (aux-loss-free balancing).

Held-out evaluation (greedy accuracy and pass@1 over k samples) runs every `eval.every` steps;
metrics go to metrics.jsonl (+ TensorBoard), a rich progress bar, and at the end `aha.png`
(reward, held-out accuracy and completion length over steps). Checkpoints resume exactly
(model, optimiser, scheduler, RNG, prompt stream, cost totals, elapsed time).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from r1kit import lora
from r1kit.config import ConfigError, check_positive, check_range
from r1kit.engine import SamplingParams
from r1kit.evaluate import EvalParams, evaluate_engine, is_correct
from r1kit.loaders import load_tokenizer, resolve_device, resolve_model_dir, set_threads
from r1kit.metrics import pass_at_k
from r1kit.model import Transformer
from r1kit.model.counting import flops_per_token
from r1kit.rewards import combine, get_reward
from r1kit.rl import losses  # called as losses.policy_loss so tests can spy on it
from r1kit.rl.curriculum import PassRateTracker, balanced_subset, correctness, group_pass_rates, take_rows
from r1kit.rl.losses import group_advantages
from r1kit.rl.rollout import (
    PromptStream,
    Rollout,
    build_batch,
    completion_logprobs,
    informative_groups,
    sample_groups,
)
from r1kit.seeding import stable_seed
from r1kit.tasks import get_task, task_kwargs
from r1kit.train.checkpoint import latest_checkpoint
from r1kit.train.log import plot_metrics
from r1kit.train.loop import (
    LoopResult,
    RunConfig,
    Stage,
    StepWork,
    TrainConfig,
    Trainer,
    all_reduce_sum,
    cleanup_distributed,
    setup_distributed,
)
from r1kit.train.pretrain import finish_lora
from r1kit.train.result import RunResult
from r1kit.train.sections import EngineSection, LoRASection, ModelDirSection, PromptSection, check_task_args

PLOT_KEYS = ("reward/mean", "eval/greedy_acc", "eval/pass@1", "completion/length_mean")


# ----------------------------------------------------------------------------------------------
# configuration


ModelSection = ModelDirSection  # [model] the policy to train (shared with eval and distillation)


@dataclass
class DataSection:
    """[data] the task, its prompts and the held-out split.

    task (str): task name for `r1kit.tasks.get_task` ("addition", "countdown", "gym:NAME", "jsonl:FILE", ...).
    task_args (dict): keyword arguments of the task keyed by its name, e.g. {addition = {digits = 4}}.
    train_problems (int): size of the training pool drawn from the "train" split (cycled, reshuffled per epoch).
    """

    task: str = "addition"
    task_args: dict[str, Any] = field(default_factory=dict)
    train_problems: int = 10000

    def __post_init__(self) -> None:
        check_task_args(self.task_args, "data.task_args", [self.task])


@dataclass
class RewardSection:
    """[reward] rule-based rewards, summed with weights.

    names (list): "accuracy" (the task's scorer), "format", "tagged_format" (answer in <answer> tags), "language", or "module:function".
    weights (list): one weight per name.
    overlong_cache (int): DAPO soft overlong window L_cache in tokens (L_max = max_new_tokens); 0 = off.
    overlong_weight (float): weight of the overlong punishment in the reward.
    """

    names: list[str] = field(default_factory=lambda: ["accuracy", "format"])
    weights: list[float] = field(default_factory=lambda: [1.0, 0.1])
    overlong_cache: int = 0
    overlong_weight: float = 1.0


@dataclass
class RolloutSection:
    """[rollout] sampling of the completions.

    prompts_per_step (int): prompts per step, over all ranks (R1-Zero: 32).
    group_size (int): G, completions per prompt (R1-Zero: 16; DeepSeekMath: 64).
    temperature (float): sampling temperature (R1-Zero: 1.0); the loss uses the same temperature.
    top_p (float): nucleus sampling mass (1.0 = off).
    top_k (int): top-k sampling (0 = off).
    max_new_tokens (int): completion length cap (DeepSeekMath: 1024).
    ignore_eos (bool): never stop at EOS (benchmarks: fixed-length completions).
    dynamic_sampling (bool): DAPO: drop groups with all-equal rewards and refill with new prompts.
    max_sampling_rounds (int): extra sampling rounds per step to refill; then dropped groups fill the rest.
    overlong_filter (bool): DAPO: exclude truncated completions (finish "length") from the loss.
    pass_rate_filter (list): [lo, hi]: skip, before sampling, a prompt whose running pass-rate estimate is
        not strictly between lo and hi ([0.0, 1.0]: always or never solved when last seen; GRESO, arXiv
        2506.02177); prompts not seen yet always run; [] = off (`r1kit.rl.curriculum`).
    pass_rate_alpha (float): weight of the newest group in the running estimate (1.0 = the last group's).
    pass_rate_retry (int): a skipped prompt runs again after this many skips in a row (0 = never).
    hard_prompt_samples (int): completions sampled for a hard prompt (estimate below hard_pass_rate),
        cut to group_size keeping its successes (at most half) first (Reinforce-Ada, arXiv 2510.04996); 0 = off.
    hard_pass_rate (float): the estimate below which a prompt is hard.
    """

    prompts_per_step: int = 32
    group_size: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 1024
    ignore_eos: bool = False
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    overlong_filter: bool = False
    pass_rate_filter: list[float] = field(default_factory=list)
    pass_rate_alpha: float = 1.0
    pass_rate_retry: int = 2
    hard_prompt_samples: int = 0
    hard_pass_rate: float = 0.25


@dataclass
class LossSection:
    """[loss] the policy-gradient objective (`r1kit.rl.losses.policy_loss`).

    loss_type (str): "grpo" (per-sequence token mean), "dr_grpo" (sum / (G x max_new_tokens), no std),
        "dapo" (token mean over the batch), "gspo" (sequence-level ratio).
    advantage_scale (str): "auto" ("none" for dr_grpo, "group" otherwise), "group", "batch" or "none".
    eps_low (float): lower clip range (GRPO/DAPO 0.2; GSPO 3e-4).
    eps_high (float): upper clip range (GRPO 0.2; DAPO clip-higher 0.28; GSPO 4e-4).
    beta (float): k3 KL weight; a reference is loaded only if > 0 (DeepSeekMath 0.04, R1-Zero 0.001, DAPO 0).
    ref_reset_every (int): copy the policy into the reference every N steps (R1-Zero: 400); 0 = never.
    mu (int): optimiser steps per rollout batch (GRPO's mu); old_logp is fixed by the first.
    """

    loss_type: Literal["grpo", "dr_grpo", "dapo", "gspo"] = "grpo"
    advantage_scale: Literal["auto", "group", "batch", "none"] = "auto"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.001
    ref_reset_every: int = 0
    mu: int = 1


@dataclass
class TrainSection(TrainConfig):
    """[train] the loop's `TrainConfig` (`r1kit.train.loop`), with GRPO's defaults where they differ:
    100 steps, AdamW lr 3e-6 (R1-Zero; tiny CPU models: 1e-4, 3e-4 collapsed), weight decay 0,
    beta2 0.99, no warm-up, a constant schedule.

    The other keys and their help are TrainConfig's; the MTP head is not trained (mtp_* keep their defaults).

    steps (int): GRPO steps (rollout batches, `loss.mu` optimiser steps each; the schedule spans
        steps x mu) of the whole run; 0 = no limit (then max_seconds must be set).
    batch_size (int): leave 0: GRPO's batch is rollout.prompts_per_step x rollout.group_size completions.
    micro_batch_size (int): completions per forward/backward on one rank (accumulation); 0 = all at once.
    lr (float): peak AdamW learning rate (R1-Zero: 3e-6; tiny CPU models: 1e-4, 3e-4 collapsed).
    max_seconds (float): wall-clock budget in seconds, evaluation included; 0 = none.
    """

    steps: int = 100
    batch_size: int = 0
    lr: float = 3e-6
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "constant"
    weight_decay: float = 0.0
    beta2: float = 0.99

    def __post_init__(self) -> None:
        check_positive(self.steps, "train.steps", allow_zero=True)
        check_positive(self.batch_size, "train.batch_size", allow_zero=True)
        if self.steps == 0 and self.max_seconds == 0:
            raise ConfigError(
                "set train.steps and/or train.max_seconds (both are 0: the run would never stop)"
            )
        steps, batch_size = self.steps, self.batch_size
        self.steps, self.batch_size = max(steps, 1), max(batch_size, 1)  # the loop's checks of the rest
        try:
            super().__post_init__()
        finally:
            self.steps, self.batch_size = steps, batch_size
        base = TrainConfig()
        for name in ("mtp_weight", "mtp_weight_final", "mtp_switch"):
            if getattr(self, name) != getattr(base, name):
                raise ConfigError(f"train.{name} has no effect in GRPO (the MTP head is not trained)")


@dataclass
class RunSection(RunConfig):
    """[run] the loop's `RunConfig` (`r1kit.train.loop`): run directory (config.toml, metrics.jsonl,
    checkpoints/, model/, aha.png), resume, checkpoints, logging, progress, TensorBoard (on by default
    here) and the aha.png plot (reward, held-out accuracy, completion length)."""

    dir: str = "runs/grpo"
    tensorboard: bool = True


@dataclass
class EvalSection:
    """[eval] held-out evaluation during training (DeepSeek-R1 protocol, arXiv 2501.12948).

    every (int): evaluate every N steps (and before the first and after the last); 0 = never.
    split (str): held-out split of the task ("val" or "test").
    problems (int): held-out problems.
    samples (int): k samples per problem for pass@1 (mean correctness over the k); 0 = greedy only.
    temperature (float): sampling temperature of the k samples (R1: 0.6).
    top_p (float): nucleus mass of the k samples (R1: 0.95).
    max_new_tokens (int): completion cap; 0 = rollout.max_new_tokens.
    seed (int): seed of the held-out draw; differs from the SFT validation draw (seed 0), so the
        problems the cold start was stopped on are not the ones GRPO is judged on.
    """

    every: int = 50
    split: Literal["val", "test"] = "val"
    problems: int = 64
    samples: int = 4
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 0
    seed: int = 1


@dataclass
class Config:
    """`r1kit grpo` configuration: the policy ([model]), its task ([data]) and [prompt], [reward], [rollout], [loss],
    the loop's [train] and [run] sections (GRPO's defaults: `TrainSection`, `RunSection`) and the
    held-out [eval]. `train.seed` seeds the prompt order and the sampling streams."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    prompt: PromptSection = field(default_factory=PromptSection)
    reward: RewardSection = field(default_factory=RewardSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    loss: LossSection = field(default_factory=LossSection)
    train: TrainSection = field(default_factory=TrainSection)
    run: RunSection = field(default_factory=RunSection)
    eval: EvalSection = field(default_factory=EvalSection)
    lora: LoRASection = field(default_factory=LoRASection)  # the KL reference is then the base weights
    engine: EngineSection = field(default_factory=EngineSection)  # rollouts and held-out evaluation

    def __post_init__(self) -> None:
        r = self.rollout
        if self.train.batch_size and self.train.batch_size != r.prompts_per_step * r.group_size:
            raise ConfigError(
                "train.batch_size is rollout.prompts_per_step x rollout.group_size in GRPO; leave it 0"
            )
        check_positive(r.prompts_per_step, "rollout.prompts_per_step")
        check_positive(r.group_size, "rollout.group_size")
        check_positive(r.temperature, "rollout.temperature", allow_zero=True)
        check_range(r.top_p, "rollout.top_p", 1e-9, 1.0)
        check_positive(r.max_new_tokens, "rollout.max_new_tokens")
        check_positive(r.max_sampling_rounds, "rollout.max_sampling_rounds", allow_zero=True)
        check_curriculum(r)
        if len(self.reward.names) != len(self.reward.weights):
            raise ConfigError(
                f"reward.names has {len(self.reward.names)} entries but reward.weights has "
                f"{len(self.reward.weights)}; give one weight per reward"
            )
        for name in self.reward.names:
            if name == "overlong":
                raise ConfigError(
                    "the overlong punishment is set by reward.overlong_cache (tokens), not a name"
                )
        check_range(self.reward.overlong_cache, "reward.overlong_cache", 0, r.max_new_tokens)
        lo = self.loss
        check_positive(lo.beta, "loss.beta", allow_zero=True)
        check_positive(lo.eps_low, "loss.eps_low", allow_zero=True)
        check_positive(lo.eps_high, "loss.eps_high", allow_zero=True)
        check_positive(lo.mu, "loss.mu")
        check_positive(lo.ref_reset_every, "loss.ref_reset_every", allow_zero=True)
        if self.lora.rank and lo.ref_reset_every:
            raise ConfigError(
                "with LoRA the KL reference is the base weights (adapter off) and cannot be reset; "
                "set --loss.ref_reset_every 0 or train fully with --lora.rank 0"
            )
        self.lora.check_stage(init=self.model.path, where="model.path", strategy=self.train.strategy)
        check_positive(self.eval.every, "eval.every", allow_zero=True)
        check_positive(self.eval.samples, "eval.samples", allow_zero=True)


def check_curriculum(r: RolloutSection) -> None:
    """The pass-rate keys of [rollout] (`r1kit.rl.curriculum`)."""
    f = r.pass_rate_filter
    if f and (len(f) != 2 or not 0.0 <= f[0] < f[1] <= 1.0):
        raise ConfigError(
            f"rollout.pass_rate_filter is [lo, hi] with 0 <= lo < hi <= 1, e.g. [0.0, 1.0]; got {f}"
        )
    check_range(r.pass_rate_alpha, "rollout.pass_rate_alpha", 1e-9, 1.0)
    check_positive(r.pass_rate_retry, "rollout.pass_rate_retry", allow_zero=True)
    check_range(r.hard_pass_rate, "rollout.hard_pass_rate", 0.0, 1.0)
    if r.hard_prompt_samples and r.hard_prompt_samples < r.group_size:
        raise ConfigError(
            f"rollout.hard_prompt_samples ({r.hard_prompt_samples}) must be 0 (off) or at least "
            f"rollout.group_size ({r.group_size})"
        )


def curriculum_unused(config: Config, pool: int) -> str | None:
    """Why the pass-rate keys cannot act in this run, or None. Both rules read a prompt's estimate from the
    last time it was sampled, so with a pool of `pool` prompts at least as large as the most prompts the
    run can draw (train.steps x rollout.prompts_per_step, x 1 + max_sampling_rounds with dynamic sampling)
    no prompt comes back and neither rule ever fires (measured: a 300-step
    run with hard_prompt_samples = 32 over a 20,000-prompt pool reproduced the run without it exactly)."""
    r, steps = config.rollout, config.train.steps
    keys = [
        k
        for k, on in (
            ("pass_rate_filter", r.pass_rate_filter),
            ("hard_prompt_samples", r.hard_prompt_samples),
        )
        if on
    ]
    rounds = 1 + (r.max_sampling_rounds if r.dynamic_sampling else 0)  # DAPO's refills draw new prompts
    drawn = steps * r.prompts_per_step * rounds  # the most prompts this run can draw
    if not keys or not steps or pool < drawn:
        return None
    return (
        f"rollout.{' and rollout.'.join(keys)} will never act: at most {drawn} prompts drawn in {steps} "
        f"steps never reach the pool's {pool} prompts a second time; give data.train_problems < {drawn} "
        "(a prompt comes back once per pass over the pool)"
    )


# ----------------------------------------------------------------------------------------------
# reward


def build_reward(config: Config, task) -> Any:
    """The weighted `CombinedReward` of `reward.names` (the overlong term is added per token later)."""
    parts = []
    for name, weight in zip(config.reward.names, config.reward.weights):
        label = name.rsplit(":", 1)[-1] if ":" in name else name
        parts.append((label, get_reward(name, task), weight))
    return combine(parts)


# ----------------------------------------------------------------------------------------------
# evaluation


def evaluate_policy(
    engine,
    tokenizer,
    task,
    problems: list,
    *,
    samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    template: str,
    system: str,
    seed: int,
    dist=None,
    device: torch.device | None = None,
    greedy: bool = True,
) -> dict[str, float]:
    """Held-out greedy accuracy and pass@1 over `samples` samples (mean correctness), on this rank's share.

    Through the evaluation core (`r1kit.evaluate.evaluate_engine`): one greedy call, then one call of
    `samples` samples per problem seeded with the one `seed` (rows keyed by their position in the call).
    Under torch.distributed each rank evaluates problems[rank::world] and the counts are summed.
    Returns {"eval/greedy_acc" and "eval/length_mean" (greedy decode, when `greedy`), "eval/pass@1"
    (when samples > 0)}.
    """
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    mine = problems[rank::world]
    greedy_correct = pass1_sum = length_sum = 0.0
    common = dict(template=template, system=system)
    if mine:
        if greedy:
            # seed None as ever: the engine draws the (unused) greedy seed from torch's RNG
            params = EvalParams(k=0, greedy=True, max_new_tokens=max_new_tokens, seed=None)
            (result,) = evaluate_engine(engine, tokenizer, task, mine, params, **common)
            greedy_correct = sum(is_correct(r["greedy"]["score"]) for r in result.records)
            length_sum = result.timing["generated_tokens"]
        if samples > 0:
            params = EvalParams(
                k=samples,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                greedy=False,
                seed=seed,
                seed_per_problem=False,
            )
            (result,) = evaluate_engine(engine, tokenizer, task, mine, params, **common)
            pass1_sum = sum(pass_at_k(samples, sum(r["correct"]), 1) for r in result.records)
    counts = [float(len(mine)), float(greedy_correct), float(pass1_sum), float(length_sum)]
    if dist is not None and dist.distributed:
        counts = all_reduce_sum(counts, dist, device or torch.device("cpu"))
    n = max(counts[0], 1.0)
    out = {"eval/greedy_acc": counts[1] / n, "eval/length_mean": counts[3] / n} if greedy else {}
    if samples > 0:
        out["eval/pass@1"] = counts[2] / n
    return out


# ----------------------------------------------------------------------------------------------
# the trainer


def step_flops(
    train_fpt: float, sampled_tokens: float, trained_tokens: float, mu: int, reference: bool
) -> float:
    """FLOPs of one GRPO step, from the training FLOPs per token ``train_fpt`` (6N + attention).

    Sampling is a forward (a third of a training pass) over every token the engine computed: each
    group's prompt once (the prefill is shared) and every completion, in every dynamic-sampling round.
    The update is ``mu`` forward + backward passes, and the reference model's forward when there is
    one, over the rows that actually ran (zero-advantage rows are skipped when beta is 0): the equal-FLOPs
    SFT control in the demo is only fair if these are not over-counted.
    """
    return train_fpt * (sampled_tokens / 3 + trained_tokens * (mu + (1 / 3 if reference else 0)))


def rollout_metrics(rollout, dist, device: torch.device) -> dict[str, float]:
    """Reward, length and truncation statistics of this rank's rollout (summed over ranks)."""
    lengths = torch.tensor([len(c.token_ids) for c in rollout.completions], dtype=torch.float64)
    truncated = torch.tensor([c.finish_reason == "length" for c in rollout.completions], dtype=torch.float64)
    series = {"reward": rollout.rewards_B.double(), **{k: v.double() for k, v in rollout.parts.items()}}
    sums = [float(len(rollout)), float(lengths.sum()), float(truncated.sum())]
    for v in series.values():
        sums += [float(v.sum()), float((v * v).sum())]
    sums = all_reduce_sum(sums, dist, device)
    n = max(sums[0], 1.0)
    out = {
        "completion/length_mean": sums[1] / n,
        "completion/truncated_frac": sums[2] / n,
        "generated_tokens": sums[1],
    }
    max_len = float(lengths.max()) if len(lengths) else 0.0
    if dist.distributed:
        t = torch.tensor([max_len], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        max_len = float(t)
    out["completion/length_max"] = max_len
    for i, name in enumerate(series):
        s, ss = sums[3 + 2 * i], sums[4 + 2 * i]
        mean = s / n
        std = math.sqrt(max(ss / n - mean * mean, 0.0) * n / max(n - 1, 1.0))
        key = "reward" if name == "reward" else f"reward/{name}"
        out[f"{key}/mean"], out[f"{key}/std"] = mean, std
    return out


def gather_stream_states(prompts, dist, device: torch.device) -> list[dict[str, int]]:
    """Every rank's prompt-stream state (one collective when distributed)."""
    world, rank = dist.world_size, dist.rank
    vec = [0.0] * (2 * world)
    state = prompts.state_dict()
    vec[2 * rank], vec[2 * rank + 1] = state["epoch"], state["cursor"]
    if dist.distributed:
        vec = all_reduce_sum(vec, dist, device)
    return [{"epoch": int(vec[2 * r]), "cursor": int(vec[2 * r + 1])} for r in range(world)]


class GRPOTrainer(Stage):
    """One GRPO run as a :class:`r1kit.train.loop.Stage`: its batches are rollouts (`collect`, with the
    engine) turned into advantage-weighted micro-batches, its loss is `policy_loss`; the step machinery
    (optimiser, schedule, accumulation, clipping, DDP/FSDP2, MoE bias, checkpoints, logs, stop rules) is
    `r1kit.train.loop.Trainer`'s. `run(config)` builds it and calls `train()`.

    Public attributes a test or a notebook may read: `model` (the plain policy), `train_model`
    (DDP-wrapped or the same), `ref_model` (None unless beta > 0; with LoRA always None and
    `base_reference` True: the reference is `model` with its adapters off), `optimizer`, `scheduler`,
    `engine`, `tokenizer`, `task`, `step`, `dist`, `device`, `loop` (the Trainer: its `meter`,
    `val_metrics` (the last held-out evaluation) and `elapsed()`).
    """

    name = "grpo"

    def __init__(self, config: Config):
        self.config = c = config
        t = c.train
        self.dist = setup_distributed(t.device)
        self.device = resolve_device(t.device, self.dist)
        set_threads(t.threads)
        self.run_dir = Path(c.run.dir)
        world = self.dist.world_size
        if c.rollout.prompts_per_step % world:
            raise ConfigError(
                f"rollout.prompts_per_step ({c.rollout.prompts_per_step}) must be a multiple of the "
                f"{world} ranks"
            )
        self.local_prompts = c.rollout.prompts_per_step // world
        self.updates_per_step = c.loss.mu

        self.model_dir = resolve_model_dir(c.model.path)
        self.tokenizer = load_tokenizer(self.model_dir, c.model.tokenizer)
        self.pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        self.model = Transformer.from_pretrained(self.model_dir, device=self.device, dtype=torch.float32)
        # GRPO trains the main model only: the MTP head gets no loss (and DDP would see unused parameters)
        for p in self.model.mtp.parameters():
            p.requires_grad_(False)
        self.lora_layers = lora.prepare(self.model, c.lora, seed=t.seed)  # A from train.seed; resume loads it
        if self.lora_layers:
            torch.manual_seed(t.seed)  # lora.dropout draws from train.seed (a resume restores the RNG)
        # the KL reference: with LoRA the policy's own base weights, adapters off (no second copy)
        self.base_reference = bool(self.lora_layers) and c.loss.beta > 0
        self.ref_model = None
        if c.loss.beta > 0 and not self.lora_layers:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        # FSDP2 shards the policy in place: the engine samples from a full copy refreshed every step
        sharded = self.dist.distributed and t.strategy == "fsdp2"
        self.policy = copy.deepcopy(self.model) if sharded else self.model

        self.task = get_task(c.data.task, **task_kwargs(c.data.task_args, c.data.task))
        train_problems = self.task.problems(split="train", n=c.data.train_problems, seed=t.seed)
        self.prompts = PromptStream(train_problems, seed=t.seed, rank=self.dist.rank, world_size=world)
        if (unused := curriculum_unused(c, len(train_problems))) is not None:
            warnings.warn(unused, stacklevel=2)
        self.eval_problems = (
            self.task.problems(split=c.eval.split, n=c.eval.problems, seed=c.eval.seed)
            if c.eval.every
            else []
        )
        self.reward_fn = build_reward(c, self.task)
        self.prompt_cache: dict[str, list[int]] = {}
        r = c.rollout
        # per-prompt pass-rate estimates: the difficulty filter and the hard-prompt sampling (None = off)
        self.curriculum = (
            PassRateTracker(
                r.pass_rate_filter or None,
                alpha=r.pass_rate_alpha,
                retry=r.pass_rate_retry,
                hard_below=r.hard_pass_rate if r.hard_prompt_samples else 0.0,
            )
            if r.pass_rate_filter or r.hard_prompt_samples
            else None
        )

        self.loop = Trainer(
            self.model,
            self,
            # the schedule spans train.steps x mu optimiser steps (at least one step with steps = 0)
            replace(t, steps=max(t.steps, 1), batch_size=c.rollout.prompts_per_step * c.rollout.group_size),
            c.run,
            dist=self.dist,
            device=self.device,
            tokenizer=self.tokenizer,
            config=c,
            steps=t.steps,
            validate_every=c.eval.every,
            validate_at_start=True,
            validate_on_stop=True,
        )
        self.autocast = self.loop.autocast
        self.engine = c.engine.build(self.policy, self.tokenizer)
        self.time_totals = {"generate": 0.0, "score": 0.0, "logprobs": 0.0, "backward": 0.0, "eval": 0.0}
        self.first_eval: dict[str, float] = {}
        self.ref_step = 0
        self._update: dict[str, Any] = {}  # the current batch's normalisers and timers

    # ------------------------------------------------------------------ the loop's objects
    @property
    def step(self) -> int:
        """GRPO steps (rollout batches) done."""
        return self.loop.step

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.loop.optimizer

    @property
    def scheduler(self) -> Any:
        return self.loop.scheduler

    @property
    def train_model(self) -> torch.nn.Module:
        return self.loop.wrapped

    def _sync_policy(self) -> None:
        """FSDP2: gather the trained weights into the engine's full copy (a collective); else nothing."""
        if self.policy is self.model:
            return
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        self.policy.load_state_dict({k: v.to(self.device) for k, v in full.items()})

    # ------------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict[str, Any]:
        """Rollout state for the loop's checkpoint: every rank's prompt stream, the time split, the first
        evaluation and the step of the reference model (whose weights live in run_dir/reference)."""
        return {
            "streams": gather_stream_states(self.prompts, self.dist, self.device),
            "time_totals": dict(self.time_totals),
            "first_eval": dict(self.first_eval),
            "ref_step": self.ref_step,
            # this rank's estimates (rank 0's in the checkpoint); every rank resumes from them
            "curriculum": self.curriculum.state_dict() if self.curriculum is not None else {},
        }

    def load_state_dict(self, extra: dict[str, Any]) -> None:
        streams = extra.get("streams") or []
        if len(streams) == self.dist.world_size:
            self.prompts.load_state_dict(streams[self.dist.rank])
        elif streams:  # a different world size: continue every rank from the furthest epoch
            self.prompts.load_state_dict({"epoch": max(s["epoch"] for s in streams) + 1, "cursor": 0})
        self.time_totals.update(extra.get("time_totals", {}))
        self.first_eval = dict(extra.get("first_eval", {}))
        if "last_eval" in extra and not extra.get("validation"):  # a checkpoint from before the one loop
            self.loop.val_metrics = dict(extra["last_eval"])
        self.ref_step = int(extra.get("ref_step", 0))
        if self.curriculum is not None and extra.get("curriculum"):
            self.curriculum.load_state_dict(extra["curriculum"])
        self._sync_policy()
        if self.ref_model is not None:
            ref_dir = self.run_dir / "reference"
            source = ref_dir if (ref_dir / "config.json").is_file() and self.ref_step > 0 else self.model_dir
            ref = Transformer.from_pretrained(source, device=self.device, dtype=torch.float32)
            self.ref_model.load_state_dict(ref.state_dict())

    def resume(self) -> bool:
        """Restore the latest checkpoint of run_dir if there is one; returns whether it did."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        self.loop.restore(ckpt)
        return True

    # ------------------------------------------------------------------ one step
    def _sampling_params(self, round_: int):
        r = self.config.rollout
        return SamplingParams(
            n=r.group_size,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            max_new_tokens=r.max_new_tokens,
            ignore_eos=r.ignore_eos,
            seed=stable_seed(self.config.train.seed, self.step, self.dist.rank, round_),
        )

    def _sample(self, problems: list, round_: int) -> tuple[Any, float, float, float, int]:
        """G scored completions per problem; with the hard-prompt rule, `hard_prompt_samples` for the hard
        ones cut to G by `balanced_subset` (groups keep the order of `problems`). Updates the pass-rate
        estimates. Returns (rollout, generate s, score s, tokens the engine computed, hard groups)."""
        c, r = self.config, self.config.rollout
        G, tracker = r.group_size, self.curriculum
        hard = [tracker is not None and tracker.is_hard(p.id) for p in problems]
        parts = []  # (positions in problems, rollout with G rows per problem)
        t_gen = t_score = computed = 0.0
        for want_hard in (False, True):
            chosen = [i for i, h in enumerate(hard) if h == want_hard]
            if not chosen:
                continue
            params = self._sampling_params(round_)
            M = r.hard_prompt_samples if want_hard else G
            if want_hard:
                params = replace(params, n=M, seed=stable_seed(params.seed, "hard"))
            self.policy.eval()
            with self.autocast():
                rollout, tg, ts = sample_groups(
                    self.engine,
                    self.tokenizer,
                    [problems[i] for i in chosen],
                    params,
                    self.reward_fn,
                    template=c.prompt.template,
                    system=c.prompt.system,
                    overlong_cache=c.reward.overlong_cache,
                    overlong_weight=c.reward.overlong_weight,
                    prompt_cache=self.prompt_cache,
                )
            t_gen, t_score = t_gen + tg, t_score + ts
            # what the engine computed: each group's prompt once (shared prefill), every completion
            computed += sum(len(rollout.prompt_ids[i]) for i in range(0, len(rollout), M))
            computed += sum(len(comp.token_ids) for comp in rollout.completions)
            correct_B = correctness(rollout)
            if tracker is not None:
                ids = [rollout.problems[i].id for i in range(0, len(rollout), M)]
                tracker.observe(ids, group_pass_rates(correct_B, M))
            if want_hard:
                rng = random.Random(stable_seed(params.seed, "subset"))
                rows = []
                for j in range(len(chosen)):
                    keep = balanced_subset(correct_B[j * M : (j + 1) * M].tolist(), G, rng)
                    rows += [j * M + k for k in keep]
                rollout = take_rows(rollout, rows)
            parts.append((chosen, rollout))
        if len(parts) == 1:
            return parts[0][1], t_gen, t_score, computed, sum(hard)
        # put the groups back in the order of `problems`
        where = {}
        for k, (chosen, _) in enumerate(parts):
            for j, i in enumerate(chosen):
                where[i] = (k, j)
        merged = Rollout.concat([p[1] for p in parts])
        offsets = [0]
        for _, ro in parts:
            offsets.append(offsets[-1] + len(ro))
        order = []
        for i in range(len(problems)):
            k, j = where[i]
            order += list(range(offsets[k] + j * G, offsets[k] + (j + 1) * G))
        return take_rows(merged, order), t_gen, t_score, computed, sum(hard)

    def collect(self) -> tuple[Any, dict[str, float]]:
        """Sample and score this rank's rollout for the step (dynamic sampling included)."""
        c = self.config
        G = c.rollout.group_size
        target = self.local_prompts
        kept, dropped = [], []
        n_groups = n_zero = 0
        t_gen = t_score = 0.0
        rounds = sampled = 0
        request = target
        skipped = hard_groups = 0
        while True:
            if self.curriculum is None:
                problems = self.prompts.take(request)
            else:
                pool = len(self.prompts.problems)
                problems, n_skip = self.curriculum.select(self.prompts.take, request, 4 * request + pool)
                skipped += n_skip
            rollout, tg, ts, computed, n_hard = self._sample(problems, rounds)
            t_gen, t_score = t_gen + tg, t_score + ts
            sampled += computed
            hard_groups += n_hard
            useful_N = informative_groups(rollout.rewards_B, G)
            n_groups += useful_N.numel()
            n_zero += int((~useful_N).sum())
            rounds += 1
            if not c.rollout.dynamic_sampling:
                kept.append(rollout)
                break
            kept.append(rollout.select_groups(useful_N, G))
            dropped.append(rollout.select_groups(~useful_N, G))
            have = sum(len(r) for r in kept) // G
            if have >= target or rounds > c.rollout.max_sampling_rounds:
                break
            # ask for enough prompts to fill the batch at the informative rate seen so far
            rate = max((n_groups - n_zero) / max(n_groups, 1), 0.25)
            request = min(math.ceil((target - have) / rate), 4 * target)
        batch = Rollout.concat(kept)
        have = len(batch) // G
        if have > target:
            batch = batch.select_groups(torch.arange(have) < target, G)
        elif have < target:  # cap reached: complete with zero-advantage groups to keep the batch size
            filler = Rollout.concat(dropped)
            need = torch.arange(len(filler) // G) < (target - have)
            batch = Rollout.concat([batch, filler.select_groups(need, G)])
        stats = {
            "groups/zero_std_frac": n_zero / max(n_groups, 1),
            **(
                {"curriculum/skipped": float(skipped), "curriculum/hard_groups": float(hard_groups)}
                if self.curriculum is not None
                else {}
            ),
            "groups/sampling_rounds": float(rounds),
            "time/generate": t_gen,
            "time/score": t_score,
            "sampled_tokens": float(sampled),
        }
        return batch, stats

    def _advantages(self, rewards_B: torch.Tensor) -> torch.Tensor:
        scale = self.config.loss.advantage_scale
        if scale == "auto":
            scale = "none" if self.config.loss.loss_type == "dr_grpo" else "group"
        return group_advantages(rewards_B, self.config.rollout.group_size, scale=scale)

    def _counted_tokens(self, rollout) -> list[float]:
        """Per row, the completion tokens that count in the loss (not forced, not overlong-filtered)."""
        drop_truncated = self.config.rollout.overlong_filter
        return [
            0.0 if drop_truncated and c.finish_reason == "length" else float(sum(c.mask))
            for c in rollout.completions
        ]

    def _micro_batches(self, rollout, advantages_B: torch.Tensor, rows: list[int]) -> list:
        """Micro-batches of `rows`, sorted by length so little padding is computed."""
        c = self.config
        size = c.train.micro_batch_size or len(rows)
        order = sorted(rows, key=lambda i: len(rollout.prompt_ids[i]) + len(rollout.completions[i].token_ids))
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        return [
            build_batch(
                rollout, advantages_B, self.pad_id, overlong_filter=c.rollout.overlong_filter, rows=chunk
            ).to(self.device)
            for chunk in chunks
        ]

    def _prepare(self, rollout) -> tuple[list, dict[str, float]]:
        """Advantages, the rows to run, their micro-batches, the loss normalisers (summed over ranks) and
        the reference log-probs (when beta > 0) of one rollout batch."""
        c = self.config
        advantages_B = self._advantages(rollout.rewards_B)
        counted_B = self._counted_tokens(rollout)
        rows = list(range(len(rollout)))
        if c.loss.beta == 0:
            # Without a KL term a row with advantage exactly 0 has a loss of exactly 0 and no gradient
            # (whatever the ratio): leave it out of the forward/backward but keep it in the normalisers
            # below, so the update is the same as with it. One row stays so every rank runs a backward.
            rows = [i for i in rows if float(advantages_B[i]) != 0.0] or [0]
        micro = self._micro_batches(rollout, advantages_B, rows)
        global_rows, global_tokens, kept_tokens = all_reduce_sum(
            [float(len(rollout)), sum(counted_B), sum(counted_B[i] for i in rows)], self.dist, self.device
        )
        temperature = c.rollout.temperature if c.rollout.temperature > 0 else 1.0
        t0 = time.perf_counter()
        if self.ref_model is not None or self.base_reference:
            ref = self.model if self.base_reference else self.ref_model
            with torch.no_grad(), self.autocast(), lora.adapters_disabled(ref):
                for mb in micro:
                    mb.ref_logp_BT = completion_logprobs(ref, mb, temperature)[0].float()
        self._update = {
            "temperature": temperature,
            "global_rows": global_rows,
            "global_tokens": max(global_tokens, 1.0),
            "kept_tokens": max(kept_tokens, 1.0),
            "ref_s": time.perf_counter() - t0,
            "forward_s": 0.0,
            "first": True,
            "t0": time.perf_counter(),
        }
        metrics = {
            "rows_skipped_frac": (len(rollout) - len(rows)) / max(len(rollout), 1),
            # the rows that ran forward and backward (zero-advantage rows skipped above cost nothing)
            "train_tokens": float(
                sum(len(rollout.prompt_ids[i]) + len(rollout.completions[i].token_ids) for i in rows)
            ),
        }
        return micro, metrics

    def before_update(self, index: int) -> None:
        self._update["first"] = index == 0
        if index == 0:
            self._update["t0"] = time.perf_counter()

    def loss(self, model: torch.nn.Module, mb: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The policy loss of one micro-batch as its share of the global batch loss."""
        c, u = self.config, self._update
        t0 = time.perf_counter()
        # the entropy metric comes from the same chunked head pass (first update only; no gradient)
        logp_BT, ent_BT = completion_logprobs(model, mb, u["temperature"], entropy=u["first"])
        if mb.old_logp_BT is None:
            # first update: the policy is still the one that sampled, so this forward's log-prob,
            # detached, is old_logp (ratio 1 in value, REINFORCE gradient); kept for the next mu - 1
            mb.old_logp_BT = logp_BT.detach()
        loss, m = losses.policy_loss(
            logp_BT,
            mb.old_logp_BT,
            mb.ref_logp_BT,
            mb.advantages_B,
            mb.mask_BT,
            loss_type=c.loss.loss_type,
            eps_low=c.loss.eps_low,
            eps_high=c.loss.eps_high,
            beta=c.loss.beta,
            max_completion_length=c.rollout.max_new_tokens,
        )
        rows, tokens = float(mb.mask_BT.shape[0]), mb.num_tokens
        # this micro-batch's share of the global batch loss (train_step sums contributions)
        dapo = c.loss.loss_type == "dapo"
        weight = tokens / u["global_tokens"] if dapo else rows / u["global_rows"]
        share = tokens / u["kept_tokens"]  # metrics: means over the rows that were run
        out = {k: torch.tensor(v * share) for k, v in m.items() if k != "loss"}
        if ent_BT is not None:
            with torch.no_grad():
                out["entropy"] = (ent_BT.detach() * mb.mask_BT).sum() / u["kept_tokens"]
        u["forward_s"] += time.perf_counter() - t0
        return loss * weight, out

    def _update_times(self) -> dict[str, float]:
        u = self._update
        return {
            "time/logprobs": u["ref_s"] + u["forward_s"],
            "time/backward": time.perf_counter() - u["t0"] - u["forward_s"],
        }

    def update(self, rollout) -> dict[str, float]:
        """Advantages, reference log-probs, then `mu` optimiser steps on the rollout (the loop's update)."""
        micro, metrics = self._prepare(rollout)
        row = self.loop.update(micro, self.step + 1)
        return {**row, **metrics, **self._update_times()}

    def batches(self, step: int) -> StepWork:
        """The loop's batch of a GRPO step: sample and score a rollout, then its micro-batches and cost."""
        c = self.config
        self._step_t0 = time.perf_counter()
        self._sync_policy()
        rollout, stats = self.collect()
        metrics = {**stats, **rollout_metrics(rollout, self.dist, self.device)}
        micro, prepared = self._prepare(rollout)
        metrics.update(prepared)
        gen_tokens = metrics.pop("generated_tokens")
        sampled, trained = all_reduce_sum(
            [metrics.pop("sampled_tokens"), metrics.pop("train_tokens")], self.dist, self.device
        )
        seq = max(1, int(metrics["completion/length_mean"]))
        train_fpt = flops_per_token(self.model.config, seq, include_mtp=False)
        reference = self.ref_model is not None or self.base_reference
        flops = step_flops(train_fpt, sampled, trained, c.loss.mu, reference)
        metrics["cost/tokens_generated"] = gen_tokens
        metrics["cost/tokens_sampled"] = sampled
        metrics["cost/tokens_trained"] = trained
        metrics["cost/flops"] = flops
        return StepWork(micro, tokens=gen_tokens, flops=flops, metrics=metrics)

    def after_step(self, step: int, row: dict[str, Any]) -> dict[str, Any]:
        """Update timings, the reference reset every `loss.ref_reset_every` steps, the step's time."""
        c = self.config
        extra: dict[str, Any] = self._update_times()
        if self.ref_model is not None and c.loss.ref_reset_every and step % c.loss.ref_reset_every == 0:
            self._sync_policy()
            self.ref_model.load_state_dict(self.policy.state_dict())
            self.ref_step = step
            if self.dist.is_main:
                self.policy.save_pretrained(self.run_dir / "reference")
        for k in ("generate", "score", "logprobs", "backward"):
            self.time_totals[k] += {**row, **extra}[f"time/{k}"]
        extra["time/step"] = time.perf_counter() - self._step_t0
        extra["tokens_per_s"] = row["cost/tokens_generated"] / max(extra["time/step"], 1e-9)
        return extra

    def train_step(self) -> dict[str, float]:
        """One full GRPO step (sample, score, advantages, mu updates, reference reset); returns metrics."""
        return self.loop.train_step()

    def evaluate(self) -> dict[str, float]:
        """Held-out evaluation (see `evaluate_policy`)."""
        c = self.config
        t0 = time.perf_counter()
        self.model.eval()
        with self.autocast():
            out = evaluate_policy(
                self.engine,
                self.tokenizer,
                self.task,
                self.eval_problems,
                samples=c.eval.samples,
                temperature=c.eval.temperature,
                top_p=c.eval.top_p,
                max_new_tokens=c.eval.max_new_tokens or c.rollout.max_new_tokens,
                template=c.prompt.template,
                system=c.prompt.system,
                seed=stable_seed("eval", c.eval.seed, c.train.seed),
                dist=self.dist,
                device=self.device,
            )
        self.time_totals["eval"] += time.perf_counter() - t0
        return out

    def validate(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """The loop's validation: the held-out evaluation (the one before the first step is kept)."""
        self._sync_policy()
        out = self.evaluate()
        if step == 0:
            self.first_eval = dict(out)
        return out

    def progress_fields(self, row: dict[str, Any], val_metrics: dict[str, float]) -> dict[str, Any]:
        fields = {
            "reward": row["reward/mean"],
            "len": row["completion/length_mean"],
            "s/step": row["time/step"],
        }
        if "eval/pass@1" in val_metrics:
            fields["pass@1"] = val_metrics["eval/pass@1"]
        return fields

    def plot(self, run_dir: Path) -> None:
        """aha.png: reward, held-out accuracy and completion length over steps."""
        c = self.config
        keys = [k for k in PLOT_KEYS if k in _metric_keys(run_dir / "metrics.jsonl")]
        if keys:
            plot_metrics(
                run_dir / "metrics.jsonl",
                run_dir / "aha.png",
                keys=keys,
                title=f"GRPO ({c.loss.loss_type}) on {c.data.task}",
                stage="grpo",
            )

    # ------------------------------------------------------------------ the run
    def train(self) -> GRPOResult:
        """Run until train.steps / train.max_seconds; returns the run's `RunResult`."""
        checkpoints = self.run_dir / "checkpoints"
        if self.config.run.resume:
            self.resume()
        elif checkpoints.is_dir() and any(checkpoints.iterdir()):
            raise ConfigError(
                f"{self.run_dir} already holds checkpoints; pass --run.resume true or pick another --run.dir"
            )
        return self._finish(self.loop.run(step_fn=lambda: self.train_step()))

    def _finish(self, result: LoopResult) -> GRPOResult:
        """The summary (summary.json) and the GRPOResult; the loop has saved the model and the plot (with
        LoRA, `run_dir/model` becomes the merged model and `run_dir/adapter` the adapter)."""
        if self.lora_layers:
            finish_lora(
                self.model, self.run_dir, self.tokenizer, base_model=str(self.model_dir), dist=self.dist
            )
        cost = dict(result.cost)
        cost["time_split_s"] = dict(self.time_totals)
        metrics: dict[str, Any] = {"steps": result.step, "stopped": result.stop_reason}
        metrics.update({f"initial_{k}": v for k, v in self.first_eval.items()})
        metrics.update({f"final_{k}": v for k, v in self.loop.val_metrics.items()})
        if self.dist.is_main:
            summary = {"metrics": metrics, "cost": cost}
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        if self.dist.distributed:
            torch.distributed.barrier()
        metrics_path = self.run_dir / "metrics.jsonl"
        plot = self.run_dir / "aha.png"
        return GRPOResult(
            run_dir=self.run_dir,
            metrics=metrics,
            cost=cost,
            model_dir=result.model_dir,
            metrics_path=metrics_path,
            steps=result.step,
            eval_history=eval_history(metrics_path),
            plot_path=plot if plot.is_file() else None,
        )


@dataclass
class GRPOResult(RunResult):
    """What `run` returns: `RunResult` (run_dir, metrics, cost) plus the paths and the eval history.

    Attributes:
        model_dir: the final policy (HF layout + tokenizer), loadable by `r1kit chat/serve/eval/grpo`.
        metrics_path: the run's metrics.jsonl (one row per logged step).
        steps: GRPO steps done (rollout batches), resumed segments included.
        eval_history: held-out evaluations in step order, e.g. [{"step": 0, "eval/greedy_acc": 0.3,
            "eval/pass@1": 0.28, "eval/length_mean": 34.1}, ...] (empty with eval.every = 0).
        plot_path: aha.png, or None when it was not drawn.
    """

    model_dir: Path | None = None
    metrics_path: Path | None = None
    steps: int = 0
    eval_history: list[dict[str, float]] = field(default_factory=list)
    plot_path: Path | None = None


def eval_history(metrics_path: Path) -> list[dict[str, float]]:
    """The held-out evaluation rows of a metrics.jsonl, in step order (the last row per step wins)."""
    by_step: dict[int, dict[str, float]] = {}
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                evals = {k: v for k, v in row.items() if k.startswith("eval/")}
                if evals:
                    by_step[int(row["step"])] = {"step": int(row["step"]), **evals}
    return [by_step[k] for k in sorted(by_step)]


def _metric_keys(path: Path) -> set[str]:
    """Keys present in a metrics.jsonl."""
    keys: set[str] = set()
    if path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                keys.update(json.loads(line))
    return keys


def run(config: Config) -> GRPOResult:
    """Train a policy with GRPO-family RL as configured; see the module docstring.

    The Python API needs no TOML: nested sections are plain dataclasses, e.g.

        cfg = grpo.Config(model=grpo.ModelSection(path="runs/sft"),
                          rollout=grpo.RolloutSection(prompts_per_step=16, group_size=8, max_new_tokens=96),
                          loss=grpo.LossSection(beta=0.0), train=grpo.TrainSection(lr=1e-4, max_seconds=240),
                          run=grpo.RunSection(dir="runs/grpo"))
        result = grpo.run(cfg)    # result.model_dir, result.eval_history, result.cost, ...
    """
    trainer = None
    try:
        trainer = GRPOTrainer(config)
        return trainer.train()
    finally:  # end the process group only if this run started it
        cleanup_distributed(trainer.dist if trainer is not None else None)
