"""The report card renders every stage, every metric and a cost total."""

import json
import math

from r1kit.report import StageReport, cost_table, format_metric, format_number, metrics_table, write_report


def test_format_helpers():
    assert format_number(1234) == "1.23k"
    assert format_number(3.2e15) == "3.20P"
    assert format_metric("pass@1", 0.425) == "42.5%"
    assert format_metric("thinking length", 37.0) == "37.0"
    assert format_metric("pass@1", None) == "–"


def test_metrics_table_has_every_metric_and_stage():
    stages = [
        StageReport("SFT", {"pass@1": 0.1, "maj@8": 0.2}),
        StageReport("GRPO", {"pass@1": 0.4, "thinking length": 30.0}),
    ]
    table = metrics_table(stages)
    lines = table.splitlines()
    assert lines[0] == "| metric | SFT | GRPO |"
    assert len(lines) == 2 + 3  # header, rule, three metrics
    assert "| maj@8 | 20.0% | – |" in table
    assert "| thinking length | – | 30.0 |" in table


def test_cost_table_totals():
    cost = {"wall_s": 60.0, "tokens": 1000, "flops": 6e12, "device_hours": 0.5, "dollars": 1.0, "mfu": 0.2}
    table = cost_table([StageReport("a", cost=cost), StageReport("b", cost=cost)])
    total = table.splitlines()[-1]
    assert total.startswith("| **total** | 2.0 min | 2.00k | 12.00T |")
    assert "1.0000" in total and "$2.0000" in total


def test_write_report(tmp_path):
    plot = tmp_path / "curve.png"
    plot.write_bytes(b"png")
    out = write_report(
        tmp_path / "report.md",
        "Demo",
        "It ran.",
        [StageReport("SFT", {"pass@1": 0.5}, plots=[str(plot)], notes=["stopped at 30% greedy"])],
        extra_sections={"Honest control": "More SFT got 40%."},
    )
    text = out.read_text()
    assert text.startswith("# Demo\n\nIt ran.")
    assert "![SFT](curve.png)" in text and "## Honest control" in text
    assert json.loads(out.with_suffix(".json").read_text())["stages"][0]["metrics"]["pass@1"] == 0.5


def _stage(p4: float, p5: float, maj4: float | None = None) -> dict:
    return {
        "4-digit": {"pass@1": p4, "maj@8": p4 if maj4 is None else maj4, "pass@8": 1.0, "greedy_acc": 0.5},
        "5-digit": {"pass@1": p5, "maj@8": p5, "pass@8": 1.0, "greedy_acc": 0.25, "think_tokens": 45.0},
    }


def test_demo_summary_states_each_target_from_the_numbers():
    from r1kit.demo import Recipe
    from r1kit.report import FAIR_CONTROL, ORACLE_REFERENCE, build_summary, split_metrics

    results = {
        "SFT": _stage(0.20, 0.02),
        "GRPO": _stage(0.90, 0.10, maj4=0.85),  # maj@8 below pass@1: that target is missed
        FAIR_CONTROL: _stage(0.80, 0.70),
        ORACLE_REFERENCE: _stage(0.85, 0.75),
        "student": _stage(0.95, 0.05),
    }
    facts = {
        "teacher_params": "1M-parameter", "experts": 8, "teacher_active": "400k", "device": "a CPU",
        "total_time": "1m", "total_flops": "1T", "total_dollars": "$0", "student_active_ratio": 0.44,
        "sft_steps": 10, "sft_val": 0.3, "sft_stopped_early": True, "grpo_steps": 5, "traces": 7,
    }  # fmt: skip
    summary, targets = build_summary(Recipe(), results, facts, quick=False)
    assert (
        targets[0] == "GRPO lifts held-out 4-digit pass@1 by ≥ 15 points: met (20.0% → 90.0%, +70.0 points)"
    )
    assert targets[1].startswith("GRPO lifts held-out 5-digit pass@1 by ≥ 15 points: NOT met (2.0% → 10.0%")
    assert targets[2] == "maj@8 ≥ pass@1 for every stage and split: NOT met"
    assert targets[3].endswith(": NO")  # expert iteration wins 5-digit (70% vs 10%)
    assert targets[4].endswith(": met")  # student 95% / 5% vs teacher 90% / 10%: within 15 points
    assert "**expert iteration beat GRPO on 5-digit**" in summary and "Quick smoke test" not in summary
    assert "oracle reference" in summary and "85.0% (4-digit) and 75.0% (5-digit)" in summary
    assert "trained on 7 verified traces" in summary
    rows = split_metrics(results["GRPO"], 8)
    assert rows["4-digit pass@1 (k=8)"] == 0.9 and rows["4-digit maj@8"] == 0.85
    assert rows["5-digit mean thinking tokens"] == 45.0
    assert math.isnan(rows["4-digit mean thinking tokens"])  # a missing metric shows as "–", not 0
