"""`r1kit demo --quick`: the whole recipe runs and writes a complete report card (CI's smoke test).

The quick preset's numbers mean nothing (every stage is shrunk); these tests check the pipeline: every
stage ran, the report's tables have a value in every cell, the plots exist, and no evaluation problem
was ever trained on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tomllib


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from r1kit import demo

    run_dir = tmp_path_factory.mktemp("demo") / "quick"
    result = demo.run(demo.Config(run_dir=str(run_dir), quick=True, progress=False))
    return run_dir, result


def _table(markdown: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first table under `## heading`."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [
        [c.strip() for c in row.strip("|").split("|")] for row in rows if not re.match(r"^\|[-| ]+\|$", row)
    ]


def test_report_tables_are_complete(quick_run):
    run_dir, result = quick_run
    report = (run_dir / "report.md").read_text()
    assert result.report == run_dir / "report.md" and result.run_dir == run_dir
    # a RunResult: every evaluation number of demo.json under "{stage}/{split}/{metric}", the total cost
    demo_json = json.loads((run_dir / "demo.json").read_text())
    assert result.metrics["GRPO/4-digit/pass@1"] == demo_json["results"]["GRPO"]["4-digit"]["pass@1"]
    assert len(result.metrics) == sum(len(m) for r in demo_json["results"].values() for m in r.values())
    assert result.cost["wall_s"] > 0 and result.results == demo_json["results"]
    assert report.startswith("# r1kit demo")
    assert "Quick smoke test" in report  # the summary says plainly that these numbers mean nothing
    evaluation = _table(report, "Evaluation (held-out problems)")
    header, rows = evaluation[0], evaluation[1:]
    assert header[1:] == ["SFT", "GRPO", "SFT control", "student"]
    names = [row[0] for row in rows]
    for split in ("4-digit", "5-digit"):
        for metric in ("greedy accuracy", "pass@1 (k=4)", "maj@4", "pass@4", "mean thinking tokens"):
            assert f"{split} {metric}" in names
    for row in rows:
        assert all(cell not in ("", "–") for cell in row[1:]), row
    cost = _table(report, "Cost")
    stages = [row[0] for row in cost[1:]]
    for stage in (
        "tokenizer",
        "pretrain",
        "SFT",
        "GRPO",
        "SFT control",
        "rejection sampling",
        "student pretrain",
        "student",
        "evaluation",
    ):
        assert stage in stages
    assert any("total" in s.lower() for s in stages)
    assert "## Targets" in report and "pass@1 by ≥ 15 points" in report


def test_plots_and_artifacts_exist(quick_run):
    run_dir, _ = quick_run
    report = (run_dir / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) >= 5
    for image in images:
        assert (run_dir / image).is_file(), image
    for stage in ("pretrain", "sft", "grpo", "sft_control", "student_pretrain", "student"):
        assert (run_dir / stage / "metrics.jsonl").is_file(), stage
    # the student is distilled into its pretrained base, not a random init
    student_init = tomllib.loads((run_dir / "student" / "config.toml").read_text())["model"]["init"]
    assert Path(student_init) == run_dir / "student_pretrain" / "model"
    data = json.loads((run_dir / "report.json").read_text())
    assert [s["name"] for s in data["stages"]][:3] == ["tokenizer", "pretrain", "SFT"]


def test_evaluation_problems_never_trained_on(quick_run):
    run_dir, _ = quick_run
    trained = set()
    for name in ("sft.jsonl", "traces.jsonl"):
        for line in (run_dir / "data" / name).read_text().splitlines():
            trained.add(json.loads(line)["messages"][0]["content"])
    for line in (run_dir / "data" / "pretrain.jsonl").read_text().splitlines():
        trained.add(json.loads(line)["text"].split("\n")[0])
    evaluated = set()
    for path in (run_dir / "eval").rglob("records_*.jsonl"):  # r1kit eval's records, one run per model
        for line in path.read_text().splitlines():
            rendered = json.loads(line)["prompt"]  # the chat-templated prompt; the problem is "a+b"
            evaluated.add(re.search(r"\d+\+\d+", rendered).group(0))
    assert evaluated, "no per-problem evaluation records"
    assert not evaluated & trained
