"""`r1kit sample` and `r1kit distill`: rejection sampling and distillation (DeepSeek-R1, arXiv 2501.12948, R1
stages 3 and distill).

Rejection sampling (`run_sample`): a teacher samples k completions per prompt; only verified-correct
ones are kept (`task.score == 1`, and by default a well-formed `reasoning</think>answer` that ended
with EOS), optionally deduplicated and thinned to the shortest or the first m per prompt. Each kept
trace becomes a chat conversation ``{"messages": [user, assistant]}`` whose assistant content is the
full completion in R1 layout, ``<think>\\n{reasoning}\\n</think>\\n{answer}``: r1kit's chat template
renders it back to exactly the tokens the teacher generated after the generation prompt, so SFT on
the file reproduces the `<think>` format. Statistics (acceptance rate per task, mean lengths) go to
``<out>.stats.json`` and the console.

Distillation (`run`), three methods:

- "sft" (R1-Distill): supervised fine-tuning of a student, any architecture (e.g. a dense tiny Llama
  for a DeepSeek-V3 teacher), on the verified traces, through `r1kit.train.sft`.
- "logits": token-level knowledge distillation on the traces' completion tokens,
  ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE``, which needs the teacher and
  the student to share a vocabulary (it fails with a clear error otherwise).
- "on_policy" (GKD with lambda = 1, arXiv 2306.13649; Qwen3, arXiv 2505.09388): no trace file. Each step
  the *student* samples completions of the task's train prompts with r1kit's engine, the teacher scores
  every sampled token (one forward over prompt + completion, no sampling), and the loss is the per-token
  reverse KL(pi_student || pi_teacher) over the completion positions (`on_policy_loss`), optionally
  plus a REINFORCE term on the task's verifier reward. Same vocabulary required, as for "logits".

Both commands read the same config file, so a pipeline is

    r1kit sample configs/distill_tiny.toml --teacher.path runs/sft_tiny
    r1kit distill configs/distill_tiny.toml --teacher.path runs/sft_tiny
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from r1kit.config import ConfigError, check_positive, check_range
from r1kit.evaluate import (
    EvalParams,
    as_engine,
    evaluate_engine,
    is_correct,
    render_prompts,
)
from r1kit.loaders import find_tokenizer_dir, load_model, resolve_model_dir, set_threads
from r1kit.model.counting import flops_per_token
from r1kit.rewards import format_reward
from r1kit.tasks import get_task, task_kwargs
from r1kit.tokenizer import Tokenizer, format_assistant, split_reasoning
from r1kit.train import sft
from r1kit.train.cost import CostMeter
from r1kit.train.data import ChatExamples, read_conversations
from r1kit.train.log import plot_metrics
from r1kit.train.loop import (
    IGNORE_INDEX,
    LMStage,
    RunConfig,
    Stage,
    StepWork,
    TrainConfig,
    Trainer,
    all_reduce_sum,
    autocast_for,
    cleanup_distributed,
    prepare_run_dir,
    run_result,
)
from r1kit.train.pretrain import build_model, fit_stage, start_stage
from r1kit.train.result import RunResult
from r1kit.train.sections import (
    SFT_TEMPLATES,
    EngineSection,
    LoRASection,
    ModelDirSection,
    ModelSection,
    PromptSection,
    TokenizerSection,
    ValSection,
    check_task_args,
)

# ----------------------------------------------------------------------------------------------
# configuration


TeacherSection = ModelDirSection  # [teacher] the model that writes the traces (and the logits)


@dataclass
class SampleSection:
    """[sample] rejection sampling (`r1kit sample`).

    tasks (list[str]): task names for `r1kit.tasks.get_task`; each contributes `prompts` prompts.
    task_args (dict): keyword arguments per task name, e.g. {addition = {min_digits = 1, max_digits = 4}}.
    split (str): split the prompts come from ("train": evaluation splits stay unseen).
    prompts (int): prompts per task.
    seed (int): seed of the prompt draw and of the sampling streams.
    k (int): completions sampled per prompt.
    temperature (float): teacher sampling temperature.
    top_p (float): nucleus mass.
    max_new_tokens (int): completion cap (truncated completions are never kept).
    verify (bool): keep only verified-correct completions (task.score == 1); false keeps any sample
        (the "no rejection" ablation).
    require_format (bool): keep only completions that ended with EOS and read "reasoning</think>answer"
        with one `</think>` and a non-empty answer.
    keep (str): "all" (every kept completion, in sampling order), "shortest" (fewest tokens first) or
        "random" (a seeded shuffle), then cut to max_per_prompt.
    max_per_prompt (int): most traces per prompt; 0 = no limit ("shortest" then keeps 1).
    dedupe (bool): drop completions whose text repeats one already kept for the same prompt.
    out (str): the chat JSONL written; statistics go to the same path with .stats.json.
    batch_prompts (int): prompts per generate call (each brings k rows); 0 = all in one call.
    """

    tasks: list[str] = field(default_factory=lambda: ["addition"])
    task_args: dict[str, Any] = field(default_factory=dict)
    split: str = "train"
    prompts: int = 1000
    seed: int = 0
    k: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 256
    verify: bool = True
    require_format: bool = True
    keep: Literal["all", "shortest", "random"] = "all"
    max_per_prompt: int = 0
    dedupe: bool = True
    out: str = "runs/distill/traces.jsonl"
    batch_prompts: int = 256

    def __post_init__(self) -> None:
        check_task_args(self.task_args, "sample.task_args", self.tasks)


@dataclass
class DistillSection:
    """[distill] how the student learns from the teacher (`r1kit distill`).

    method (str): "sft" (fine-tune on the traces, R1-Distill), "logits" (KL to the teacher's token
        distributions on the traces; needs a shared vocabulary) or "on_policy" (the student samples, the
        teacher scores its tokens, reverse KL; GKD lambda = 1, arXiv 2306.13649; shared vocabulary). With
        "on_policy" no trace file is read: prompts come from [sample] (its one task, task_args, split,
        prompts = the pool size), shown as [prompt] says, and train.batch_size is the completions per step.
    files (list[str]): chat JSONL files to learn from; empty = sample.out.
    tokenizer (str): the student's tokenizer directory; "" = the teacher's (required for "logits").
    max_len (int): tokens kept per conversation.
    temperature (float): T of the logit distillation (the KL is taken at T and scaled by T^2).
    alpha (float): weight of the KL term; 1 - alpha goes to cross-entropy on the trace tokens.
    kl_estimator (str): on_policy: "full" (the exact reverse KL over the whole vocabulary at every
        sampled position; its gradient is exact) or "sampled" (the one-sample estimate
        log pi_s(y_t) - log pi_t(y_t) of the sampled token, used as a per-token REINFORCE cost, as in the
        2025 on-policy distillation reports; unbiased at sample_temperature 1). "kl" is always logged exactly.
    sample_temperature (float): on_policy: temperature of the student's sampling (0 = greedy); the KL is
        taken at temperature 1.
    max_new_tokens (int): on_policy: completion cap of the student's samples.
    samples_per_prompt (int): on_policy: completions per prompt (they share a prefill; the reward term's
        baseline is their mean, else the batch mean when 1); must divide train.batch_size.
    reward_weight (float): on_policy: weight of the REINFORCE term -A * log pi_s(y) on the task's verifier
        reward (A = reward - baseline) added to the KL; 0 = pure distillation.
    """

    method: Literal["sft", "logits", "on_policy"] = "sft"
    files: list[str] = field(default_factory=list)
    tokenizer: str = ""
    max_len: int = 256
    temperature: float = 1.0
    alpha: float = 1.0
    kl_estimator: Literal["full", "sampled"] = "full"
    sample_temperature: float = 1.0
    max_new_tokens: int = 64
    samples_per_prompt: int = 1
    reward_weight: float = 0.0


@dataclass
class Config:
    """`r1kit sample` (rejection sampling) and `r1kit distill` (student training) share this config."""

    teacher: TeacherSection = field(default_factory=TeacherSection)
    sample: SampleSection = field(default_factory=SampleSection)
    prompt: PromptSection = field(default_factory=PromptSection)
    student: ModelSection = field(default_factory=ModelSection)
    distill: DistillSection = field(default_factory=DistillSection)
    val: ValSection = field(default_factory=ValSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-3, warmup_steps=20))
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/distill"))
    lora: LoRASection = field(default_factory=LoRASection)  # adapters on the student (student.init)
    engine: EngineSection = field(default_factory=EngineSection)  # the teacher's and on-policy sampling

    def __post_init__(self) -> None:
        self.lora.check_stage(init=self.student.init, where="student.init", strategy=self.train.strategy)
        s = self.sample
        check_positive(s.k, "sample.k")
        check_positive(s.prompts, "sample.prompts")
        check_positive(s.max_new_tokens, "sample.max_new_tokens")
        check_positive(s.temperature, "sample.temperature", allow_zero=True)
        check_range(s.top_p, "sample.top_p", 1e-9, 1.0)
        check_positive(s.max_per_prompt, "sample.max_per_prompt", allow_zero=True)
        check_positive(s.batch_prompts, "sample.batch_prompts", allow_zero=True)
        check_positive(self.distill.temperature, "distill.temperature")
        check_range(self.distill.alpha, "distill.alpha", 0.0, 1.0)
        check_positive(self.distill.max_len, "distill.max_len")
        check_positive(self.distill.sample_temperature, "distill.sample_temperature", allow_zero=True)
        check_positive(self.distill.max_new_tokens, "distill.max_new_tokens")
        check_positive(self.distill.samples_per_prompt, "distill.samples_per_prompt")
        check_range(self.distill.reward_weight, "distill.reward_weight", 0.0, None)
        if not s.tasks:
            raise ConfigError("sample.tasks must name at least one task")


# ----------------------------------------------------------------------------------------------
# rejection sampling


def trace_messages(problem: Any, completion: str, system: str = "") -> list[dict[str, str]]:
    """The SFT conversation of one trace: [system], the user prompt, and the completion as assistant
    content in R1 layout (``<think>\\n{reasoning}\\n</think>\\n{answer}``), which r1kit's chat template
    renders to exactly the completion tokens after the generation prompt."""
    reasoning, answer = split_reasoning(completion)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": problem.prompt})
    messages.append({"role": "assistant", "content": format_assistant(reasoning, answer)})
    return messages


def well_formed(completion: Any) -> bool:
    """A completion that ended on its own (EOS) and reads "reasoning</think>answer" with one
    `</think>` and a non-empty answer (`r1kit.rewards.format_reward`)."""
    return completion.finish_reason == "stop" and format_reward(completion.text) == 1.0


def select_traces(
    completions: Sequence[Any],
    scores: Sequence[float],
    *,
    verify: bool = True,
    require_format: bool = True,
    keep: str = "all",
    max_per_prompt: int = 0,
    dedupe: bool = True,
    rng: random.Random | None = None,
) -> list[int]:
    """Indices of the completions of one prompt to keep as traces.

    Args:
        completions: the prompt's samples (text, token_ids, finish_reason).
        scores: their task scores; with `verify` only full marks (1.0) pass.
        require_format: also require `well_formed`.
        keep: "all" (sampling order), "shortest" (fewest tokens first, ties in sampling order) or
            "random" (shuffled with `rng`).
        max_per_prompt: cut to this many (0 = no limit, but 1 for "shortest").
        dedupe: skip a completion whose text equals an already kept one.

    Returns:
        The kept indices, in the order of preference.
    """
    if keep not in ("all", "shortest", "random"):
        raise ValueError(f"keep must be 'all', 'shortest' or 'random', got {keep!r}")
    ok = [
        i
        for i, (c, s) in enumerate(zip(completions, scores))
        if (not verify or is_correct(s)) and (not require_format or well_formed(c))
    ]
    if keep == "shortest":
        ok.sort(key=lambda i: len(completions[i].token_ids))
    elif keep == "random":
        (rng or random.Random(0)).shuffle(ok)
    limit = max_per_prompt or (1 if keep == "shortest" else len(ok))
    kept: list[int] = []
    seen: set[str] = set()
    for i in ok:
        text = completions[i].text.strip()
        if dedupe and text in seen:
            continue
        seen.add(text)
        kept.append(i)
        if len(kept) == limit:
            break
    return kept


@dataclass
class SampleResult:
    """What rejection sampling produced.

    rows: the dataset, one dict per kept trace: {"messages", "task", "id", "reference", "tokens"}.
    stats: per task and "total": prompts, samples, correct, acceptance_rate (correct / samples),
        solved_rate (prompts with a correct sample), well_formed_rate, kept, kept_per_prompt,
        mean_tokens / mean_think_tokens (of the kept traces), duplicates, seconds.
    """

    rows: list[dict[str, Any]]
    stats: dict[str, dict[str, float]]


@dataclass
class SampleRunResult(RunResult):
    """What `run_sample` returns: a `RunResult` (metrics = the "total" statistics, "{task}/{stat}" and
    "out"; cost of the generation) plus

    path: the chat JSONL written (`sample.out`); stats_file: its statistics (`stats_path`).
    stats: per task and "total" (see `SampleResult`).
    """

    path: Path = field(default_factory=Path)
    stats_file: Path = field(default_factory=Path)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class DistillRunResult(RunResult):
    """What `run` (`r1kit distill`) returns: the training `RunResult` (metrics: loss, steps,
    val_accuracy when validating, model_dir; cost of the training) plus

    model_dir: the student's HF-layout directory (weights + tokenizer); method: "sft", "logits" or
    "on_policy".
    """

    model_dir: Path = field(default_factory=Path)
    method: str = "sft"


def rejection_sample(
    model: Any,
    tokenizer: Any,
    tasks: dict[str, Any],
    problems: dict[str, Sequence[Any]],
    *,
    k: int = 8,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    verify: bool = True,
    require_format: bool = True,
    keep: str = "all",
    max_per_prompt: int = 0,
    dedupe: bool = True,
    seed: int = 0,
    template: str = "chat",
    system: str = "",
    engine: EngineSection | None = None,
    batch_prompts: int = 256,
    progress: bool = False,
    console: Any = None,
) -> SampleResult:
    """Sample k completions per prompt from a teacher and keep the verified ones (see `select_traces`).

    Args:
        model: a `Transformer`, or any object with `Engine.generate`'s signature.
        tokenizer: renders prompts with the chat template and counts tokens.
        tasks: label -> task (scores completions); problems: label -> that task's prompts.
        engine: the [engine] settings of the Engine built over `model` (default ones when None).
        Others: the sampling and selection options of `SampleSection`.

    Returns:
        `SampleResult` (rows in task order, then prompt order; statistics per task and in total).
    """
    engine = as_engine(model, tokenizer, engine)
    # each prompt's k samples are seeded by problem_seed(seed, id): the same traces whatever the batch
    params = EvalParams(
        k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, greedy=False, seed=seed
    )
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    stats: dict[str, dict[str, float]] = {}
    for label, task in tasks.items():
        probs = list(problems[label])
        if not probs:
            continue
        t0 = time.perf_counter()
        (result,) = evaluate_engine(
            engine, tokenizer, task, probs, params, template=template, system=system,
            batch_problems=batch_prompts, label=label, progress=progress,
            description=f"sample {label}", console=console,
        )  # fmt: skip
        counts = _select_traces_of(
            label, probs, result, rows, rng, verify=verify, require_format=require_format,
            keep=keep, max_per_prompt=max_per_prompt, dedupe=dedupe,
            system=system if template in ("chat", "r1") else "",  # r1-zero's replaces its instruction
        )  # fmt: skip
        counts["seconds"] = time.perf_counter() - t0
        stats[label] = _sample_stats(counts)
    totals = {key: sum(s["_raw"][key] for s in stats.values()) for key in next(iter(stats.values()))["_raw"]}
    stats["total"] = _sample_stats(totals)
    for s in stats.values():
        del s["_raw"]
    return SampleResult(rows, stats)


def _select_traces_of(
    label: str,
    probs: Sequence[Any],
    result: Any,
    rows: list[dict[str, Any]],
    rng: random.Random,
    *,
    verify: bool,
    require_format: bool,
    keep: str,
    max_per_prompt: int,
    dedupe: bool,
    system: str,
) -> dict[str, float]:
    """Select the traces of one task's evaluated prompts (`select_traces` on the `EvalResult` of
    `evaluate_engine`), append their rows to `rows`; returns the raw counts for `_sample_stats`."""
    names = "prompts samples correct solved well_formed kept tokens think dups generated"
    counts = dict.fromkeys(names.split(), 0.0)
    for problem, group, record in zip(probs, result.completions, result.records):
        scores, correct = record["scores"], record["correct"]
        kept = select_traces(
            group,
            scores,
            verify=verify,
            require_format=require_format,
            keep=keep,
            max_per_prompt=max_per_prompt,
            dedupe=dedupe,
            rng=rng,
        )
        undeduped = select_traces(
            group, scores, verify=verify, require_format=require_format, keep="all", dedupe=False
        )
        counts["prompts"] += 1
        counts["samples"] += len(group)
        counts["correct"] += sum(correct)
        counts["solved"] += any(correct)
        counts["well_formed"] += sum(well_formed(c) for c in group)
        counts["generated"] += sum(len(c.token_ids) for c in group)
        counts["dups"] += len(undeduped) - len({group[j].text.strip() for j in undeduped})
        for j in kept:
            c = group[j]
            counts["kept"] += 1
            counts["tokens"] += len(c.token_ids)
            counts["think"] += record["think_tokens"][j]
            rows.append(
                {
                    "messages": trace_messages(problem, c.text, system),
                    "task": label,
                    "id": problem.id,
                    "reference": problem.answer,
                    "tokens": len(c.token_ids),
                }
            )
    return counts


def _sample_stats(c: dict[str, float]) -> dict[str, Any]:
    """Rates and means from rejection-sampling counts (the raw counts stay under "_raw")."""
    return {
        "prompts": int(c["prompts"]),
        "samples": int(c["samples"]),
        "correct": int(c["correct"]),
        "acceptance_rate": c["correct"] / max(c["samples"], 1),
        "solved_rate": c["solved"] / max(c["prompts"], 1),
        "well_formed_rate": c["well_formed"] / max(c["samples"], 1),
        "kept": int(c["kept"]),
        "kept_per_prompt": c["kept"] / max(c["prompts"], 1),
        "mean_tokens": c["tokens"] / c["kept"] if c["kept"] else 0.0,
        "mean_think_tokens": c["think"] / c["kept"] if c["kept"] else 0.0,
        "duplicates": int(c["dups"]),
        "generated_tokens": int(c["generated"]),
        "seconds": c["seconds"],
        "_raw": dict(c),
    }


def write_chat_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows ({"messages": [...], ...}) as JSONL, the layout `r1kit sft` (data.files) reads."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def stats_path(out: str | Path) -> Path:
    """Where the statistics of a trace file go: traces.jsonl -> traces.stats.json."""
    out = Path(out)
    return out.with_name(out.stem + ".stats.json")


def format_sample_table(stats: dict[str, dict[str, Any]]) -> Any:
    """A rich Table of rejection-sampling statistics, one row per task and a total."""
    table = Table(title="r1kit sample: rejection sampling")
    for name in ("task", "prompts", "samples", "accepted", "solved", "kept", "kept/prompt", "mean tok"):
        table.add_column(name, justify="left" if name == "task" else "right")
    for label, s in stats.items():
        table.add_row(
            label,
            str(s["prompts"]),
            str(s["samples"]),
            f"{100 * s['acceptance_rate']:.1f}%",
            f"{100 * s['solved_rate']:.1f}%",
            str(s["kept"]),
            f"{s['kept_per_prompt']:.2f}",
            f"{s['mean_tokens']:.1f}",
        )
    return table


def generation_flops(
    cfg: Any, prefilled: float, row_prompt_tokens: float, generated: float, rows: float
) -> float:
    """FLOPs of sampling `rows` completions: one forward (a third of `flops_per_token`'s training
    FLOPs) over the `prefilled` prompt tokens (each group's prompt once: its samples share the prefill)
    and the `generated` tokens, at the mean sequence length (`row_prompt_tokens` = the prompt tokens
    summed over the rows, + generated) / rows. Rejection sampling and on-policy distillation both
    count their sampling this way."""
    seq = max(1, int((row_prompt_tokens + generated) / max(rows, 1.0)))
    return flops_per_token(cfg, seq, include_mtp=False) * (prefilled + generated) / 3


def _teacher(config: Config):
    """(teacher model, tokenizer, model dir) on train.device."""
    if not config.teacher.path:
        raise ConfigError("teacher.path is empty: give the teacher's model or run directory")
    return load_model(config.teacher.path, config.teacher.tokenizer, config.train.device, "fp32")


def run_sample(config: Config, console: Any = None) -> SampleRunResult:
    """`r1kit sample`: rejection-sample the teacher on `sample.tasks`; writes the chat JSONL `sample.out`
    and its statistics (`stats_path`). Returns a `SampleRunResult` (path, stats; metrics: the "total"
    statistics, "{task}/{stat}" and "out"; cost of the generation)."""
    console = console or Console()
    set_threads(config.train.threads)
    s = config.sample
    model, tokenizer, _ = _teacher(config)
    tasks = {name: get_task(name, **task_kwargs(s.task_args, name)) for name in s.tasks}
    problems = {name: t.problems(split=s.split, n=s.prompts, seed=s.seed) for name, t in tasks.items()}
    meter = CostMeter(next(model.parameters()).device).start()
    with torch.no_grad():
        result = rejection_sample(
            model,
            tokenizer,
            tasks,
            problems,
            k=s.k,
            temperature=s.temperature,
            top_p=s.top_p,
            max_new_tokens=s.max_new_tokens,
            verify=s.verify,
            require_format=s.require_format,
            keep=s.keep,
            max_per_prompt=s.max_per_prompt,
            dedupe=s.dedupe,
            seed=s.seed,
            template=config.prompt.template,
            system=config.prompt.system,
            engine=config.engine,
            batch_prompts=s.batch_prompts,
            progress=config.run.progress,
            console=console,
        )
    generated = result.stats["total"]["generated_tokens"]
    prompt_tokens = sum(
        len(ids)
        for name in tasks
        for ids in render_prompts(tokenizer, problems[name], config.prompt.template, config.prompt.system)
    )
    samples = result.stats["total"]["samples"]
    flops = generation_flops(model.config, prompt_tokens, prompt_tokens * s.k, generated, samples)
    meter.add(tokens=generated, flops=flops)
    meter.stop()
    out = write_chat_jsonl(s.out, result.rows)
    payload = {"out": str(out), "stats": result.stats}
    stats_path(out).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if config.run.progress:
        console.print(format_sample_table(result.stats))
        console.print(f"wrote {len(result.rows)} traces to {out} (stats: {stats_path(out)})", highlight=False)
    metrics: dict[str, Any] = dict(result.stats["total"])
    for label, st in result.stats.items():
        if label != "total":
            metrics.update({f"{label}/{key}": v for key, v in st.items()})
    metrics["out"] = str(out)
    return SampleRunResult(
        run_dir=out.parent,
        metrics=metrics,
        cost=meter.summary(),
        path=out,
        stats_file=stats_path(out),
        stats=result.stats,
    )


# ----------------------------------------------------------------------------------------------
# distillation


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    alpha: float = 1.0,
    token_norm: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level knowledge distillation on the positions that carry a target.

    loss = [alpha * T^2 * sum_t KL(softmax(t_t / T) || softmax(s_t / T)) + (1 - alpha) * sum_t CE(s_t, y_t)]
    / token_norm, over positions t with ``targets != IGNORE_INDEX`` (the trace's completion tokens).
    The T^2 factor keeps the gradient scale independent of T (Hinton et al. 2015).

    Args:
        student_logits: (B, T, V); teacher_logits: (B, T, V), same vocabulary (no gradient needed).
        targets: (B, T) next-token ids with IGNORE_INDEX where no loss is taken.
        temperature: T > 0; alpha: weight of the KL term in [0, 1].
        token_norm: divisor (the global count of target tokens); default this batch's count.

    Returns:
        (loss, {"kl": mean KL at T (unscaled), "ce": mean cross-entropy}) with the metrics as
        contributions to their means over `token_norm` tokens.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ: logit distillation needs the same vocabulary (use distill.method = 'sft')"
        )
    mask_BT = targets != IGNORE_INDEX
    norm = float(token_norm) if token_norm is not None else max(int(mask_BT.sum()), 1)
    s_NV = student_logits[mask_BT].float()
    t_NV = teacher_logits[mask_BT].float().detach()
    log_p_s = F.log_softmax(s_NV / temperature, dim=-1)
    log_p_t = F.log_softmax(t_NV / temperature, dim=-1)
    kl_sum = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum")  # sum_t KL(p_t || p_s)
    ce_sum = F.cross_entropy(s_NV, targets[mask_BT], reduction="sum")
    loss = (alpha * temperature**2 * kl_sum + (1.0 - alpha) * ce_sum) / norm
    return loss, {"kl": (kl_sum / norm).detach(), "ce": (ce_sum / norm).detach()}


def check_same_vocabulary(teacher: Any, student: Any) -> None:
    """Raise ValueError unless the two models have the same vocabulary size (logit distillation
    compares distributions over the same ids)."""
    tv, sv = teacher.config.vocab_size, student.config.vocab_size
    if tv != sv:
        raise ValueError(
            f"logit distillation needs a shared vocabulary: the teacher has vocab_size {tv}, the student "
            f"{sv}. Build the student on the teacher's tokenizer (leave distill.tokenizer empty and "
            f"student.init empty or with that vocabulary), or use distill.method = 'sft' (trace distillation)."
        )


def _same_tokenizer(a: Any, b: Any) -> bool:
    return a.backend.get_vocab(with_added_tokens=True) == b.backend.get_vocab(with_added_tokens=True)


def student_prompt(prompt: PromptSection) -> PromptSection:
    """The [prompt] the student trains and validates with: the teacher's "chat" or "r1"; "chat" (and no
    system prompt) when the teacher was prompted with a plain-text template ("r1-zero", "raw")."""
    if prompt.template in SFT_TEMPLATES:
        return prompt
    return PromptSection(template="chat")


def _sft_config(config: Config, files: list[str], tokenizer_dir: str):
    """The `r1kit.train.sft` config of trace distillation."""
    task = config.sample.tasks[0]
    return sft.Config(
        model=config.student,
        tokenizer=TokenizerSection(path=tokenizer_dir),
        data=sft.SFTData(
            files=files,
            task=task,
            task_args={task: task_kwargs(config.sample.task_args, task)},
            max_len=config.distill.max_len,
        ),
        prompt=student_prompt(config.prompt),
        val=config.val,
        train=config.train,
        run=config.run,
        lora=config.lora,
    )


def run(config: Config, console: Any = None) -> DistillRunResult:
    """`r1kit distill`: train the student on the teacher's traces (`distill.method` "sft") or on its
    token distributions along those traces ("logits"). Returns a `DistillRunResult` (model_dir;
    metrics: loss, steps, val_accuracy when validating, model_dir; cost).

    "on_policy" reads no trace file: the student samples the [sample] task's prompts (`_run_on_policy`)."""
    if config.distill.method == "on_policy":
        if not config.teacher.path:
            raise ConfigError(
                "distill.method = 'on_policy' needs teacher.path (the teacher scores the samples)"
            )
        result = _run_on_policy(config, console)
        return DistillRunResult(
            run_dir=Path(result.run_dir),
            metrics=result.metrics,
            cost=result.cost,
            model_dir=Path(result.metrics["model_dir"]),
            method="on_policy",
        )
    files = list(config.distill.files) or [config.sample.out]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"no trace file {missing[0]}: run `r1kit sample` with the same config first, or set distill.files"
        )
    tokenizer_dir = config.distill.tokenizer
    if not tokenizer_dir and config.teacher.path:
        tokenizer_dir = str(
            find_tokenizer_dir(resolve_model_dir(config.teacher.path), config.teacher.tokenizer)
        )
    if config.distill.method == "sft":
        result = sft.run(_sft_config(config, files, tokenizer_dir), console=console)
    else:
        if not config.teacher.path:
            raise ConfigError("distill.method = 'logits' needs teacher.path (the teacher's logits)")
        result = _run_logits(config, files, console)
    model_dir = Path(result.metrics.get("model_dir") or Path(result.run_dir) / "model")
    return DistillRunResult(
        run_dir=Path(result.run_dir),
        metrics=result.metrics,
        cost=result.cost,
        model_dir=model_dir,
        method=config.distill.method,
    )


class LogitStage(LMStage):
    """Logit distillation as a :class:`r1kit.train.loop.Stage`: the student's batches are those of an
    :class:`LMStage` on the traces; the loss is :func:`distillation_loss` against the teacher's logits,
    computed in the loss (one no-grad teacher forward per micro-batch)."""

    def __init__(
        self,
        teacher: torch.nn.Module,
        section: DistillSection,
        stream: Any,
        student: torch.nn.Module,
        train: TrainConfig,
        *,
        name: str = "distill",
        **kwargs: Any,
    ):
        super().__init__(stream, student, train, name=name, **kwargs)
        self.teacher, self.temperature, self.alpha = teacher, section.temperature, section.alpha
        self.use_mtp = False  # the student's MTP head (if any) gets no loss here
        # student forward + backward, plus the teacher's forward (a third of its training FLOPs)
        teacher_matmul = flops_per_token(teacher.config, 0)
        self.flops_matmul += teacher_matmul / 3
        self.flops_attn += (flops_per_token(teacher.config, 1) - teacher_matmul) / 3

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch.get("attention_mask")
        with torch.no_grad():
            teacher_logits = self.teacher(batch["input_ids"], attention_mask=mask)
        student_logits = model(batch["input_ids"], attention_mask=mask)
        return distillation_loss(
            student_logits,
            teacher_logits,
            batch["targets"],
            temperature=self.temperature,
            alpha=self.alpha,
            token_norm=self._norms[0],
        )

    def plot(self, run_dir: Path) -> None:
        with contextlib.suppress(ValueError):
            plot_metrics(run_dir, run_dir / "loss.png", keys=["loss", "kl", "ce"], title="distill (logits)")


def _run_logits(config: Config, files: list[str], console: Any = None):
    """Logit distillation: a :class:`LogitStage` run by `r1kit.train.loop.Trainer` (resume, DDP/FSDP2,
    metrics, cost and validation as in every stage)."""
    train, d = config.train, config.distill
    dist, device = start_stage(train)
    try:
        resume_from = prepare_run_dir(config.run)
        teacher, tokenizer, _ = load_model(config.teacher.path, config.teacher.tokenizer, device, "fp32")
        teacher.requires_grad_(False)
        if d.tokenizer and not _same_tokenizer(Tokenizer.from_pretrained(d.tokenizer), tokenizer):
            raise ValueError(
                f"logit distillation needs the teacher's tokenizer; distill.tokenizer {d.tokenizer} has a "
                "different vocabulary (use distill.method = 'sft')"
            )
        student = build_model(config.student, tokenizer, device, train.seed)
        check_same_vocabulary(teacher, student)
        sft_config = _sft_config(config, files, "")
        data, prompt = sft_config.data, sft_config.prompt
        chats = sft.with_system_prompt(read_conversations(files), prompt)
        examples = ChatExamples(chats, tokenizer, d.max_len, tokenizer.generation_suffix(prompt.template))
        return fit_stage(
            config,
            examples,
            tokenizer,
            dist=dist,
            device=device,
            resume_from=resume_from,
            stage="distill",
            stage_prompt=prompt.template,
            system=prompt.system,
            console=console,
            model=student,
            data=data,
            make_stage=functools.partial(LogitStage, teacher, d),
        )
    finally:
        cleanup_distributed(dist)


# ----------------------------------------------------------------------------------------------
# on-policy distillation


def on_policy_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    estimator: str = "full",
    advantages: torch.Tensor | None = None,
    reward_weight: float = 0.0,
    token_norm: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token reverse KL(pi_student || pi_teacher) at positions the student sampled (GKD with
    lambda = 1, arXiv 2306.13649), plus an optional REINFORCE term on a task reward.

    Each of the N rows is one completion position: the student's and the teacher's logits there and the
    token the student sampled. With p = softmax(student), q = softmax(teacher), d = log p - log q:

    - "full": cost_n = sum_v p_v d_v, the exact KL over the whole vocabulary. It is computed as
      sum_v p_v * stopgrad(d_v): the value is the same and so is the gradient, because
      sum_v p_v grad(log p_v) = grad(sum_v p_v) = 0; this form is also exactly 0 (value and gradient)
      when the student equals the teacher.
    - "sampled": cost_n has the value d_y of the sampled token y and the gradient d_y grad(log p_y)
      (the score-function estimate of the KL's gradient, as the 2025 on-policy distillation reports use
      it); unbiased when y was drawn from p (sampling temperature 1).

    Neither backpropagates through the choice of earlier tokens (GKD treats the samples as data).
    The reward term adds reward_weight * (-A_n log p_y) with A the completion's advantage.

    Args:
        student_logits: (N, V); teacher_logits: (N, V), same vocabulary (no gradient flows into it).
        tokens: (N,) the sampled token ids.
        estimator: "full" or "sampled".
        advantages: (N,) the advantage of each position's completion (needed when reward_weight > 0).
        reward_weight: weight of the REINFORCE term; 0 = pure distillation.
        token_norm: divisor (the global count of completion tokens); default N.

    Returns:
        (loss, {"kl": exact reverse KL, "kl_sampled": the one-sample estimate, "pg": the REINFORCE term})
        with the metrics as contributions to their means over `token_norm` tokens.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ: on-policy distillation needs the same vocabulary (use distill.method = 'sft')"
        )
    if estimator not in ("full", "sampled"):
        raise ValueError(f"estimator must be 'full' or 'sampled', got {estimator!r}")
    norm = float(token_norm) if token_norm is not None else max(int(tokens.numel()), 1)
    log_p_NV = F.log_softmax(student_logits.float(), dim=-1)
    log_q_NV = F.log_softmax(teacher_logits.float().detach(), dim=-1)
    d_NV = (log_p_NV - log_q_NV).detach()
    kl_N = (log_p_NV.exp() * d_NV).sum(dim=-1)
    logp_N = log_p_NV.gather(1, tokens[:, None]).squeeze(1)
    d_N = d_NV.gather(1, tokens[:, None]).squeeze(1)
    if estimator == "full":
        cost_N = kl_N
    else:
        cost_N = d_N * (logp_N - logp_N.detach()) + d_N
    loss_sum = cost_N.sum()
    pg_sum = torch.zeros((), device=loss_sum.device)
    if reward_weight > 0:
        if advantages is None:
            raise ValueError("reward_weight > 0 needs the advantages of the sampled positions")
        pg_sum = -(advantages.float().detach() * logp_N).sum()
        loss_sum = loss_sum + reward_weight * pg_sum
    metrics = {"kl": kl_N.detach().sum() / norm, "kl_sampled": d_N.sum() / norm, "pg": pg_sum.detach() / norm}
    return loss_sum / norm, metrics


def sampled_positions(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The completion positions of an `r1kit.rl.rollout.Batch` that carry loss: (row_N, logit
    position_N in input_ids_BL, sampled token_N), in row-major order."""
    row_N, t_N = (batch.mask_BT > 0).nonzero(as_tuple=True)
    return row_N, batch.index_BT[row_N, t_N], batch.targets_BT[row_N, t_N]


class OnPolicyStage(Stage):
    """On-policy distillation as a :class:`r1kit.train.loop.Stage`: the batch of a step is the student's
    own samples of the task's prompts (`batches`, with r1kit's engine), the loss is
    :func:`on_policy_loss` against the teacher's logits on those tokens (one no-grad teacher forward
    per micro-batch, in `loss`). Prompt stream and sampling seeds are checkpointed, so a resumed run
    follows the uninterrupted one.

    FLOPs per step: the student's sampling (a forward over each group's prompt once and every completion
    token), the student's update (forward + backward over prompt + completion) and the teacher's scoring
    (a forward over the same tokens).
    """

    name = "distill"

    def __init__(
        self,
        config: Config,
        student: torch.nn.Module,
        teacher: torch.nn.Module,
        tokenizer: Any,
        task: Any,
        problems: Sequence[Any],
        *,
        dist: Any,
        device: torch.device,
        validate: Any = None,
        should_stop: Any = None,
    ):
        from r1kit.rl.rollout import PromptStream

        d, t = config.distill, config.train
        self.config, self.section, self.student, self.teacher = config, d, student, teacher
        self.tokenizer, self.task, self.dist, self.device = tokenizer, task, dist, device
        self.validate, self._should_stop = validate, should_stop
        group = d.samples_per_prompt
        if t.batch_size % (group * dist.world_size):
            raise ConfigError(
                f"train.batch_size ({t.batch_size}) must be a multiple of distill.samples_per_prompt ({group}) "
                f"x {dist.world_size} ranks: it counts the completions of a step"
            )
        self.local_prompts = t.batch_size // (group * dist.world_size)
        self.prompts = PromptStream(problems, seed=t.seed, rank=dist.rank, world_size=dist.world_size)
        self.engine = config.engine.build(student, tokenizer)
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self.prompt_cache: dict[str, list[int]] = {}
        # the loop's autocast (it depends on the model's width under precision "auto")
        self.autocast = autocast_for(device, t.precision, student.config.hidden_size)
        self._norm = 1.0

    def _sampling_params(self, step: int) -> Any:
        from r1kit.engine import SamplingParams
        from r1kit.seeding import stable_seed

        d = self.section
        return SamplingParams(
            n=d.samples_per_prompt,
            temperature=d.sample_temperature,
            max_new_tokens=d.max_new_tokens,
            seed=stable_seed(self.config.train.seed, "on_policy", step, self.dist.rank),
        )

    def _advantages(self, rewards_B: torch.Tensor) -> torch.Tensor:
        from r1kit.rl.losses import group_advantages

        group = self.section.samples_per_prompt if self.section.samples_per_prompt > 1 else len(rewards_B)
        return group_advantages(rewards_B, group, scale="none")  # reward - baseline (Dr. GRPO)

    def batches(self, step: int) -> StepWork:
        from r1kit.rl.rollout import build_batch, sample_groups

        problems = self.prompts.take(self.local_prompts)
        self.student.eval()
        with torch.no_grad(), self.autocast():
            rollout, t_gen, _ = sample_groups(
                self.engine, self.tokenizer, problems, self._sampling_params(step), self.task.score,
                template=self.config.prompt.template, system=self.config.prompt.system,
                prompt_cache=self.prompt_cache,
            )  # fmt: skip
        group = self.section.samples_per_prompt
        advantages_B = self._advantages(rollout.rewards_B)
        rows = sorted(
            range(len(rollout)),
            key=lambda i: len(rollout.prompt_ids[i]) + len(rollout.completions[i].token_ids),
        )
        size = self.config.train.micro_batch_size or len(rows)
        micro = [
            build_batch(rollout, advantages_B, self.pad_id, rows=rows[i : i + size]).to(self.device)
            for i in range(0, len(rows), size)
        ]
        generated = float(sum(len(c.token_ids) for c in rollout.completions))
        sampled = generated + sum(len(rollout.prompt_ids[i]) for i in range(0, len(rollout), group))
        trained = float(sum(len(p) for p in rollout.prompt_ids)) + generated
        counted = float(sum(sum(c.mask) for c in rollout.completions))
        n_rows = float(len(rollout))
        truncated = float(sum(c.finish_reason == "length" for c in rollout.completions))
        reward_sum = float(rollout.rewards_B.sum())
        n_rows, generated, sampled, trained, counted, truncated, reward_sum = all_reduce_sum(
            [n_rows, generated, sampled, trained, counted, truncated, reward_sum], self.dist, self.device
        )
        self._norm = max(counted, 1.0)
        seq = max(1, int(trained / max(n_rows, 1.0)))
        student_fpt = flops_per_token(self.student.config, seq, include_mtp=False)
        teacher_fpt = flops_per_token(self.teacher.config, seq, include_mtp=False)
        sampling = generation_flops(
            self.student.config, sampled - generated, trained - generated, generated, n_rows
        )
        flops = sampling + student_fpt * trained + teacher_fpt * trained / 3
        metrics = {
            "reward/mean": reward_sum / max(n_rows, 1.0),
            "completion/length_mean": generated / max(n_rows, 1.0),
            "completion/truncated_frac": truncated / max(n_rows, 1.0),
            "time/generate": t_gen,
            "cost/tokens_sampled": sampled,
            "cost/tokens_trained": trained,
            "cost/flops": flops,
        }
        return StepWork(micro, tokens=generated, flops=flops, metrics=metrics)

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        row_N, pos_N, tokens_N = sampled_positions(batch)
        with torch.no_grad():
            teacher_logits = self.teacher(batch.input_ids_BL)[row_N, pos_N]
        student_logits = model(batch.input_ids_BL)[row_N, pos_N]
        return on_policy_loss(
            student_logits,
            teacher_logits,
            tokens_N,
            estimator=self.section.kl_estimator,
            advantages=batch.advantages_B[row_N],
            reward_weight=self.section.reward_weight,
            token_norm=self._norm,
        )

    def should_stop(self, val_metrics: dict[str, float]) -> str | None:
        return self._should_stop(val_metrics) if self._should_stop is not None else None

    def progress_fields(self, row: dict[str, Any], val_metrics: dict[str, float]) -> dict[str, Any]:
        return {"loss": row["loss"], "kl": row["kl"], "reward": row["reward/mean"]}

    def state_dict(self) -> dict[str, Any]:
        from r1kit.rl.grpo import gather_stream_states

        return {"streams": gather_stream_states(self.prompts, self.dist, self.device)}

    def load_state_dict(self, extra: dict[str, Any]) -> None:
        streams = extra.get("streams") or []
        if len(streams) == self.dist.world_size:
            self.prompts.load_state_dict(streams[self.dist.rank])
        elif streams:  # another world size: every rank starts the next epoch
            self.prompts.load_state_dict({"epoch": max(s["epoch"] for s in streams) + 1, "cursor": 0})

    def plot(self, run_dir: Path) -> None:
        with contextlib.suppress(ValueError):
            plot_metrics(
                run_dir, run_dir / "loss.png", keys=["loss", "kl", "reward/mean"], title="distill (on-policy)"
            )


def _run_on_policy(config: Config, console: Any = None):
    """On-policy distillation: an :class:`OnPolicyStage` run by `r1kit.train.loop.Trainer` (resume,
    metrics, cost and validation as in every stage)."""
    from r1kit.train.pretrain import validation_hooks

    train, s = config.train, config.sample
    if len(s.tasks) != 1:
        raise ConfigError(
            f"distill.method = 'on_policy' samples one task's prompts; sample.tasks has {len(s.tasks)}: "
            f"give one, e.g. --sample.tasks '[\"{s.tasks[0] if s.tasks else 'addition'}\"]'"
        )
    if train.strategy == "fsdp2":
        raise ConfigError(
            "distill.method = 'on_policy' samples with the unsharded student: use --train.strategy ddp"
        )
    dist, device = start_stage(train)
    try:
        resume_from = prepare_run_dir(config.run)
        teacher, tokenizer, _ = load_model(config.teacher.path, config.teacher.tokenizer, device, "fp32")
        teacher.eval().requires_grad_(False)
        student = build_model(config.student, tokenizer, device, train.seed)
        check_same_vocabulary(teacher, student)
        if hasattr(student, "mtp"):  # no loss reaches the MTP head here (DDP would see unused parameters)
            student.mtp.requires_grad_(False)
        name = s.tasks[0]
        args = task_kwargs(s.task_args, name)
        task = get_task(name, **args)
        problems = task.problems(split=s.split, n=s.prompts, seed=s.seed)
        validate, should_stop = validation_hooks(
            config.val,
            name,
            {name: args},
            tokenizer,
            stage_prompt=config.prompt.template,
            system=config.prompt.system,
            seed=train.seed,
        )
        stage = OnPolicyStage(
            config, student, teacher, tokenizer, task, problems,
            dist=dist, device=device, validate=validate, should_stop=should_stop,
        )  # fmt: skip
        trainer = Trainer(
            student, stage, train, config.run, dist=dist, device=device, tokenizer=tokenizer, config=config,
            validate_every=config.val.every, console=console,
        )  # fmt: skip
        if resume_from is not None:
            trainer.restore(resume_from)
        return run_result(trainer.run(), trainer.run_dir)
    finally:
        cleanup_distributed(dist)


__all__ = [
    "OnPolicyStage",
    "on_policy_loss",
    "Config",
    "DistillRunResult",
    "SampleResult",
    "SampleRunResult",
    "check_same_vocabulary",
    "distillation_loss",
    "generation_flops",
    "rejection_sample",
    "run",
    "run_sample",
    "select_traces",
    "stats_path",
    "trace_messages",
    "well_formed",
    "write_chat_jsonl",
]
