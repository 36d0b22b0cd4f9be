"""The report card of a run: one markdown page with a summary, metric × stage tables, cost and plots.

In the spirit of nanochat's former report.py: each stage contributes a `StageReport` (its metrics,
its cost summary from `r1kit.train.cost`, its plots), and `write_report` renders them into
`report.md`: a one-paragraph summary first, then the evaluation table (metric × stage), the cost
table (wall time, tokens, FLOPs, MFU, device-hours, dollars, as DeepSeek reported theirs), the
plots, and any notes — including targets that were missed, stated plainly.

Also here: the plots of `r1kit eval` (`plot_scaling`: accuracy vs k; `plot_budget`: budget forcing)
and the demo's report card (`write_demo_report`, `build_summary`, `plot_stage_accuracy`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from r1kit.train.log import save_figure


@dataclass
class StageReport:
    """What one stage of a run reports.

    Attributes:
        name: stage name as shown in the tables ("SFT", "GRPO", ...).
        metrics: evaluation metrics of the stage's model, e.g. {"4-digit pass@1": 0.42}; values in [0, 1]
            are shown as percentages, others as numbers.
        cost: the stage's cost summary (keys of `r1kit.train.cost.CostMeter.summary()`: tokens, flops,
            wall_s, device_hours, dollars, mfu); missing keys show as "–".
        plots: PNG paths (absolute or relative to the report) to embed under the stage.
        notes: free-text lines shown under the stage heading.
    """

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def format_number(value: float | int | None) -> str:
    """Format a count or FLOP figure compactly: 1234 -> '1.23k', 3.2e15 -> '3.20P'."""
    if value is None:
        return "–"
    value = float(value)
    for threshold, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.2f}{suffix}"
    return f"{value:.0f}" if value == int(value) else f"{value:.3g}"


def format_metric(name: str, value: float | None) -> str:
    """Show accuracy-like metrics (0..1) as percentages and lengths as plain numbers."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if "len" in name.lower() or "tokens" in name.lower() or not 0.0 <= value <= 1.0:
        return f"{value:.1f}"
    return f"{100 * value:.1f}%"


def metrics_table(stages: list[StageReport]) -> str:
    """Markdown table with one row per metric and one column per stage that has metrics ('–' where a
    stage lacks one of them)."""
    stages = [s for s in stages if s.metrics]
    names: list[str] = []
    for stage in stages:
        names.extend(k for k in stage.metrics if k not in names)
    if not names:
        return "_no evaluation metrics_"
    head = "| metric | " + " | ".join(s.name for s in stages) + " |"
    rule = "|---|" + "---|" * len(stages)
    rows = [
        f"| {name} | " + " | ".join(format_metric(name, s.metrics.get(name)) for s in stages) + " |"
        for name in names
    ]
    return "\n".join([head, rule, *rows])


def cost_table(stages: list[StageReport], currency: str = "$") -> str:
    """Markdown table of per-stage cost with a total row."""
    head = "| stage | wall time | tokens | FLOPs | MFU | device-hours | cost |"
    rule = "|---|---|---|---|---|---|---|"
    rows = []
    totals = {"wall_s": 0.0, "tokens": 0.0, "flops": 0.0, "device_hours": 0.0, "dollars": 0.0}
    for s in stages:
        c = s.cost
        if not c:
            continue
        for key in totals:
            totals[key] += float(c.get(key) or 0.0)
        rows.append(_cost_row(s.name, c, currency))
    if not rows:
        return "_no cost recorded_"
    wall = totals["wall_s"]
    totals["mfu"] = None
    # MFU of the whole run: achieved FLOP/s over the FLOP-weighted peak is not meaningful across
    # devices, so the total row reports it only when every stage ran on the same peak.
    peaks = {s.cost.get("peak_flops") for s in stages if s.cost}
    if len(peaks) == 1 and None not in peaks and wall > 0:
        totals["mfu"] = totals["flops"] / wall / float(peaks.pop())
    rows.append(_cost_row("**total**", totals, currency))
    return "\n".join([head, rule, *rows])


def _cost_row(name: str, c: dict, currency: str) -> str:
    mfu = c.get("mfu")
    return (
        f"| {name} | {_duration(c.get('wall_s'))} | {format_number(c.get('tokens'))} | "
        f"{format_number(c.get('flops'))} | {'–' if mfu is None else f'{100 * mfu:.1f}%'} | "
        f"{float(c.get('device_hours') or 0):.4f} | {currency}{float(c.get('dollars') or 0):.4f} |"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def write_report(
    path: str | os.PathLike,
    title: str,
    summary: str,
    stages: list[StageReport],
    *,
    extra_sections: dict[str, str] | None = None,
    currency: str = "$",
) -> Path:
    """Write the report card to `path` (markdown) and its data to `path` with `.json`.

    Args:
        path: where report.md goes; plots are linked relative to its folder when possible.
        title: the page title.
        summary: the opening paragraph (what ran, the headline result, missed targets stated plainly).
        stages: stage reports in pipeline order.
        extra_sections: heading -> markdown body, appended after the tables (e.g. "Honest control").
    Returns:
        The path of the written markdown file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", summary.strip(), "", "## Evaluation (held-out problems)", ""]
    parts += [metrics_table(stages), "", "## Cost", "", cost_table(stages, currency), ""]
    for heading, body in (extra_sections or {}).items():
        parts += [f"## {heading}", "", body.strip(), ""]
    for stage in stages:
        if not (stage.plots or stage.notes):
            continue
        parts += [f"## {stage.name}", ""]
        parts += [f"- {line}" for line in stage.notes]
        if stage.notes:
            parts.append("")
        for plot in stage.plots:
            parts += [f"![{stage.name}]({_relative(plot, path.parent)})", ""]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, path)
    data = {"title": title, "summary": summary, "stages": [asdict(s) for s in stages]}
    path.with_suffix(".json").write_text(json.dumps(data, indent=2, default=float))
    return path


def _relative(plot: str, folder: Path) -> str:
    try:
        return str(Path(plot).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(plot)


# ----------------------------------------------------------------------------------------------
# plots of `r1kit eval` (test-time scaling, budget forcing)


def plot_scaling(curves: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """PNG of accuracy against k: pass@k, maj@k and each best-of-k curve (log2 x axis)."""
    from matplotlib.figure import Figure  # Agg canvas, imported only when plotting

    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    ks = curves.get("k", [])
    for i, (name, ys) in enumerate((n, v) for n, v in curves.items() if n != "k"):
        label = name.replace("best_of/", "best-of-k ") if name.startswith("best_of/") else name
        ax.plot(ks, ys, marker="o", label=label, color=f"C{i}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(int(k)) for k in ks])
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "test-time scaling: accuracy vs k")
    return save_figure(fig, path)


def plot_budget(points: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """PNG of budget forcing: accuracy against the thinking cap, and against the number of "Wait"
    extensions (mean thinking tokens on a second axis)."""
    from matplotlib.figure import Figure

    modes = [m for m in ("cap", "wait") if any(p["mode"] == m for p in points)]
    if not modes:
        raise ValueError("plot_budget: no points")
    fig = Figure(figsize=(4.8 * len(modes), 3.6), layout="constrained")
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        pts = [p for p in points if p["mode"] == mode]
        xs = [p["value"] for p in pts]
        ax.plot(xs, [p["accuracy"] for p in pts], marker="o", color="C0", label="accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("accuracy")
        ax.set_xlabel("thinking cap (tokens)" if mode == "cap" else 'number of "Wait" extensions')
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        twin.plot(xs, [p["think_tokens"] for p in pts], marker="s", color="C1", alpha=0.7, label="thinking")
        twin.set_ylabel("mean thinking tokens", color="C1")
        ax.set_title("cap (force </think>)" if mode == "cap" else "extend (suppress </think>)")
    return save_figure(fig, path, title)


# ----------------------------------------------------------------------------------------------
# the demo's report card (`r1kit demo`)


def stage_plots(path: Path, names: tuple[str, ...]) -> list[str]:
    """The files `names` of the stage directory `path` that exist, as strings (plots to embed)."""
    return [str(path / n) for n in names if (path / n).is_file()]


def plot_stage_accuracy(results: dict[str, dict[str, Any]], path: Path, metric: str = "pass@1") -> Path:
    """Bar chart of one metric per stage and split (what a reader looks at first)."""
    from matplotlib.figure import Figure

    stages = list(results)
    splits = sorted({s for r in results.values() for s in r})
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(splits))
    for j, split in enumerate(splits):
        ys = [100 * results[s].get(split, {}).get(metric, 0.0) for s in stages]
        xs = [i + (j - (len(splits) - 1) / 2) * width for i in range(len(stages))]
        bars = ax.bar(xs, ys, width, label=split, color=f"C{j}")
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(stages)), stages)
    ax.set_ylabel(f"held-out {metric} (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title(f"held-out {metric} by stage")
    return save_figure(fig, path)


def split_metrics(results: dict[str, Any], k: int) -> dict[str, float]:
    """The report's rows of one stage: split -> metrics into "{split} greedy accuracy", "{split} pass@1
    (k=K)", "{split} maj@K", "{split} pass@K" and "{split} mean thinking tokens"."""
    out: dict[str, float] = {}
    for split, m in results.items():
        out[f"{split} greedy accuracy"] = m.get("greedy_acc", float("nan"))
        out[f"{split} pass@1 (k={k})"] = m.get("pass@1", float("nan"))
        out[f"{split} maj@{k}"] = m.get(f"maj@{k}", float("nan"))
        out[f"{split} pass@{k}"] = m.get(f"pass@{k}", float("nan"))
        out[f"{split} mean thinking tokens"] = m.get("think_tokens", float("nan"))
    return out


def _points(a: float, b: float) -> str:
    return f"{100 * (b - a):+.1f} points"


FAIR_CONTROL, ORACLE_REFERENCE = "expert iteration", "oracle SFT"
"""The demo's fair control of GRPO (the same prompts, verifier, checkpoint and FLOPs) and its oracle
reference (gold worked solutions of the RL prompts); `r1kit.demo` names its arms with these."""


def build_summary(
    recipe: Any,
    results: dict[str, dict[str, Any]],
    facts: dict[str, Any],
    quick: bool,
) -> tuple[str, list[str]]:
    """The opening paragraph and the list of targets (met or not), from the measured numbers: GRPO
    against the fair control (expert iteration), with the oracle shown as a reference only."""
    hard = list(recipe.eval_splits)[-1]
    k = recipe.eval_k
    sft, rl, fair, oracle, student = (
        results.get(n, {}) for n in ("SFT", "GRPO", FAIR_CONTROL, ORACLE_REFERENCE, "student")
    )

    def p1(r: dict[str, Any], split: str = hard) -> float:
        return r.get(split, {}).get("pass@1", float("nan"))

    gains = {split: p1(rl, split) - p1(sft, split) for split in recipe.eval_splits}
    targets = []
    for split, gain in gains.items():
        ok = gain >= 0.15
        targets.append(
            f"GRPO lifts held-out {split} pass@1 by ≥ 15 points: {'met' if ok else 'NOT met'} "
            f"({100 * p1(sft, split):.1f}% → {100 * p1(rl, split):.1f}%, {_points(p1(sft, split), p1(rl, split))})"
        )
    maj_ok = all(
        r.get(s, {}).get(f"maj@{k}", 0) >= r.get(s, {}).get("pass@1", 0) - 1e-9
        for r in results.values()
        for s in recipe.eval_splits
    )
    targets.append(f"maj@{k} ≥ pass@1 for every stage and split: {'met' if maj_ok else 'NOT met'}")
    splits = list(recipe.eval_splits)

    def versus(a: dict[str, Any], b: dict[str, Any]) -> str:
        return ", ".join(f"{sp} pass@1 {100 * p1(a, sp):.1f}% vs {100 * p1(b, sp):.1f}%" for sp in splits)

    beat_fair = all(p1(rl, sp) >= p1(fair, sp) for sp in splits)
    targets.append(
        f"GRPO ≥ expert iteration (the fair control: same prompts, verifier, checkpoint and FLOPs) on every "
        f"split ({versus(rl, fair)}): {'yes' if beat_fair else 'NO'}"
    )
    ratio = facts.get("student_active_ratio", float("nan"))
    reach = all(p1(student, sp) >= p1(rl, sp) - 0.15 for sp in splits)
    targets.append(
        f"student within 15 points of its teacher on every split at {100 * ratio:.0f}% of the teacher's "
        f"active parameters ({versus(student, rl)}): {'met' if reach else 'NOT met'}"
    )
    sft_note = (
        f"stopped at step {facts.get('sft_steps')} when {recipe.validation_digits}-digit greedy "
        f"validation accuracy reached "
        f"{100 * facts.get('sft_val', 0):.0f}% (target {100 * recipe.val_target:.0f}%)"
        if facts.get("sft_stopped_early")
        else f"did NOT reach the {100 * recipe.val_target:.0f}% validation target in {facts.get('sft_steps')} steps"
    )

    def across(r: dict[str, Any]) -> str:
        return " and ".join(f"{100 * p1(r, sp):.1f}% ({sp})" for sp in splits)

    moves = "; ".join(
        f"{sp} {100 * p1(sft, sp):.1f}% → {100 * p1(rl, sp):.1f}% ({_points(p1(sft, sp), p1(rl, sp))})"
        for sp in splits
    )
    fair_beats = [sp for sp in splits if p1(fair, sp) > p1(rl, sp)]
    verdict = (
        "GRPO matched or beat it on every split"
        if not fair_beats
        else f"**expert iteration beat GRPO on {', '.join(fair_beats)}**"
    )
    oracle_note = (
        f" The oracle reference (gold worked solutions of the RL prompts: a perfect teacher R1 did not have, "
        f"so not a fair control) reached {across(oracle)}."
        if oracle
        else ""
    )
    summary = (
        f"{'**Quick smoke test: every stage shrunk, the numbers mean nothing.** ' if quick else ''}"
        f"A {facts['teacher_params']} DeepSeek-V3-style model (MLA, DeepSeekMoE with {facts['experts']} routed "
        f"experts and aux-loss-free balancing, MTP; {facts['teacher_active']} active per token) learned "
        f"column-by-column addition on {facts['device']} in {facts['total_time']} "
        f"({facts['total_flops']} FLOPs, {facts['total_dollars']}). The cold-start SFT {sft_note}. "
        f"GRPO (accuracy + format rewards, {facts.get('grpo_steps')} steps of {recipe.grpo_prompts}×{recipe.grpo_group} "
        f"rollouts on {recipe.rl_digits[0]}–{recipe.rl_digits[1]} digit problems) moved held-out pass@1: {moves}. "
        f"Expert iteration, the fair control (GRPO's prompts in GRPO's order and its verifier, from the same "
        f"checkpoint at the same FLOPs: sample, keep the verified, fine-tune, repeat), reached {across(fair)}; "
        f"{verdict}.{oracle_note} "
        f"A dense student with {100 * ratio:.0f}% of the teacher's active parameters"
        + (", pretrained on the same corpus and" if recipe.student_pretrain_steps else ",")
        + f" trained on {facts.get('traces')} verified traces from the RL model, reached {across(student)}. "
        f"All evaluation problems come from a held-out split with a different seed."
    )
    return summary, targets


def write_demo_report(
    recipe: Any,
    quick: bool,
    run_dir: Path,
    results: dict[str, dict[str, Any]],
    extras: dict[str, Any],
    costs: dict[str, dict[str, Any]],
    notes: dict[str, list[str]],
    facts: dict[str, Any],
    plots: dict[str, list[str]],
    arms: Sequence[str] = (FAIR_CONTROL, ORACLE_REFERENCE),
) -> Path:
    """Write the demo's report.md / report.json (`write_report`): the summary and targets
    (`build_summary`), one `StageReport` per stage that ran (its metrics, cost, plots and notes), the
    evaluation and other costs, totals, the budget-forcing table and how to chat with the result.

    Args:
        recipe: the demo's recipe (`r1kit.demo.Recipe`); quick: whether it was the smoke-test preset.
        results: stage -> split -> evaluation metrics; extras: the RL model's {"budget", ...}.
        costs, notes: stage -> cost summary / note lines ("eval {stage}" costs are summed as "evaluation").
        facts: the numbers the summary quotes (see `r1kit.demo`); plots: stage title -> PNG paths,
            and "summary" -> the accuracy-by-stage bar chart.
        arms: GRPO's controls that ran (stage names in `results` and `costs`), in report order.
    """
    from r1kit.train.cost import summarize_costs

    k = recipe.eval_k
    summary, targets = build_summary(recipe, results, facts, quick)
    order = [
        ("tokenizer", "tokenizer", None),
        ("pretrain", "pretrain", None),
        ("SFT", "SFT", "SFT"),
        ("GRPO", "GRPO", "GRPO"),
        *((arm, arm, arm) for arm in arms),
        ("rejection sampling", "rejection sampling", None),
        ("student pretrain", "student pretrain", None),
        ("student", "student", "student"),
    ]
    reports = []
    for title, cost_key, eval_key in order:
        metrics = split_metrics(results[eval_key], k) if eval_key and eval_key in results else {}
        if cost_key not in costs and not metrics:
            continue  # a stage this recipe skipped
        reports.append(
            StageReport(
                title,
                metrics=metrics,
                cost=costs.get(cost_key, {}),
                plots=plots.get(title, []),
                notes=notes.get(cost_key, []),
            )
        )
    eval_costs = {key: c for key, c in costs.items() if key.startswith("eval ")}
    reports.append(StageReport("evaluation", cost=summarize_costs(eval_costs) if eval_costs else {}))
    if "other" in costs:
        reports.append(StageReport("other (data, tokenizing, loading, saving)", cost=costs["other"]))
    total = summarize_costs([c for c in costs.values() if c.get("wall_s")])
    budget = extras.get("budget", {})
    budget_rows = ["| mode | value | accuracy | mean thinking tokens |", "|---|---|---|---|"]
    for p in budget.get("points", []):
        budget_rows.append(
            f"| {p['mode']} | {p['value']} | {100 * p['accuracy']:.1f}% | {p['think_tokens']:.1f} |"
        )
    extra = {
        "Targets": "\n".join(f"- {t}" for t in targets),
        "Totals": (
            f"{total['wall_s'] / 60:.1f} min wall clock, {total['tokens'] / 1e6:.2f}M tokens, "
            f"{total['flops'] / 1e12:.2f} TFLOPs, MFU {100 * total['mfu']:.1f}%, "
            f"{total['device_hours']:.4f} device-hours, ${total['dollars']:.4f} on {facts['device']}."
        ),
        "Held-out accuracy by stage": f"![pass@1 by stage]({Path(plots['summary'][0]).name})",
        f"Budget forcing ({budget.get('split', '')}, GRPO model, greedy)": "\n".join(budget_rows)
        + (
            "\n\nThe chain of thought here has a fixed length (one step per column): a cap below it cuts "
            'the answer off, and a forced "Wait" (never seen in training) derails the model. Thinking '
            "longer pays only on tasks where longer reasoning helps."
        ),
        "Chat with the result": (
            f"```\nr1kit serve --model {facts['rl_dir']}     # OpenAI-compatible API + web chat on 127.0.0.1:8000\n"
            f"r1kit chat --model {facts['rl_dir']}      # in the terminal\n```"
        ),
    }
    return write_report(
        run_dir / "report.md",
        "r1kit demo: the DeepSeek-R1 recipe on a laptop",
        summary,
        reports,
        extra_sections=extra,
    )


# ----------------------------------------------------------------------------------------------
# the study's report (`r1kit study`): several seeds of the same arms


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of the finite values; the spread is 0 for one value, NaN for none."""
    xs = [float(v) for v in values if v == v]
    if not xs:
        return float("nan"), float("nan")
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, 0.0
    return mean, (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


def spread_table(cells: dict[str, dict[str, Sequence[float]]], columns: Sequence[str]) -> str:
    """Markdown table: one row per stage, one column per metric, each cell "mean ± sd (n)" over seeds with
    the seeds' values after it, e.g. "41.2% ± 3.1 (38.0, 44.3)"; accuracy-like metrics as percentages."""
    head = "| stage | " + " | ".join(columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    rows = []
    for stage, by_metric in cells.items():
        out = []
        for col in columns:
            values = list(by_metric.get(col, []))
            mean, sd = mean_spread(values)
            if mean != mean:
                out.append("–")
                continue
            pct = format_metric(col, mean).endswith("%")
            scale = 100 if pct else 1
            each = ", ".join(f"{scale * v:.1f}" for v in values)
            out.append(f"{format_metric(col, mean)} ± {scale * sd:.1f} ({each})")
        rows.append(f"| {stage} | " + " | ".join(out) + " |")
    return "\n".join([head, rule, *rows])


def plot_learning_curves(
    curves: dict[str, list[list[dict[str, float]]]], path: str | Path, title: str = ""
) -> Path:
    """R1-Zero's plot against compute: held-out accuracy and mean completion length against training FLOPs,
    one line per arm and seed (`curves`: arm -> seeds -> points {"flops", "accuracy", "length"})."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_acc, ax_len = fig.subplots(1, 2)
    for i, (arm, seeds) in enumerate(curves.items()):
        for j, points in enumerate(seeds):
            if not points:
                continue
            xs = [p["flops"] / 1e12 for p in points]
            label = arm if j == 0 else None
            ax_acc.plot(xs, [p["accuracy"] for p in points], marker="o", ms=3, color=f"C{i}", label=label)
            ax_len.plot(xs, [p["length"] for p in points], marker="o", ms=3, color=f"C{i}", label=label)
    ax_acc.set_ylabel("held-out pass@1")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_len.set_ylabel("mean completion length (tokens)")
    for ax in (ax_acc, ax_len):
        ax.set_xlabel("training FLOPs (TFLOPs: sampling + updates)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, title or "held-out accuracy and completion length against compute")


def plot_budget_seeds(
    points_by_seed: Sequence[Sequence[dict[str, Any]]], path: str | Path, title: str = ""
) -> Path:
    """Budget forcing over seeds: accuracy against the thinking cap and the "Wait" count, one line per seed
    and the mean (the points of `r1kit eval`'s budget curve, as `plot_budget` takes them)."""
    from matplotlib.figure import Figure

    modes = [m for m in ("cap", "wait") if any(p["mode"] == m for pts in points_by_seed for p in pts)]
    if not modes:
        raise ValueError("plot_budget_seeds: no points")
    fig = Figure(figsize=(4.8 * len(modes), 3.6), layout="constrained")
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        by_value: dict[float, list[float]] = {}
        for j, pts in enumerate(points_by_seed):
            pts = [p for p in pts if p["mode"] == mode]
            ax.plot([p["value"] for p in pts], [p["accuracy"] for p in pts], color="C0", alpha=0.35, lw=1,
                    label="a seed" if j == 0 else None)  # fmt: skip
            for p in pts:
                by_value.setdefault(p["value"], []).append(p["accuracy"])
        xs = sorted(by_value)
        ax.plot(xs, [mean_spread(by_value[x])[0] for x in xs], marker="o", color="C0", lw=2, label="mean")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("accuracy")
        ax.set_xlabel("thinking cap (tokens)" if mode == "cap" else 'number of "Wait" extensions')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, title or "budget forcing (GRPO model, greedy)")
