"""The report card of a run: one markdown page with a summary, metric × stage tables, cost and plots.

In the spirit of nanochat's former report.py: each stage contributes a `StageReport` (its metrics,
its cost summary from `r1kit.train.cost`, its plots), and `write_report` renders them into
`report.md`: a one-paragraph summary first, then the evaluation table (metric × stage), the cost
table (wall time, tokens, FLOPs, MFU, device-hours, dollars, as DeepSeek reported theirs), the
plots, and any notes — including targets that were missed, stated plainly.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


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
