"""`r1kit demo`: the DeepSeek-R1 recipe end to end on a laptop CPU, with a report card.

The stages (DeepSeek-R1, arXiv 2501.12948, at toy scale, no downloads):

1. **tokenizer**: a byte-level BPE vocabulary trained on the task's text (digits stay single tokens);
2. **pretrain**: a tiny DeepSeek-V3-style model (MLA + DeepSeekMoE with auxiliary-loss-free balancing
   + MTP) learns the worked solutions of easier addition problems as plain text;
3. **cold-start SFT**: the chat format (``<think>`` reasoning ``</think>`` answer) with loss on the
   assistant tokens, stopped on a held-out validation accuracy rather than a clock, so the starting
   point is the same on any machine;
4. **GRPO** on harder problems (R1 rewards: accuracy + format), and its controls, each from the same
   checkpoint with GRPO's FLOPs: **expert iteration**, the fair one (`r1kit.expert_iteration`: GRPO's
   prompts in GRPO's order and its verifier, the information RL has; sample, keep the verified,
   fine-tune, repeat), and the **oracle SFT** reference (gold worked solutions of GRPO's prompts, a
   perfect teacher R1 did not have); `r1kit study` adds **SFT on the cold-start set** (more epochs over
   exactly the conversations the cold start trained on). So the report shows what RL added rather
   than what more training of any kind would have;
5. **evaluation** of every stage on held-out problems (a different split and seed) with R1's protocol:
   greedy accuracy, pass@1 over k samples (T 0.6, top-p 0.95), maj@k, thinking length, and a
   budget-forcing curve;
6. **rejection sampling** of the RL model (verified traces only) and **distillation** into a smaller
   dense student, pretrained on the same corpus first (R1's students were pretrained base models).

The demo only chains: each stage is that stage's own ``run`` (``r1kit.train.pretrain``, ``r1kit.train.sft``,
``r1kit.rl.grpo``, ``r1kit.distill``), every model is evaluated by ``r1kit eval`` (``r1kit.evaluate.run``,
into ``eval/<model>/<split>/``), and the report card is built by ``r1kit.report``. It writes
``<run_dir>/report.md`` (and ``report.json``): a summary paragraph, metric × stage table, cost table
(wall time, tokens, FLOPs, MFU, device-hours, dollars), plots; missed targets are stated plainly;
``demo.json`` has the raw numbers. ``run`` returns a ``DemoResult`` (a ``RunResult``). ``--quick true``
shrinks every stage for a smoke test (a few minutes on 2 cores).

    r1kit demo                      # ~15 minutes on 2 CPU cores
    r1kit demo --quick true --run_dir runs/demo-quick
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from r1kit import distill, evaluate, expert_iteration
from r1kit.loaders import resolve_device, set_threads
from r1kit.model import ModelConfig
from r1kit.model.counting import active_param_count, param_count
from r1kit.report import (
    FAIR_CONTROL,
    ORACLE_REFERENCE,
    format_number,
    plot_stage_accuracy,
    stage_plots,
    write_demo_report,
)
from r1kit.rl import grpo
from r1kit.tasks import MixtureTask, get_task
from r1kit.tokenizer import Tokenizer
from r1kit.train import pretrain, sft
from r1kit.train.cost import format_duration, summarize_costs
from r1kit.train.data import BatchStream, problem_messages
from r1kit.train.log import stage_header
from r1kit.train.loop import RunConfig, TrainConfig
from r1kit.train.result import RunResult
from r1kit.train.sft import ValSection

# ----------------------------------------------------------------------------------------------
# configuration


@dataclass
class Recipe:
    """The knobs of the recipe; ``Recipe.full()`` and ``Recipe.quick()`` are the two presets.

    Attributes (counts are problems; steps are optimiser steps):
        sft_digits: operand digits of the SFT problems; hard_share of them get hard_digits instead
            (without a few longer problems a tiny model cannot length-generalise and RL cannot start).
        rl_digits: operand digits of the GRPO prompts (harder than the SFT mix).
        eval_splits: report label -> operand digits of the held-out problems (split "test").
        teacher: ModelConfig overrides of the tiny-v3 preset for the policy.
        student: ModelConfig overrides of the tiny-llama preset for the dense student.
        student_pretrain_steps: the student first learns the pretraining corpus (R1's students were
            pretrained base models, not random networks); 0 = distil into a random init.
        grpo_train_problems: GRPO's prompt pool (expert iteration and the oracle read the same stream).
        grpo_refill_rounds: DAPO's dynamic sampling in GRPO: up to this many extra sampling rounds per step
            replace the groups whose rewards were all equal (no gradient) with new prompts; 0 = off.
        ei_prompts / ei_epochs: expert iteration's prompts per round and passes over each round's traces.
        ei_lr: its learning rate (each round's SFT starts a fresh AdamW: at the cold start's 3e-3 one
            step of a round destroyed the seed-0 policy, 4.3% -> 0% val pass@1; at 3e-4 it learned).
        ei_eval_every: expert iteration's held-out evaluation every N rounds (its learning curve; 0 =
            none, the demo's default: its models are evaluated at the end like every other).
        val_digits: operand digits of the cold start's greedy validation problems (val split) and so of
            its early stop at val_target; 0 = the "4-digit" split's.
    """

    vocab_size: int = 320
    sft_digits: tuple[int, int] = (3, 4)
    hard_digits: tuple[int, int] = (5, 5)
    hard_share: float = 0.2
    rl_digits: tuple[int, int] = (4, 5)
    eval_splits: dict[str, int] = field(default_factory=lambda: {"4-digit": 4, "5-digit": 5})
    teacher: dict[str, Any] = field(default_factory=lambda: {"num_hidden_layers": 2})
    student: dict[str, Any] = field(
        default_factory=lambda: {
            "hidden_size": 64,
            "num_hidden_layers": 3,
            "intermediate_size": 192,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
        }
    )
    tokenizer_texts: int = 5000
    corpus: int = 20000
    sft_examples: int = 100000
    pretrain_steps: int = 150
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    seq_len: int = 128
    sft_max_steps: int = 2500
    sft_batch: int = 64
    sft_lr: float = 3e-3
    val_every: int = 25
    val_problems: int = 64
    val_target: float = 0.25
    val_digits: int = 0
    grpo_steps: int = 300
    grpo_prompts: int = 16
    grpo_group: int = 8
    grpo_lr: float = 1e-4
    grpo_eval_every: int = 50
    grpo_train_problems: int = 20000
    grpo_refill_rounds: int = 0
    ei_prompts: int = 256
    ei_epochs: float = 1.0
    ei_lr: float = 3e-4
    ei_eval_every: int = 0
    max_new_tokens: int = 96
    eval_problems: int = 128
    eval_k: int = 8
    budget_caps: tuple[int, ...] = (8, 16, 24, 32, 40, 48)
    budget_waits: tuple[int, ...] = (1, 2)
    sample_prompts: int = 12000
    sample_k: int = 2
    student_pretrain_steps: int = 150
    distill_steps: int = 800
    distill_lr: float = 3e-3

    @property
    def validation_digits(self) -> int:
        """Operand digits of the cold start's validation problems (and so of its early stop)."""
        return self.val_digits or self.eval_splits.get("4-digit", self.sft_digits[1])

    @classmethod
    def full(cls) -> Recipe:
        """The demo as documented (about 15 minutes on 2 cores)."""
        return cls()

    @classmethod
    def quick(cls) -> Recipe:
        """Every stage shrunk to a smoke test: the numbers mean nothing, the pipeline is exercised."""
        return cls(
            tokenizer_texts=1000,
            corpus=1000,
            sft_examples=2000,
            sft_batch=8,  # so that GRPO's few FLOPs still buy the SFT arms a step or two
            pretrain_steps=10,
            sft_max_steps=20,
            val_every=10,
            val_problems=16,
            grpo_steps=4,
            grpo_prompts=4,
            grpo_group=4,
            grpo_eval_every=2,
            grpo_train_problems=200,
            ei_prompts=8,
            max_new_tokens=48,
            eval_problems=16,
            eval_k=4,
            budget_caps=(8, 32),
            budget_waits=(1,),
            sample_prompts=32,
            sample_k=2,
            student_pretrain_steps=5,
            distill_steps=10,
        )


@dataclass
class Config:
    """`r1kit demo`: the R1 recipe at toy scale, with a report card.

    run_dir (str): where everything goes (one sub-directory per stage, report.md at the top). An existing
        one is moved to <run_dir>.prev first, so a rerun never mixes two runs.
    quick (bool): the smoke-test preset (every stage shrunk; minutes, not a result).
    seed (int): seed of the data draws, initialisations and sampling (evaluation seeds differ from training).
    device (str): "auto" (CUDA when available), "cpu", "cuda".
    threads (int): torch CPU threads; 0 = torch's default.
    dollars_per_hour (float): price of one device-hour in the cost table; 0 = the cost module's default.
    progress (bool): progress bars.
    """

    run_dir: str = "runs/demo"
    quick: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    dollars_per_hour: float = 0.0
    progress: bool = True


# ----------------------------------------------------------------------------------------------
# helpers


EXPERT_ITERATION, COLD_START_SFT, ORACLE = FAIR_CONTROL, "SFT on cold-start set", ORACLE_REFERENCE
ARMS = (EXPERT_ITERATION, COLD_START_SFT, ORACLE)
"""The controls of GRPO, each from the cold-start checkpoint at GRPO's FLOPs: the demo runs
`DEMO_ARMS`, `r1kit study` all three."""
DEMO_ARMS = (EXPERT_ITERATION, ORACLE)
ARM_NOTES = {
    EXPERT_ITERATION: "the fair control: the same information as GRPO (its prompts, in its order, and its "
    "verifier), the same checkpoint and FLOPs; sample, keep the verified, fine-tune, repeat (STaR, ReST-EM)",
    COLD_START_SFT: "more SFT on exactly the conversations the cold start trained on (no new data), at "
    "GRPO's FLOPs",
    ORACLE: "a reference, not a fair control: gold worked solutions of GRPO's prompts (a perfect teacher R1 "
    "did not have), at GRPO's FLOPs",
}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _sft_mixture(recipe: Recipe):
    """The cold-start distribution: easier problems plus a share of longer ones."""
    lo, hi = recipe.sft_digits
    hard_lo, hard_hi = recipe.hard_digits
    easy = get_task("addition", min_digits=lo, max_digits=hi)
    hard = get_task("addition", min_digits=hard_lo, max_digits=hard_hi)
    return MixtureTask([easy, hard], [1.0 - recipe.hard_share, recipe.hard_share])


@dataclass
class _Stages:
    """What the stages leave for the report, in pipeline order: stage -> cost summary, stage -> notes."""

    costs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# the stages


def _prepare(run_dir: Path, console: Any) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        previous = run_dir.with_name(run_dir.name + ".prev")
        if previous.exists():
            shutil.rmtree(previous)
        run_dir.rename(previous)
        console.print(f"[dim]moved the previous {run_dir} to {previous}")
    run_dir.mkdir(parents=True, exist_ok=True)


def stage_tokenizer(recipe: Recipe, run_dir: Path, seed: int, stages: _Stages) -> tuple[Any, Path, Path]:
    """Train the tokenizer on the task's text; write the pretraining corpus and the SFT chats."""
    t0 = time.perf_counter()
    mixture = _sft_mixture(recipe)
    # one draw from the train split, cut in three: pretraining and SFT see different problems
    n_pre, n_sft = recipe.corpus, recipe.sft_examples
    problems = mixture.problems(split="train", n=n_pre + n_sft, seed=seed)
    chats = [problem_messages(mixture, p) for p in problems]
    texts = ["\n".join(m["content"] for m in chat) for chat in chats[:n_pre]]
    tokenizer = Tokenizer.train(texts[: recipe.tokenizer_texts], vocab_size=recipe.vocab_size)
    tok_dir = run_dir / "tokenizer"
    tokenizer.save_pretrained(tok_dir)
    data = run_dir / "data"
    corpus = _write_jsonl(data / "pretrain.jsonl", [{"text": t} for t in texts])
    chats_path = _write_jsonl(data / "sft.jsonl", [{"messages": c} for c in chats[n_pre:]])
    wall = time.perf_counter() - t0
    stages.costs["tokenizer"] = {"wall_s": wall, "tokens": 0, "flops": 0.0}
    stages.notes["tokenizer"] = [
        f"byte-level BPE, {tokenizer.vocab_size} tokens, trained on {min(len(texts), recipe.tokenizer_texts)} "
        f"worked solutions; {n_pre} problems written for pretraining and {n_sft} other ones for SFT "
        f"({wall:.1f} s)"
    ]
    return tokenizer, corpus, chats_path


def _train_common(recipe: Recipe, config: Config, steps: int, batch: int, lr: float, **extra: Any):
    return TrainConfig(
        steps=max(1, steps),
        batch_size=batch,
        lr=lr,
        warmup_steps=min(20, max(1, steps // 10)),
        device=config.device,
        seed=config.seed,
        threads=config.threads,
        **extra,
    )


def _run_config(path: Path, config: Config):
    return RunConfig(
        dir=str(path),
        log_every=5,
        progress=config.progress,
        dollars_per_hour=config.dollars_per_hour,
    )


def stage_pretrain(
    recipe: Recipe,
    config: Config,
    run_dir: Path,
    corpus: Path,
    console: Any,
    preset: str = "tiny-v3",
    overrides: dict[str, Any] | None = None,
    steps: int | None = None,
    name: str = "pretrain",
):
    """Next-token pretraining on the corpus: the teacher by default, the student with its preset."""
    cfg = pretrain.Config(
        model=pretrain.ModelSection(
            preset=preset, overrides=dict(recipe.teacher if overrides is None else overrides)
        ),
        tokenizer=pretrain.TokenizerSection(path=str(run_dir / "tokenizer")),
        data=pretrain.PretrainData(files=[str(corpus)], seq_len=recipe.seq_len),
        train=_train_common(
            recipe,
            config,
            recipe.pretrain_steps if steps is None else steps,
            recipe.pretrain_batch,
            recipe.pretrain_lr,
        ),
        run=_run_config(run_dir / name, config),
    )
    return pretrain.run(cfg, console=console)


def _val_section(recipe: Recipe, target: float, every: int):
    return ValSection(
        every=every,
        task="addition",
        task_args={"addition": {"digits": recipe.validation_digits}},
        problems=recipe.val_problems,
        max_new_tokens=recipe.max_new_tokens,
        target_accuracy=target,
    )


def stage_sft(recipe: Recipe, config: Config, run_dir: Path, chats: Path, init: Path, console: Any):
    cfg = sft.Config(
        model=sft.ModelSection(init=str(init)),
        tokenizer=sft.TokenizerSection(path=str(run_dir / "tokenizer")),
        data=sft.SFTData(files=[str(chats)], max_len=recipe.seq_len),
        val=_val_section(recipe, recipe.val_target, recipe.val_every),
        train=_train_common(
            recipe, config, recipe.sft_max_steps, recipe.sft_batch, recipe.sft_lr, schedule="constant"
        ),
        run=_run_config(run_dir / "sft", config),
    )
    return sft.run(cfg, console=console)


def _rl_data(recipe: Recipe):
    """GRPO's [data]: its task, prompt pool and template; expert iteration reads the same section."""
    lo, hi = recipe.rl_digits
    return grpo.DataSection(
        task="addition",
        task_args={"addition": {"min_digits": lo, "max_digits": hi}},
        train_problems=recipe.grpo_train_problems,
    )


def _rl_eval(recipe: Recipe, every: int):
    """GRPO's held-out [eval] during training (val split); expert iteration is judged on the same."""
    return grpo.EvalSection(
        every=every,
        split="val",
        problems=recipe.val_problems,
        samples=4,
        max_new_tokens=recipe.max_new_tokens,
    )


def stage_grpo(recipe: Recipe, config: Config, run_dir: Path, init: Path):
    cfg = grpo.Config(
        model=grpo.ModelSection(path=str(init), tokenizer=str(run_dir / "tokenizer")),
        data=_rl_data(recipe),
        reward=grpo.RewardSection(names=["accuracy", "format"], weights=[1.0, 0.1]),
        rollout=grpo.RolloutSection(
            prompts_per_step=recipe.grpo_prompts,
            group_size=recipe.grpo_group,
            temperature=1.0,
            max_new_tokens=recipe.max_new_tokens,
            dynamic_sampling=recipe.grpo_refill_rounds > 0,
            max_sampling_rounds=recipe.grpo_refill_rounds,
        ),
        loss=grpo.LossSection(loss_type="grpo", beta=0.0, mu=1),
        train=grpo.TrainSection(
            steps=recipe.grpo_steps,
            lr=recipe.grpo_lr,
            schedule="constant",
            grad_clip=1.0,
            device=config.device,
            seed=config.seed,
            threads=config.threads,
        ),
        run=grpo.RunSection(
            dir=str(run_dir / "grpo"), log_every=1, progress=config.progress, tensorboard=False
        ),
        eval=_rl_eval(recipe, recipe.grpo_eval_every),
    )
    return grpo.run(cfg)


def stage_expert_iteration(
    recipe: Recipe, config: Config, run_dir: Path, init: Path, budget_flops: float, console: Any
):
    """The fair control (STaR / ReST-EM, `r1kit.expert_iteration`): from the SFT checkpoint, on GRPO's own
    prompts (the same [data] and seed, so the same prompt stream) and verifier, sample `grpo_group`
    completions per prompt at GRPO's temperature, keep the verified ones, fine-tune on them, repeat until
    GRPO's FLOPs are spent."""
    cfg = expert_iteration.Config(
        model=expert_iteration.ModelDirSection(path=str(init), tokenizer=str(run_dir / "tokenizer")),
        data=_rl_data(recipe),
        ei=expert_iteration.EISection(
            budget_flops=budget_flops,
            prompts_per_round=recipe.ei_prompts,
            k=recipe.grpo_group,
            temperature=1.0,
            max_new_tokens=recipe.max_new_tokens,
            epochs=recipe.ei_epochs,
            max_len=recipe.seq_len,
        ),
        train=_train_common(recipe, config, 1, recipe.sft_batch, recipe.ei_lr, schedule="constant"),
        run=_run_config(run_dir / "expert_iteration", config),
        eval=_rl_eval(recipe, recipe.ei_eval_every),
    )
    return expert_iteration.run(cfg, console=console)


def cold_start_set(recipe: Recipe, config: Config, chats: Path, sft_steps: int) -> list[str]:
    """The conversations (JSONL lines of the SFT file) the cold start trained on, in first-seen order:
    its `BatchStream` (seed = the demo seed, batch `sft_batch`) replayed for the `sft_steps` it ran."""
    lines = chats.read_text(encoding="utf-8").splitlines()
    stream = BatchStream(lines, recipe.sft_batch, seed=config.seed)
    seen: dict[int, None] = {}
    for _ in range(sft_steps):
        seen.update(dict.fromkeys(stream.next_global_indices()))
    return [lines[i] for i in seen]


def oracle_conversations(recipe: Recipe, config: Config, n: int) -> list[str]:
    """Gold worked solutions of the RL prompts, in GRPO's order (the same pool and prompt stream), as
    JSONL lines: the oracle teacher R1 did not have."""
    task, stream = expert_iteration.grpo_prompt_stream(_rl_data(recipe), config.seed)
    return [json.dumps({"messages": problem_messages(task, p)}) for p in stream.take(n)]


def stage_sft_arm(
    recipe: Recipe,
    config: Config,
    run_dir: Path,
    lines: list[str],
    init: Path,
    budget_flops: float,
    name: str,
    console: Any,
):
    """More SFT from the SFT checkpoint on `lines` (chat JSONL) for exactly `budget_flops` (GRPO's):
    the steps are laid out as the loop will draw them (`expert_iteration.sft_steps_within`), with a
    cosine decay (its best shot) and another data order (seed + 1) than the cold start's."""
    path = _write_jsonl(run_dir / "data" / f"{name}.jsonl", [json.loads(line) for line in lines])
    tokenizer = Tokenizer.from_pretrained(run_dir / "tokenizer")
    model_cfg = ModelConfig.from_hf_dict(json.loads((init / "config.json").read_text()))
    chats = [json.loads(line)["messages"] for line in lines]
    steps = expert_iteration.sft_steps_within(
        chats, tokenizer, model_cfg, recipe.seq_len, recipe.sft_batch, config.seed + 1, budget_flops
    )
    if not steps:  # not one step fits in the budget: the arm is its starting checkpoint, at 0 FLOPs
        console.print(f"[yellow]{name}: {budget_flops:.3g} FLOPs do not buy one SFT step; no training")
        (run_dir / name).mkdir(parents=True, exist_ok=True)
        cost = {"flops": 0.0, "tokens": 0, "wall_s": 0.0, "steps": 0}
        return RunResult(run_dir / name, metrics={"model_dir": str(init), "steps": 0}, cost=cost)
    cfg = sft.Config(
        model=sft.ModelSection(init=str(init)),
        tokenizer=sft.TokenizerSection(path=str(run_dir / "tokenizer")),
        data=sft.SFTData(files=[str(path)], max_len=recipe.seq_len),
        val=_val_section(recipe, 0.0, 0),
        train=replace(
            _train_common(recipe, config, steps, recipe.sft_batch, recipe.sft_lr, schedule="cosine"),
            seed=config.seed + 1,
        ),
        run=_run_config(run_dir / name, config),
    )
    return sft.run(cfg, console=console)


def stage_sample(recipe: Recipe, config: Config, run_dir: Path, teacher: Path, console: Any):
    hi = recipe.rl_digits[1]
    cfg = distill.Config(
        teacher=distill.TeacherSection(path=str(teacher), tokenizer=str(run_dir / "tokenizer")),
        sample=distill.SampleSection(
            tasks=["addition"],
            task_args={"addition": {"min_digits": recipe.sft_digits[0], "max_digits": hi}},
            split="train",
            prompts=recipe.sample_prompts,
            seed=config.seed + 7,
            k=recipe.sample_k,
            temperature=0.6,
            top_p=0.95,
            max_new_tokens=recipe.max_new_tokens,
            keep="shortest",
            max_per_prompt=1,
            out=str(run_dir / "data" / "traces.jsonl"),
        ),
        train=_train_common(recipe, config, 1, recipe.sft_batch, recipe.distill_lr),
        run=_run_config(run_dir / "distill", config),
    )
    return distill.run_sample(cfg, console=console)


def stage_distill(
    recipe: Recipe, config: Config, run_dir: Path, traces: Path, console: Any, init: Path | None = None
):
    cfg = distill.Config(
        teacher=distill.TeacherSection(path=str(run_dir / "grpo"), tokenizer=str(run_dir / "tokenizer")),
        student=distill.ModelSection(
            preset="tiny-llama", init=str(init) if init else "", overrides=dict(recipe.student)
        ),
        distill=distill.DistillSection(
            method="sft", files=[str(traces)], tokenizer=str(run_dir / "tokenizer"), max_len=recipe.seq_len
        ),
        train=_train_common(recipe, config, recipe.distill_steps, recipe.sft_batch, recipe.distill_lr),
        run=_run_config(run_dir / "student", config),
    )
    return distill.run(cfg, console=console)


def _model_dir(result: Any) -> Path:
    """The final model directory of a stage's RunResult."""
    metrics = getattr(result, "metrics", {}) or {}
    if metrics.get("model_dir"):
        return Path(metrics["model_dir"])
    return Path(result.run_dir) / "model"


def _eval_config(
    recipe: Recipe, config: Config, run_dir: Path, model: Path, out: Path, digits: int, rl: bool, budget: bool
):
    """The `r1kit eval` config of one model on one held-out split: R1's protocol (T 0.6, top-p 0.95,
    k = recipe.eval_k) on "test" problems drawn with seed + 1000, sampled with seed + 2000; with `budget`,
    the greedy budget-forcing curve too (caps and waits, 32 more tokens of room); plots only for the RL
    model (`rl`), the one the report shows curves of."""
    return evaluate.Config(
        model=evaluate.ModelSection(path=str(model), tokenizer=str(run_dir / "tokenizer")),
        data=evaluate.DataSection(
            tasks=["addition"],
            task_args={"addition": {"digits": digits}},
            splits=["test"],
            problems=recipe.eval_problems,
            seed=config.seed + 1000,
        ),
        sampling=evaluate.SamplingSection(
            k=recipe.eval_k, max_new_tokens=recipe.max_new_tokens, seed=config.seed + 2000
        ),
        budget=evaluate.BudgetSection(
            caps=list(recipe.budget_caps) if budget else [],
            waits=list(recipe.budget_waits) if budget else [],
            max_new_tokens=recipe.max_new_tokens + 32,
        ),
        run=evaluate.RunSection(
            dir=str(out),
            device=config.device,
            dtype="float32",
            threads=config.threads,
            progress=config.progress,
            plots=rl,
            dollars_per_hour=config.dollars_per_hour,
        ),
    )


def stage_evaluate(
    recipe: Recipe, config: Config, run_dir: Path, models: dict[str, Path], stages: _Stages, console: Any
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """`r1kit eval` of each model on each held-out split (into eval/<model>/<split>/); the RL model's
    runs also give the scaling curves and, on the first split (where it is competent), the budget curve.

    Returns (results: model -> split -> metrics, extras: {"plots", "budget", "curves"} of the RL model).
    """
    results: dict[str, dict[str, Any]] = {name: {} for name in models}
    extras: dict[str, Any] = {"plots": [], "budget": {}, "curves": {}}
    out = run_dir / "eval"
    first = next(iter(recipe.eval_splits))
    for name, path in models.items():
        stage_header(f"evaluate: {name}", str(path), console=console)
        costs = []
        for split, digits in recipe.eval_splits.items():
            budget = name == "GRPO" and split == first
            cfg = _eval_config(
                recipe, config, run_dir, path, out / _slug(name) / split, digits, name == "GRPO", budget
            )
            res = evaluate.run(cfg, console=console)
            costs.append(res.cost)
            (result,) = res.results
            results[name][split] = result.metrics
            if name == "GRPO":
                extras["curves"][split] = result.curves
                extras["plots"] += [str(p) for p in sorted(Path(res.run_dir).glob("scaling_*.png"))]
            if budget:
                extras["budget"] = {"split": split, "points": result.budget}
                extras["plots"] += [str(p) for p in sorted(Path(res.run_dir).glob("budget_*.png"))]
        stages.costs[f"eval {name}"] = summarize_costs(costs)
    (out / "results.json").write_text(json.dumps({"results": results, **extras}, indent=2, default=float))
    return results, extras


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


# ----------------------------------------------------------------------------------------------
# the pipeline


@dataclass
class DemoResult(RunResult):
    """What `run` returns: a `RunResult` (run_dir; metrics "{stage}/{split}/{metric}" of every evaluation;
    cost: the total of every stage) plus

    report: report.md; results: stage -> split -> evaluation metrics (as in demo.json);
    facts: the numbers the report's summary quotes; elapsed_s: wall-clock of the whole run.
    """

    report: Path = field(default_factory=Path)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0


def _train(
    recipe: Recipe,
    config: Config,
    run_dir: Path,
    stages: _Stages,
    console: Any,
    arms: tuple[str, ...] = DEMO_ARMS,
) -> dict[str, Any]:
    """Stages 1-4 (tokenizer, pretrain, cold-start SFT, GRPO and its equal-FLOPs controls `arms`): their
    `RunResult`s by stage name, plus "corpus" and "chats" (the data files written)."""
    stage_header("1/7 tokenizer", "byte-level BPE on the task's worked solutions", console)
    _, corpus, chats = stage_tokenizer(recipe, run_dir, config.seed, stages)
    stage_header(
        "2/7 pretrain", "tiny DeepSeek-V3 (MLA + MoE + MTP) on worked solutions as plain text", console
    )
    pre = stage_pretrain(recipe, config, run_dir, corpus, console)
    stages.costs["pretrain"] = pre.cost
    stage_header(
        "3/7 cold-start SFT",
        f"chat format, assistant-only loss; stops when {recipe.validation_digits}-digit greedy accuracy reaches "
        f"{100 * recipe.val_target:.0f}%",
        console,
    )
    sft_res = stage_sft(recipe, config, run_dir, chats, _model_dir(pre), console)
    stages.costs["SFT"] = sft_res.cost
    stage_header(
        "4/7 GRPO",
        f"accuracy + format rewards on {recipe.rl_digits[0]}-{recipe.rl_digits[1]} digit problems",
        console,
    )
    rl_res = stage_grpo(recipe, config, run_dir, _model_dir(sft_res))
    stages.costs["GRPO"] = rl_res.cost
    stages.notes["GRPO"] = [
        "completion length stays flat here: the column-by-column format fixes the length of the chain "
        "of thought, so R1's growing-length curve needs a task where longer reasoning helps (Countdown)"
    ]
    budget = float(rl_res.cost.get("flops") or 0.0)
    done = {"corpus": corpus, "chats": chats, "pretrain": pre, "SFT": sft_res, "GRPO": rl_res}
    for i, arm in enumerate(arms):
        done[arm] = stage_arm(arm, recipe, config, run_dir, done, budget, console, f"4{'bcd'[i]}/7")
        stages.costs[arm] = done[arm].cost
        stages.notes[arm] = [ARM_NOTES[arm]]
    return done


def stage_arm(
    arm: str,
    recipe: Recipe,
    config: Config,
    run_dir: Path,
    done: dict[str, Any],
    budget_flops: float,
    console: Any,
    label: str = "",
):
    """One control of GRPO (`ARMS`) from the SFT checkpoint with `budget_flops`; its `RunResult`."""
    init, sft_res = _model_dir(done["SFT"]), done["SFT"]
    sft_steps = max(1, int(sft_res.metrics.get("steps", 1)))
    stage_header(f"{label} {arm}".strip(), ARM_NOTES[arm], console)
    if arm == EXPERT_ITERATION:
        return stage_expert_iteration(recipe, config, run_dir, init, budget_flops, console)
    if arm == COLD_START_SFT:
        lines = cold_start_set(recipe, config, done["chats"], sft_steps)
        return stage_sft_arm(recipe, config, run_dir, lines, init, budget_flops, "sft_cold_start", console)
    if arm == ORACLE:
        # enough problems for the steps GRPO's FLOPs buy at the cold start's cost per step (+25%)
        per_step = (sft_res.cost.get("flops") or 1.0) / sft_steps
        n = recipe.sft_batch * max(1, round(1.25 * budget_flops / per_step))
        lines = oracle_conversations(recipe, config, n)
        return stage_sft_arm(recipe, config, run_dir, lines, init, budget_flops, "sft_oracle", console)
    raise ValueError(f"unknown arm {arm!r}; the arms are {', '.join(ARMS)}")


def _distill(
    recipe: Recipe, config: Config, run_dir: Path, done: dict[str, Any], stages: _Stages, console: Any
) -> None:
    """Stages 5-6: rejection sampling of the RL model, then the dense student (pretrained first when the
    recipe says so) trained on the verified traces; adds their `RunResult`s to `done`."""
    stage_header(
        "5/7 rejection sampling", "the RL model writes traces; only verified-correct ones are kept", console
    )
    sample_res = stage_sample(recipe, config, run_dir, _model_dir(done["GRPO"]), console)
    stats = sample_res.metrics
    stages.costs["rejection sampling"] = sample_res.cost
    stages.notes["rejection sampling"] = [
        f"{stats.get('prompts', '?')} prompts × {recipe.sample_k} samples, acceptance rate "
        f"{100 * float(stats.get('acceptance_rate', 0)):.1f}%, {stats.get('kept', '?')} traces kept "
        "(shortest correct one per prompt)"
    ]
    stage_header(
        "6/7 distillation",
        "a smaller dense student "
        + ("is pretrained on the same corpus, then " if recipe.student_pretrain_steps else "")
        + "learns from the verified traces",
        console,
    )
    student_data = Path(stats.get("out", run_dir / "data" / "traces.jsonl"))
    if not int(stats.get("kept", 0) or 0):
        # nothing verified (a quick run's model solves nothing): say so and keep the pipeline whole
        student_data = done["chats"]
        stages.notes["student"] = [
            "NO verified traces were kept, so the student was trained on the cold-start worked solutions "
            "instead: this is not distillation"
        ]
    student_init = None
    if recipe.student_pretrain_steps:
        student_pre = stage_pretrain(
            recipe,
            config,
            run_dir,
            done["corpus"],
            console,
            preset="tiny-llama",
            overrides=recipe.student,
            steps=recipe.student_pretrain_steps,
            name="student_pretrain",
        )
        stages.costs["student pretrain"] = student_pre.cost
        student_init = _model_dir(student_pre)
    student_res = stage_distill(recipe, config, run_dir, student_data, console, init=student_init)
    stages.costs["student"] = student_res.cost
    done.update({"rejection sampling": sample_res, "student": student_res})


def _facts(
    recipe: Recipe, done: dict[str, Any], stages: _Stages, device: Any, elapsed_s: float
) -> dict[str, Any]:
    """The numbers the report's summary quotes: model sizes, totals, the SFT stop, the traces kept."""
    teacher_cfg = ModelConfig.from_hf_dict(json.loads((_model_dir(done["GRPO"]) / "config.json").read_text()))
    student_cfg = ModelConfig.from_hf_dict(
        json.loads((_model_dir(done["student"]) / "config.json").read_text())
    )
    total = summarize_costs([c for c in stages.costs.values() if c.get("wall_s")])
    sft_res, rl_res = done["SFT"], done["GRPO"]
    return {
        "device": (
            f"a CPU ({torch.get_num_threads()} threads)"
            if device.type == "cpu"
            else (total.get("device_name") or str(device))
        ),
        "teacher_params": format_number(param_count(teacher_cfg)) + "-parameter",
        "teacher_active": format_number(active_param_count(teacher_cfg, False)),
        "experts": teacher_cfg.n_routed_experts,
        "student_active_ratio": active_param_count(student_cfg, False)
        / active_param_count(teacher_cfg, False),
        "total_time": format_duration(elapsed_s),
        "total_flops": format_number(total["flops"]),
        "total_dollars": f"${total['dollars']:.4f}",
        "sft_steps": max(1, int(sft_res.metrics.get("steps", 1))),
        "sft_val": sft_res.metrics.get("val_accuracy", 0.0),
        "sft_stopped_early": bool(sft_res.metrics.get("stopped_early")),
        "grpo_steps": rl_res.metrics.get("steps", recipe.grpo_steps),
        "traces": done["rejection sampling"].metrics.get("kept", "?"),
        "rl_dir": str(_model_dir(rl_res)),
    }


def arm_plots(done: dict[str, Any], arms: tuple[str, ...]) -> dict[str, list[str]]:
    """Each control's plots: expert iteration's held-out curve over rounds, the SFT arms' losses."""
    return {
        arm: stage_plots(
            Path(done[arm].run_dir), ("curve.png",) if arm == EXPERT_ITERATION else ("loss.png",)
        )
        for arm in arms
    }


def _meter_the_rest(stages: _Stages, elapsed_s: float) -> None:
    """Book what no stage metered (writing data, tokenizing the chats, loading and saving models) as
    "other", so the cost table adds up to the wall clock."""
    metered = sum(float(c.get("wall_s") or 0.0) for c in stages.costs.values())
    other = max(0.0, elapsed_s - metered)
    rate = next(
        (c["dollars"] / c["device_hours"] for c in stages.costs.values() if c.get("device_hours")), 0.0
    )
    stages.costs["other"] = {
        "wall_s": other,
        "tokens": 0,
        "flops": 0.0,
        "device_hours": other / 3600,
        "dollars": other / 3600 * rate,
    }


def run(config: Config) -> DemoResult:
    """Run the whole recipe: the stages' `run` functions in order, `r1kit eval` of every model, then the
    report card (`r1kit.report.write_demo_report`) and demo.json. Returns a `DemoResult`."""
    console = Console()
    recipe = Recipe.quick() if config.quick else Recipe.full()
    set_threads(config.threads)
    run_dir = Path(config.run_dir)
    _prepare(run_dir, console)
    device = resolve_device(config.device)
    stages = _Stages()
    t_start = time.perf_counter()
    mode = "quick smoke test" if config.quick else "full recipe"
    stage_header(
        f"r1kit demo ({mode})", f"run directory {run_dir}; report at {run_dir / 'report.md'}", console
    )
    done = _train(recipe, config, run_dir, stages, console)
    _distill(recipe, config, run_dir, done, stages, console)
    stage_header(
        "7/7 evaluation", f"held-out problems, R1 protocol (T 0.6, top-p 0.95, k={recipe.eval_k})", console
    )
    models = {name: _model_dir(done[name]) for name in ("SFT", "GRPO", *DEMO_ARMS, "student")}
    results, extras = stage_evaluate(recipe, config, run_dir, models, stages, console)
    _meter_the_rest(stages, time.perf_counter() - t_start)
    facts = _facts(recipe, done, stages, device, time.perf_counter() - t_start)
    plots = {
        "pretrain": stage_plots(Path(done["pretrain"].run_dir), ("loss.png",)),
        "SFT": stage_plots(Path(done["SFT"].run_dir), ("loss.png",)),
        "GRPO": stage_plots(Path(done["GRPO"].run_dir), ("aha.png",)) + extras["plots"],
        **arm_plots(done, DEMO_ARMS),
        "student pretrain": stage_plots(run_dir / "student_pretrain", ("loss.png",)),
        "student": stage_plots(Path(done["student"].run_dir), ("loss.png",)),
        "summary": [str(plot_stage_accuracy(results, run_dir / "accuracy.png"))],
    }
    report = write_demo_report(
        recipe, config.quick, run_dir, results, extras, stages.costs, stages.notes, facts, plots
    )
    (run_dir / "demo.json").write_text(
        json.dumps(
            {"recipe": asdict(recipe), "config": asdict(config), "results": results, "facts": facts},
            indent=2,
            default=str,
        )
    )
    stage_header("done", f"report card: {report}", console)
    console.print(report.read_text().split("\n## ")[0])
    rl_dir = facts["rl_dir"]
    console.print(f"\nChat with the RL model:\n  r1kit serve --model {rl_dir}\n  r1kit chat --model {rl_dir}")
    metrics = {
        f"{stage}/{split}/{k}": v
        for stage, r in results.items()
        for split, m in r.items()
        for k, v in m.items()
    }
    return DemoResult(
        run_dir=run_dir,
        metrics=metrics,
        cost=summarize_costs([c for c in stages.costs.values() if c.get("wall_s")]),
        report=report,
        results=results,
        facts=facts,
        elapsed_s=time.perf_counter() - t_start,
    )


__all__ = ["Config", "DemoResult", "Recipe", "run"]
