"""`r1kit expert-iteration`: rejection-sampling fine-tuning on the RL prompts (STaR, arXiv 2203.14465;
ReST-EM, arXiv 2312.06585), the control that gets the same information as GRPO.

GRPO sees prompts and a verifier, nothing else. So does this: from the same checkpoint, on exactly
GRPO's prompts (the same [data] section: task, task_args, train_problems, template, system; the same
`PromptStream` seeded by `train.seed`, read in the same order) and the same verifier (the task's score,
plus a well-formed ``reasoning</think>answer`` that ended on its own, as `r1kit sample` keeps), each
round

1. samples `ei.k` completions for each of the next `ei.prompts_per_round` prompts from the *current*
   policy (`r1kit.distill.rejection_sample`),
2. keeps the verified-correct ones (deduplicated per prompt unless `ei.dedupe` is false),
3. fine-tunes the current policy on them (`r1kit.train.sft.run`, loss on the completion tokens only,
   `ei.epochs` passes over the round's traces),

and repeats for `ei.rounds` rounds or until `ei.budget_flops` is spent, whichever comes first. The policy
is continued from round to round, as GRPO continues its policy (ReST-EM restarts from the base model
each iteration; at equal FLOPs continuing is the stronger control here, and the on-policy one).

FLOPs are counted as GRPO counts its own (`r1kit.rl.grpo.step_flops`): sampling is a forward, a third of a
training pass, over each prompt once and every completion; training is what the SFT loop meters (6N +
attention over every real token). Before a round's SFT runs, its batches are laid out exactly as the
loop will draw them (`BatchStream`, same seed), so the run stops at the step that would cross the
budget: the total never exceeds `ei.budget_flops`. Held-out evaluation (GRPO's [eval] section: greedy
accuracy, pass@1 over `eval.samples`, greedy length) runs every `eval.every` rounds, before the first
and after the last, into metrics.jsonl (one row per round, with the cumulative FLOPs) and
``curve.png``.

    r1kit expert-iteration --model.path runs/sft --data.task_args '{addition = {min_digits = 4, max_digits = 5}}' \\
        --ei.budget_flops 2.4e12 --run.dir runs/ei
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from r1kit import distill
from r1kit.config import ConfigError, check_positive, check_range
from r1kit.loaders import find_tokenizer_dir, load_model, resolve_model_dir, set_threads
from r1kit.model.counting import flops_per_token
from r1kit.rl.grpo import DataSection, EvalSection, evaluate_policy, step_flops
from r1kit.rl.rollout import PromptStream
from r1kit.seeding import stable_seed
from r1kit.tasks import get_task, task_kwargs
from r1kit.train import sft
from r1kit.train.cost import CostMeter, summarize_costs
from r1kit.train.data import BatchStream, ChatExamples
from r1kit.train.log import plot_metrics
from r1kit.train.loop import RunConfig, TrainConfig
from r1kit.train.result import RunResult
from r1kit.train.sections import (
    SFT_TEMPLATES,
    EngineSection,
    ModelDirSection,
    ModelSection,
    PromptSection,
    TokenizerSection,
    ValSection,
)


@dataclass
class EISection:
    """[ei] the expert-iteration rounds.

    rounds (int): most rounds (sample, keep, fine-tune); 0 = until ei.budget_flops is spent.
    budget_flops (float): FLOPs of sampling + training after which the run stops (GRPO's total, for an
        equal-compute control); 0 = no budget (then ei.rounds must be set).
    prompts_per_round (int): prompts taken from GRPO's prompt stream per round.
    k (int): completions sampled per prompt (GRPO's rollout.group_size, for the same information).
    temperature (float): sampling temperature (GRPO's rollout.temperature).
    top_p (float): nucleus mass.
    max_new_tokens (int): completion cap (truncated completions are never kept).
    dedupe (bool): keep one copy of a completion text repeated within a prompt's samples.
    max_per_prompt (int): most traces kept per prompt; 0 = every verified one.
    epochs (float): passes over each round's kept traces (SFT steps = ceil(traces x epochs / batch)).
    max_len (int): tokens kept per trace in SFT.
    """

    rounds: int = 0
    budget_flops: float = 0.0
    prompts_per_round: int = 256
    k: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    dedupe: bool = True
    max_per_prompt: int = 0
    epochs: float = 1.0
    max_len: int = 256

    def __post_init__(self) -> None:
        check_positive(self.rounds, "ei.rounds", allow_zero=True)
        check_positive(self.budget_flops, "ei.budget_flops", allow_zero=True)
        check_positive(self.prompts_per_round, "ei.prompts_per_round")
        check_positive(self.k, "ei.k")
        check_positive(self.temperature, "ei.temperature", allow_zero=True)
        check_range(self.top_p, "ei.top_p", 1e-9, 1.0)
        check_positive(self.max_new_tokens, "ei.max_new_tokens")
        check_positive(self.max_per_prompt, "ei.max_per_prompt", allow_zero=True)
        check_positive(self.epochs, "ei.epochs")
        check_positive(self.max_len, "ei.max_len")


@dataclass
class Config:
    """`r1kit expert-iteration`: sample on GRPO's prompts, keep the verified, fine-tune, repeat ([model]
    the starting policy, [data] GRPO's prompts, [ei] the rounds, [train] the SFT of each round, [run],
    [eval] GRPO's held-out evaluation; `train.seed` seeds the prompt stream as in GRPO)."""

    model: ModelDirSection = field(default_factory=ModelDirSection)
    data: DataSection = field(default_factory=DataSection)
    prompt: PromptSection = field(default_factory=PromptSection)
    ei: EISection = field(default_factory=EISection)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=3e-4, batch_size=32, warmup_steps=0, schedule="constant")
    )
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/expert_iteration"))
    eval: EvalSection = field(default_factory=lambda: EvalSection(every=1))
    engine: EngineSection = field(default_factory=EngineSection)  # sampling and evaluation

    def __post_init__(self) -> None:
        if not self.ei.rounds and not self.ei.budget_flops:
            raise ConfigError(
                "expert iteration needs a stop: set --ei.rounds N or --ei.budget_flops F (e.g. GRPO's FLOPs)"
            )


@dataclass
class ExpertIterationResult(RunResult):
    """What `run` returns: a `RunResult` (metrics: rounds, stop_reason, flops, initial_/final_ eval
    metrics, model_dir; cost: sampling + training of every round) plus

    history: one dict per round ({"step": round, "flops": cumulative, "kept", "acceptance_rate",
        "sft_steps", "eval/...": held-out metrics when evaluated}), as in metrics.jsonl.
    rounds: the rounds' details (prompts, traces file, sampling and SFT FLOPs, SFT run directory).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)


def sft_step_flops(lengths: list[int], batch_size: int, seed: int, steps: int, flops_matmul: float,
                   flops_attn: float) -> list[float]:  # fmt: skip
    """The training FLOPs of each of `steps` SFT steps over examples of these input lengths, as the SFT
    loop will draw and meter them (`BatchStream` with `seed`; per example L x matmul + L^2 x attention)."""
    stream = BatchStream(lengths, batch_size, seed=seed)
    out = []
    for _ in range(steps):
        ls = [lengths[i] for i in stream.next_global_indices()]
        out.append(sum(n * flops_matmul + n * n * flops_attn for n in ls))
    return out


def steps_within(step_flops_: list[float], budget: float) -> int:
    """How many of these steps fit in `budget` FLOPs, in order (0 when the first does not)."""
    total, n = 0.0, 0
    for f in step_flops_:
        if total + f > budget:
            break
        total, n = total + f, n + 1
    return n


def _evaluate(model: Any, tokenizer: Any, task: Any, problems: list, config: Config) -> dict[str, float]:
    """GRPO's held-out evaluation (`r1kit.rl.grpo.evaluate_policy`) of the current policy."""

    c = config.eval
    with torch.no_grad():
        return evaluate_policy(
            config.engine.build(model, tokenizer),
            tokenizer,
            task,
            problems,
            samples=c.samples,
            temperature=c.temperature,
            top_p=c.top_p,
            max_new_tokens=c.max_new_tokens or config.ei.max_new_tokens,
            template=config.prompt.template,
            system=config.prompt.system,
            seed=stable_seed("eval", c.seed, config.train.seed),
        )


def _sft_prompt(prompt: PromptSection) -> PromptSection:
    """The [prompt] each round's SFT trains with: the sampling one, or "chat" for a plain-text template."""
    return (
        prompt if prompt.template in SFT_TEMPLATES else PromptSection(template="chat", system=prompt.system)
    )


class _Budget:
    """FLOPs spent so far against the budget (0 = none)."""

    def __init__(self, limit: float):
        self.limit, self.used = float(limit), 0.0

    @property
    def left(self) -> float:
        return math.inf if not self.limit else self.limit - self.used

    def spent(self) -> bool:
        return bool(self.limit) and self.used >= self.limit


def _sample_round(model, tokenizer, task, problems, config: Config, round_: int, meter_device, console=None):
    """Round `round_`'s rejection sampling; returns (SampleResult, sampled tokens, FLOPs, cost)."""
    e, d, pr = config.ei, config.data, config.prompt
    meter = CostMeter(meter_device).start()
    with torch.no_grad():
        result = distill.rejection_sample(
            model,
            tokenizer,
            {d.task: task},
            {d.task: problems},
            k=e.k,
            temperature=e.temperature,
            top_p=e.top_p,
            max_new_tokens=e.max_new_tokens,
            keep="all",
            max_per_prompt=e.max_per_prompt,
            dedupe=e.dedupe,
            seed=stable_seed(config.train.seed, "ei", round_),
            template=pr.template,
            system=pr.system,
            engine=config.engine,
            progress=config.run.progress,
            console=console,
        )
    total = result.stats["total"]
    generated = int(total["generated_tokens"])
    # as GRPO counts its rollouts: each prompt's prefill once, every completion, a forward = 1/3 of training
    sampled = generated + sum(len(tokenizer.prompt_ids(p.prompt, pr.template, pr.system)) for p in problems)
    seq = max(1, int(generated / max(total["samples"], 1)))
    flops = step_flops(flops_per_token(model.config, seq, include_mtp=False), sampled, 0.0, 1, False)
    meter.add(tokens=generated, flops=flops)
    return result, sampled, flops, meter.stop().summary()


def _lengths(chats: list, tokenizer: Any, max_len: int) -> list[int]:
    """Input lengths of the SFT examples of these conversations (as `ChatExamples` builds them)."""
    return [int(x["input_ids"].numel()) for x in ChatExamples(chats, tokenizer, max_len).examples]


def _flops_split(model_config: Any) -> tuple[float, float]:
    """(matmul FLOPs per token, attention FLOPs per token per position) of training, as the SFT loop meters."""
    fm = flops_per_token(model_config, 0)
    return fm, flops_per_token(model_config, 1) - fm


def sft_steps_within(
    chats: list, tokenizer: Any, model_config: Any, max_len: int, batch_size: int, seed: int, budget: float
) -> int:
    """SFT steps over these conversations (batch `batch_size`, data-order `seed`) whose training FLOPs, as
    the loop will meter them, fit in `budget`: an SFT arm at exactly another arm's FLOPs."""
    lengths = _lengths(chats, tokenizer, max_len)
    fm, fa = _flops_split(model_config)
    stream = BatchStream(lengths, batch_size, seed=seed)
    total, steps = 0.0, 0
    while True:
        f = sum(lengths[i] * fm + lengths[i] ** 2 * fa for i in stream.next_global_indices())
        if total + f > budget:
            return steps
        total, steps = total + f, steps + 1


def _plan_sft(model, tokenizer, rows, config: Config, seed: int) -> tuple[int, list[float]]:
    """(SFT steps this round's traces ask for, the FLOPs of each as the loop will meter them)."""
    lengths = _lengths([row["messages"] for row in rows], tokenizer, config.ei.max_len)
    wanted = max(1, math.ceil(len(lengths) * config.ei.epochs / config.train.batch_size))
    return wanted, sft_step_flops(lengths, config.train.batch_size, seed, wanted, *_flops_split(model.config))


def _prompts_within(stream: PromptStream, model, tokenizer, config: Config, budget: _Budget) -> int:
    """How many of the round's prompts to sample: ei.prompts_per_round, or fewer when even the most a
    round can cost (every completion running to ei.max_new_tokens) would cross the budget."""
    e, pr = config.ei, config.prompt
    if not budget.limit:
        return e.prompts_per_round
    peek = PromptStream(stream.problems, seed=stream.seed)
    peek.load_state_dict(stream.state_dict())
    fpt = flops_per_token(model.config, e.max_new_tokens, include_mtp=False)
    n, spent = 0, 0.0
    for p in peek.take(e.prompts_per_round):
        worst = step_flops(fpt, len(tokenizer.prompt_ids(p.prompt, pr.template, pr.system)) + e.k * e.max_new_tokens,
                           0.0, 1, False)  # fmt: skip
        if spent + worst > budget.left:
            break
        n, spent = n + 1, spent + worst
    return n


def grpo_prompt_stream(data: DataSection, seed: int) -> tuple[Any, PromptStream]:
    """(task, prompt stream) of GRPO's [data] and `train.seed`, as `r1kit.rl.grpo.GRPOTrainer` builds them
    on one rank: the same pool of `data.train_problems` train problems, read in the same order."""
    task = get_task(data.task, **task_kwargs(data.task_args, data.task))
    return task, PromptStream(task.problems(split="train", n=data.train_problems, seed=seed), seed=seed)


def run(config: Config, console: Any = None) -> ExpertIterationResult:
    """Expert iteration as configured (see the module docstring); returns an `ExpertIterationResult`."""
    console = console or Console()
    set_threads(config.train.threads)
    e, d, t = config.ei, config.data, config.train
    run_dir = Path(config.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    policy_dir = resolve_model_dir(config.model.path)
    tokenizer_dir = find_tokenizer_dir(policy_dir, config.model.tokenizer)
    task, stream = grpo_prompt_stream(d, t.seed)
    held_out = task.problems(split=config.eval.split, n=config.eval.problems, seed=config.eval.seed)
    budget = _Budget(e.budget_flops)
    costs: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("")
    stop_reason, first_eval, last_eval = "max_rounds", {}, {}
    round_, exhausted = 0, False
    loaded: Path | None = None
    evaluated: Path | None = None
    t0 = time.perf_counter()
    while True:
        if loaded != policy_dir:  # a new policy (or the first); a round that kept nothing leaves it as it was
            model, tokenizer, _ = load_model(policy_dir, str(tokenizer_dir), t.device, "fp32")
            loaded = policy_dir
        device = next(model.parameters()).device
        row: dict[str, Any] = {"step": round_, "flops": budget.used}
        n_prompts = _prompts_within(stream, model, tokenizer, config, budget) if not exhausted else 0
        stop = "max_rounds" if e.rounds and round_ >= e.rounds else ("budget" if not n_prompts else None)
        if config.eval.every and (round_ % config.eval.every == 0 or stop):
            if evaluated != policy_dir:  # the same weights score the same: no second evaluation
                last_eval, evaluated = _evaluate(model, tokenizer, task, held_out, config), policy_dir
            first_eval = first_eval or dict(last_eval)
            row.update(last_eval)
        if stop:
            stop_reason = stop
            _log(metrics_path, history, row)
            break
        problems = stream.take(n_prompts)
        result, sampled, sample_flops, sample_cost = _sample_round(
            model, tokenizer, task, problems, config, round_, device, console
        )
        costs.append(sample_cost)
        budget.used += sample_flops
        total = result.stats["total"]
        seed = stable_seed(t.seed, "ei-sft", round_)
        wanted, planned = _plan_sft(model, tokenizer, result.rows, config, seed) if result.rows else (0, [])
        steps = steps_within(planned, budget.left)
        exhausted = steps < wanted  # the next SFT step would cross the budget: this is the last round
        round_dir = run_dir / f"round_{round_:03d}"
        traces = distill.write_chat_jsonl(round_dir / "traces.jsonl", result.rows)
        info: dict[str, Any] = {
            "round": round_,
            "prompts": [p.id for p in problems],
            "traces": str(traces),
            "sampled_tokens": sampled,
            "sample_flops": sample_flops,
            "kept": total["kept"],
            "acceptance_rate": total["acceptance_rate"],
            "sft_steps": steps,
            "planned_sft_flops": sum(planned[:steps]),
            "sft_flops": 0.0,
        }
        if steps:
            res = sft.run(
                sft.Config(
                    model=ModelSection(init=str(policy_dir)),
                    tokenizer=TokenizerSection(path=str(tokenizer_dir)),
                    data=sft.SFTData(files=[str(traces)], max_len=e.max_len),
                    prompt=_sft_prompt(config.prompt),
                    val=ValSection(every=0),
                    train=replace(t, steps=steps, seed=seed, warmup_steps=min(t.warmup_steps, steps - 1)),
                    run=replace(config.run, dir=str(round_dir / "sft"), resume=False),
                ),
                console=console,
            )
            costs.append(res.cost)
            info["sft_flops"] = float(res.cost.get("flops") or 0.0)
            budget.used += info["sft_flops"]
            policy_dir = Path(res.model_dir or round_dir / "sft" / "model")
            info["sft_dir"] = str(round_dir / "sft")
        row.update(
            kept=total["kept"],
            acceptance_rate=total["acceptance_rate"],
            solved_rate=total["solved_rate"],
            sft_steps=steps,
            flops_after=budget.used,
        )
        _log(metrics_path, history, row)
        rounds.append(info)
        if config.run.progress:
            of = f" of {e.budget_flops / 1e12:.3f}" if e.budget_flops else ""
            console.print(
                f"[bold]expert iteration[/] round {round_}: {total['kept']} traces kept "
                f"({100 * total['acceptance_rate']:.1f}% of samples correct), {steps} SFT steps, "
                f"{budget.used / 1e12:.3f}{of} TFLOPs",
                highlight=False,
            )
        round_ += 1
    cost = summarize_costs(costs) if costs else {"flops": 0.0, "tokens": 0, "wall_s": 0.0}
    cost["wall_s_total"] = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "rounds": len(rounds),
        "stop_reason": stop_reason,
        "flops": cost["flops"],
        "budget_flops": e.budget_flops,
        "steps": sum(r["sft_steps"] for r in rounds),
        "model_dir": str(policy_dir),
    }
    metrics.update({f"initial_{k}": v for k, v in first_eval.items()})
    metrics.update({f"final_{k}": v for k, v in last_eval.items()})
    (run_dir / "summary.json").write_text(
        json.dumps(
            {"metrics": metrics, "cost": cost, "rounds": rounds, "config": asdict(config)},
            indent=1,
            default=str,
        )
    )
    keys = [k for k in ("eval/greedy_acc", "eval/pass@1", "eval/length_mean", "acceptance_rate") if
            any(k in h for h in history)]  # fmt: skip
    if config.run.plot and keys and len(history) > 1:
        plot_metrics(metrics_path, run_dir / "curve.png", keys=keys, title="expert iteration", smoothing=0.0)
    return ExpertIterationResult(
        run_dir=run_dir,
        metrics=metrics,
        cost=cost,
        model_dir=Path(policy_dir),
        history=history,
        rounds=rounds,
    )


def _log(path: Path, history: list[dict[str, Any]], row: dict[str, Any]) -> None:
    history.append(row)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=float) + "\n")


__all__ = [
    "Config",
    "EISection",
    "ExpertIterationResult",
    "ModelDirSection",
    "grpo_prompt_stream",
    "run",
    "sft_step_flops",
    "sft_steps_within",
    "steps_within",
]
