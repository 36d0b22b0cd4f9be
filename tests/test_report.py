"""The report card renders every stage, every metric and a cost total."""

import json

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
