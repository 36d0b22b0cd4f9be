"""`r1kit study`: what RL adds, measured against controls that get the same information, over seeds.

For each task and seed, one cold start (the demo's stages 1-3: tokenizer, pretraining, cold-start SFT,
`r1kit.demo`), then from that one checkpoint, each at GRPO's FLOPs (sampling + updates, as
`r1kit.rl.grpo` counts them):

- **GRPO** (the demo's stage 4);
- **expert iteration** (`r1kit.expert_iteration`, STaR / ReST-EM): GRPO's prompts in GRPO's order and
  its verifier, nothing more: the fair control;
- **SFT on the cold-start set**: more epochs over exactly the conversations the cold start trained on;
- **oracle SFT**: gold worked solutions of GRPO's prompts, a perfect teacher R1 did not have (a
  reference, not a control);
- optionally (``--distill true``) the demo's rejection sampling and distilled student.

Every model is evaluated by `r1kit eval` on the held-out test split (R1's protocol: pass@1 over k
samples at T 0.6 / top-p 0.95, maj@k, greedy, thinking length; GRPO's budget-forcing curve), and
``<run_dir>/study.md`` (+ ``study.json``, plots) reports mean ± spread over seeds: the tables, the
length-vs-compute plot (held-out pass@1 and mean completion length against FLOPs, GRPO against expert
iteration, which are both evaluated during training on the same held-out problems), and the budget
curves. Each seed's run directory is a demo's (``<run_dir>/<task>/seed<S>/``).

    r1kit study --seeds 3 --threads 2   # roughly the demo plus two arms per seed (estimated ~20 min on 2 idle cores)
    r1kit study --quick true --seeds 1 --run_dir runs/study-quick   # a smoke test
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from r1kit import demo
from r1kit.config import UserError
from r1kit.loaders import set_threads
from r1kit.report import (
    StageReport,
    format_number,
    mean_spread,
    plot_budget_seeds,
    plot_learning_curves,
    split_metrics,
    spread_table,
    write_report,
)
from r1kit.train.cost import format_duration, summarize_costs
from r1kit.train.log import stage_header


def _addition_quick() -> demo.Recipe:
    """The demo's smoke-test preset, shrunk further: a smoke test of the study's pipeline."""
    return replace(
        demo.Recipe.quick(),
        corpus=500,
        sft_examples=1000,
        ei_prompts=4,
        ei_eval_every=1,
        eval_problems=8,
        eval_k=2,
        val_problems=8,
        budget_caps=(16, 40),
        budget_waits=(),
    )


def _addition_demo() -> demo.Recipe:
    """The demo's recipe, with expert iteration evaluated every 2 rounds (its learning curve). Its cold
    start draws from 100,000 worked solutions and stops early, so "more SFT on the cold-start set" is
    mostly unseen problems of the same generator: nearly fresh data, not R1's finite cold start."""
    return replace(demo.Recipe.full(), ei_eval_every=2)


def _addition_finite() -> demo.Recipe:
    """R1's setting: a finite cold start of a few thousand conversations (4,000; R1 used "thousands"),
    half of them with hard 5-digit operands so the cold start solves some hard problems and RL has a
    signal there, trained for a fixed 1,000 steps (16 epochs, no early stop: val_target 1.0) so every
    arm starts from a cold start that has seen its data many times; then GRPO, expert iteration and more
    SFT on exactly those 4,000 at GRPO's FLOPs. GRPO uses DAPO's dynamic sampling (one extra
    sampling round per step replaces the groups whose rewards were all equal: on the hard split most
    groups of a weak cold start are all wrong and teach nothing)."""
    return replace(
        demo.Recipe.full(),
        sft_examples=4000,
        hard_share=0.5,
        sft_max_steps=1000,
        val_target=1.0,
        val_every=100,
        ei_eval_every=2,
        grpo_refill_rounds=1,
    )


def _addition_scarce() -> demo.Recipe:
    """`_addition_finite` with a quarter of the 4,000 cold-start conversations 5-digit (1,000) instead of
    half, meant to keep the hard split hard after the cold start in every seed (at half, seed 0's cold
    start already solved 90.7% of it, which caps any lift at +9.3 points). Chosen before running it;
    nothing else changes. It did not: seed 2's cold start then solved 91.1% (docs/LOG.md)."""
    return replace(_addition_finite(), hard_share=0.25)


def _addition_long() -> demo.Recipe:
    """`_addition_finite` one digit longer at the top: the cold start's hard half is 5-6 digit operands
    (each operand's length drawn on its own, so a quarter of them 6 + 6), GRPO's prompts 5-6 digit, and a
    6-digit held-out split, the hard one. A longer chain of carries is what the cold start gets wrong
    (fewer hard conversations did not lower its 5-digit accuracy, `_addition_scarce`), so the hard split
    is set by length, not by how often the cold start saw it. Chosen before running it."""
    return replace(
        _addition_finite(),
        hard_digits=(5, 6),
        rl_digits=(5, 6),
        eval_splits={"4-digit": 4, "5-digit": 5, "6-digit": 6},
    )


def _addition_calibrated() -> demo.Recipe:
    """`_addition_finite` with the cold start stopped where GRPO has both headroom and signal: SFT on the
    same 4,000 conversations (half 5-digit) stops the first time greedy accuracy on 64 validation
    5-digit problems (val split, never test) reaches 30%, checked every 20 steps, at most 1,000 steps.
    Every miss of the lift so far was a cold start outside a middle band (above 85% on the hard split:
    no room; about 7%: almost no reward), and neither the hard share nor the split's length set where a
    seed landed (`_addition_scarce`, `_addition_long`); this sets it by measuring. The cost is a shorter
    cold start than R1's fixed one, so "more SFT on the cold-start set" starts with more to learn too.
    Chosen before running it: expected, every seed's cold start at 20-45% pass@1 on the 5-digit test
    split and GRPO lifting it by at least 15 points in 3 of 3 seeds."""
    return replace(_addition_finite(), val_digits=5, val_target=0.3, val_every=20)


STUDY_TASKS = {
    "addition": (_addition_finite, _addition_quick),
    "addition-scarce": (_addition_scarce, _addition_quick),
    "addition-long": (_addition_long, _addition_quick),
    "addition-calibrated": (_addition_calibrated, _addition_quick),
    "addition-demo": (_addition_demo, _addition_quick),
}
"""Task name -> (full recipe, quick recipe). "addition": the demo's task (4-digit and hard 5-digit
splits) with R1's finite cold start (`_addition_finite`); "addition-scarce": the same with a quarter of
the cold start 5-digit (meant to keep the hard split hard; it did not); "addition-long": a 6-digit hard
split, the cold start's hard half 5-6 digit; "addition-calibrated": the cold start stopped when its
greedy 5-digit validation accuracy reaches 30%; "addition-demo": the demo's own recipe. Another task joins
the study with a `demo.Recipe` preset here."""


@dataclass
class Config:
    """`r1kit study`: GRPO against equal-information controls, over seeds, in one report.

    run_dir (str): where everything goes: <run_dir>/<task>/seed<S>/ (one demo-layout run each) and
        study.md / study.json / plots at the top. An existing seed directory is moved to .prev first.
    tasks (list[str]): tasks of `STUDY_TASKS` ("addition": R1's finite cold start; "addition-demo": the
        demo's recipe).
    seeds (int): seeds per task, first_seed, first_seed + 1, ...
    first_seed (int): the first seed.
    arms (list[str]): GRPO's controls: "expert iteration", "SFT on cold-start set", "oracle SFT".
    distill (bool): also the demo's rejection sampling and distilled student (stage "student").
    quick (bool): a smoke-test preset (the demo's, shrunk further; the numbers mean nothing).
    device (str): "auto", "cpu", "cuda".
    threads (int): torch CPU threads; 0 = torch's default (compare runs only at one thread count).
    dollars_per_hour (float): price of a device-hour; 0 = the cost module's default.
    progress (bool): progress bars.
    reuse (bool): a seed whose <run_dir>/<task>/seed<S>/study_seed.json exists is read, not run again:
        resume a stopped study, or run seeds in parallel (one `--seeds 1 --first_seed S` process each,
        same run_dir) and then once more with ``--reuse true`` over all seeds to write the one report.
    """

    run_dir: str = "runs/study"
    tasks: list[str] = field(default_factory=lambda: ["addition"])
    seeds: int = 3
    first_seed: int = 0
    arms: list[str] = field(default_factory=lambda: list(demo.ARMS))
    distill: bool = False
    quick: bool = False
    device: str = "auto"
    threads: int = 0
    dollars_per_hour: float = 0.0
    progress: bool = True
    reuse: bool = False

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in STUDY_TASKS]
        if unknown or not self.tasks:
            raise UserError(
                f"unknown task(s) {unknown or '(none given)'}; use --tasks with some of {sorted(STUDY_TASKS)}"
            )
        bad = [a for a in self.arms if a not in demo.ARMS]
        if bad:
            raise UserError(f"unknown arm(s) {bad}; the arms are {list(demo.ARMS)}")
        if self.seeds < 1:
            raise UserError(f"--seeds {self.seeds}: give at least 1")


@dataclass
class StudyResult:
    """What `run` returns: report (study.md), runs (task -> seed -> that seed's numbers, as in study.json)."""

    report: Path
    runs: dict[str, dict[int, dict[str, Any]]]
    elapsed_s: float = 0.0


def _curve_grpo(result: Any) -> list[dict[str, float]]:
    """GRPO's held-out evaluations against the FLOPs spent before each (from its metrics.jsonl)."""
    flops_at = {0: 0.0}
    path = Path(result.metrics_path)
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        if "flops" in row:
            flops_at[int(row["step"])] = float(row["flops"])
    return [
        {
            "flops": flops_at.get(h["step"], float("nan")),
            "accuracy": h["eval/pass@1"],
            "length": h["eval/length_mean"],
        }
        for h in result.eval_history
        if "eval/pass@1" in h
    ]


def _curve_ei(result: Any) -> list[dict[str, float]]:
    """Expert iteration's held-out evaluations (the same [eval] as GRPO's) against its FLOPs."""
    return [
        {"flops": h["flops"], "accuracy": h["eval/pass@1"], "length": h["eval/length_mean"]}
        for h in result.history
        if "eval/pass@1" in h
    ]


def run_seed(config: Config, task: str, seed: int, console: Any) -> dict[str, Any]:
    """One seed of one task: the cold start, GRPO and the arms from it, their evaluation; the seed's numbers
    (results, costs, curves, budget points, facts) also written to <seed dir>/study_seed.json."""
    full, quick = STUDY_TASKS[task]
    recipe = quick() if config.quick else full()
    seed_dir = Path(config.run_dir) / task / f"seed{seed}"
    cfg = demo.Config(
        run_dir=str(seed_dir),
        quick=config.quick,
        seed=seed,
        device=config.device,
        threads=config.threads,
        dollars_per_hour=config.dollars_per_hour,
        progress=config.progress,
    )
    demo._prepare(seed_dir, console)
    stages = demo._Stages()
    t0 = time.perf_counter()
    done = demo._train(recipe, cfg, seed_dir, stages, console, arms=tuple(config.arms))
    if config.distill:
        demo._distill(recipe, cfg, seed_dir, done, stages, console)
    names = ["SFT", "GRPO", *config.arms, *(["student"] if config.distill else [])]
    models = {name: demo._model_dir(done[name]) for name in names}
    results, extras = demo.stage_evaluate(recipe, cfg, seed_dir, models, stages, console)
    curves = {"GRPO": _curve_grpo(done["GRPO"])}
    if demo.EXPERT_ITERATION in config.arms:
        curves[demo.EXPERT_ITERATION] = _curve_ei(done[demo.EXPERT_ITERATION])
    out = {
        "task": task,
        "seed": seed,
        "results": results,
        "costs": stages.costs,
        "curves": curves,
        "budget": extras.get("budget", {}),
        "sft_steps": int(done["SFT"].metrics.get("steps", 0)),
        "sft_val": done["SFT"].metrics.get("val_accuracy"),
        "wall_s": time.perf_counter() - t0,
        "eval_k": recipe.eval_k,
        "splits": list(recipe.eval_splits),
    }
    (seed_dir / "study_seed.json").write_text(json.dumps(out, indent=1, default=float))
    return out


def findings(task: str, seeds: list[dict[str, Any]], arms: list[str]) -> list[str]:
    """The issue's checks on one task, from the numbers: met / NOT met, with the counts. A seed is a
    `run_seed` dict (only "seed", "results" (stage -> split -> {"pass@1", "maj@<k>"}), "splits" (the last
    is the hard one) and "eval_k" are read); "SFT" is the cold start."""
    hard = seeds[0]["splits"][-1]
    k = seeds[0]["eval_k"]

    def p1(s: dict[str, Any], stage: str, split: str = hard) -> float:
        return s["results"].get(stage, {}).get(split, {}).get("pass@1", float("nan"))

    n = len(seeds)
    lines = []
    lifts = [p1(s, "GRPO") - p1(s, "SFT") for s in seeds]
    hits = sum(d >= 0.15 for d in lifts)
    capped = [f"{s['seed']} ({100 * p1(s, 'SFT'):.1f}%)" for s in seeds if p1(s, "SFT") > 0.85]
    closed = [
        f"{100 * d / (1 - p1(s, 'SFT')):.0f}%" if p1(s, "SFT") < 1 else "-" for d, s in zip(lifts, seeds)
    ]
    lines.append(
        f"{task}: GRPO lifts the hard split ({hard}) by ≥ 15 points in {hits} of {n} seeds "
        f"({', '.join(f'{100 * d:+.1f}' for d in lifts)}): {'met' if hits == n else 'NOT met'}"
        f"; of the cold start's headroom (100% - its pass@1) GRPO closed {', '.join(closed)}"
        + (
            f"; a +15 lift is impossible where the cold start is above 85%: seed {', '.join(capped)}"
            if capped
            else ""
        )
    )
    means = {a: mean_spread([p1(s, a) for s in seeds])[0] for a in ("GRPO", *arms)}
    ei, cold = demo.EXPERT_ITERATION, demo.COLD_START_SFT
    if ei in arms:
        wins = sum(p1(s, "GRPO") >= p1(s, ei) for s in seeds)
        lines.append(
            f"{task}: GRPO ≥ expert iteration on {hard} pass@1 in {wins} of {n} seeds (means "
            f"{100 * means['GRPO']:.1f}% vs {100 * means[ei]:.1f}%)"
        )
    if ei in arms and cold in arms:
        order = means["GRPO"] >= means[ei] > means[cold]
        lines.append(
            f"{task}: the expected order GRPO ≥ expert iteration > SFT on the cold-start set ({hard} means "
            f"{100 * means['GRPO']:.1f}% / {100 * means[ei]:.1f}% / {100 * means[cold]:.1f}%): "
            f"{'met' if order else 'NOT met'}"
        )
    misses = [
        f"{stage} {split} seed {s['seed']} (pass@1 {100 * m['pass@1']:.1f}%, maj@{k} {100 * m[f'maj@{k}']:.1f}%)"
        for s in seeds
        for stage, r in s["results"].items()
        for split, m in r.items()
        if m.get("pass@1", 0) > 0.05 and m.get(f"maj@{k}", 0) < m.get("pass@1", 0) - 1e-9
    ]
    lines.append(
        f"{task}: maj@{k} ≥ pass@1 wherever pass@1 > 5%: "
        + ("met" if not misses else f"NOT met in {len(misses)} cells: " + "; ".join(misses))
    )
    return lines


def budget_finding(task: str, budget_points: list[list[dict[str, Any]]], who: str = "") -> str:
    """Is the seeds' mean accuracy monotone (non-decreasing) in the thinking cap? One line, met / NOT met.
    budget_points: per seed, points {"mode": "cap" | "wait", "value", "accuracy"}."""
    caps = sorted({p["value"] for pts in budget_points for p in pts if p["mode"] == "cap"})
    acc = [mean_spread([p["accuracy"] for pts in budget_points for p in pts if p["mode"] == "cap" and p["value"] == c])[0] for c in caps]  # fmt: skip
    monotone = all(b >= a - 1e-9 for a, b in zip(acc, acc[1:]))
    return (
        f"{task}: budget-forcing accuracy{f' of {who}' if who else ''} monotone in the cap (mean over seeds, "
        f"caps {caps}): {'met' if monotone else 'NOT met'} ({', '.join(f'{100 * a:.1f}%' for a in acc)})"
    )


def write_study_report(config: Config, runs: dict[str, dict[int, dict[str, Any]]], elapsed_s: float) -> Path:
    """study.md / study.json: per task the mean ± spread tables over seeds, the checks, the equal-FLOPs
    table, the length-vs-compute and budget plots; the cost table sums every seed."""
    run_dir = Path(config.run_dir)
    sections: dict[str, str] = {}
    checks: list[str] = []
    stage_reports: list[StageReport] = []
    for task, by_seed in runs.items():
        seeds = [by_seed[s] for s in sorted(by_seed)]
        k, splits = seeds[0]["eval_k"], seeds[0]["splits"]
        stages = list(seeds[0]["results"])
        metric_names = [
            f"{sp} {m}" for sp in splits for m in (f"pass@1 (k={k})", f"maj@{k}", "mean thinking tokens")
        ]
        cells = {
            stage: {
                name: [split_metrics(s["results"][stage], k).get(name, float("nan")) for s in seeds]
                for name in metric_names
            }
            for stage in stages
        }
        checks += findings(task, seeds, list(config.arms))
        sections[f"{task}: held-out test split, mean ± sd over {len(seeds)} seed(s) (each seed's value)"] = (
            spread_table(cells, metric_names)
        )
        flops_rows = ["| stage | " + " | ".join(f"seed {s['seed']}" for s in seeds) + " |",
                      "|---|" + "---|" * len(seeds)]  # fmt: skip
        for stage in ("GRPO", *config.arms):
            flops_rows.append(
                f"| {stage} | "
                + " | ".join(format_number(s["costs"].get(stage, {}).get("flops") or 0.0) for s in seeds)
                + " |"
            )
        sections[f"{task}: equal compute (training FLOPs, sampling + updates)"] = "\n".join(flops_rows) + (
            "\n\nEvery arm starts from the seed's cold-start checkpoint "
            + ", ".join(f"(seed {s['seed']}: {s['sft_steps']} SFT steps)" for s in seeds)
            + " and stops at GRPO's FLOPs (at the step that would cross them)."
        )
        curves = {
            arm: [s["curves"].get(arm, []) for s in seeds]
            for arm in ("GRPO", demo.EXPERT_ITERATION)
            if arm in seeds[0]["curves"]
        }
        plot = plot_learning_curves(
            curves, run_dir / f"{task}_length_vs_compute.png", f"{task}: held-out (val) pass@1 and length"
        )
        body = [
            f"![{task} learning curves]({plot.name})",
            "",
            "GRPO and expert iteration are evaluated during training on the same held-out (val) problems "
            "(pass@1 over 4 samples, greedy length); the SFT arms are evaluated at their end only (table above).",
        ]
        budget_points = [s["budget"].get("points", []) for s in seeds if s["budget"].get("points")]
        if budget_points:
            bplot = plot_budget_seeds(
                budget_points, run_dir / f"{task}_budget.png", f"{task}: budget forcing (GRPO)"
            )
            body += ["", f"![{task} budget forcing]({bplot.name})"]
            checks.append(budget_finding(task, budget_points))
        sections[f"{task}: accuracy and completion length against compute"] = "\n".join(body)
        for stage in stages:
            costs = [s["costs"][stage] for s in seeds if stage in s["costs"]]
            means = {name: mean_spread(values)[0] for name, values in cells[stage].items()}
            stage_reports.append(
                StageReport(f"{task} {stage}", metrics=means, cost=summarize_costs(costs) if costs else {})
            )
    total_wall = sum(s["wall_s"] for by_seed in runs.values() for s in by_seed.values())
    scale = "**Quick smoke test: every stage shrunk, the numbers mean nothing.** " if config.quick else ""
    summary = (
        f"{scale}Tasks {', '.join(runs)}; seeds {config.first_seed}..{config.first_seed + config.seeds - 1}; "
        f"arms GRPO, {', '.join(config.arms)}; each seed one cold start, every arm from it at GRPO's FLOPs; "
        f"held-out test split, pass@1 over k samples (T 0.6, top-p 0.95) as R1 reports it. "
        f"Ran in {format_duration(elapsed_s)} ({format_duration(total_wall)} of seed runs) with "
        f"{config.threads or 'the default number of'} thread(s). Expert iteration is the fair control "
        "(GRPO's prompts and verifier only); the oracle SFT is a reference (a perfect teacher R1 did not have)."
    )
    sections = {"Checks": "\n".join(f"- {line}" for line in checks), **sections}
    path = write_report(run_dir / "study.md", "r1kit study: what RL adds", summary, stage_reports,
                        extra_sections=sections)  # fmt: skip
    data = json.loads(path.with_suffix(".json").read_text())  # write_report's title, summary and stages
    data.update(config=asdict(config), findings=checks, runs=runs, elapsed_s=elapsed_s)
    path.with_suffix(".json").write_text(json.dumps(data, indent=1, default=float))
    return path


def run(config: Config) -> StudyResult:
    """Every task x seed (`run_seed`), then the report (`write_study_report`). Returns a `StudyResult`."""
    console = Console()
    set_threads(config.threads)
    t0 = time.perf_counter()
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    seeds = range(config.first_seed, config.first_seed + config.seeds)
    for task in config.tasks:
        for seed in seeds:
            stage_header(
                f"r1kit study: {task}, seed {seed}", f"arms: GRPO, {', '.join(config.arms)}", console
            )
            done = Path(config.run_dir) / task / f"seed{seed}" / "study_seed.json"
            if config.reuse and done.is_file():
                console.print(f"[dim]reusing {done} (--reuse true)")
                runs.setdefault(task, {})[seed] = json.loads(done.read_text())
            else:
                runs.setdefault(task, {})[seed] = run_seed(config, task, seed, console)
            # a report after every seed: a long study can be read (or stopped) part-way
            report = write_study_report(config, runs, time.perf_counter() - t0)
    stage_header("study done", f"report: {report}", console)
    console.print(report.read_text().split("\n## ")[0])
    return StudyResult(report=report, runs=runs, elapsed_s=time.perf_counter() - t0)


__all__ = ["Config", "STUDY_TASKS", "StudyResult", "budget_finding", "findings", "run", "run_seed",
           "write_study_report"]  # fmt: skip
