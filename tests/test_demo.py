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
    assert header[1:] == ["SFT", "GRPO", "expert iteration", "oracle SFT", "student"]
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
        "expert iteration",
        "oracle SFT",
        "rejection sampling",
        "student pretrain",
        "student",
        "evaluation",
    ):
        assert stage in stages
    assert any("total" in s.lower() for s in stages)
    assert "## Targets" in report and "pass@1 by ≥ 15 points" in report
    # the fair control and the reference are named as such
    assert "the fair control" in report and "oracle reference" in report and "not a fair control" in report


def test_controls_spend_grpos_flops_from_the_same_checkpoint(quick_run):
    run_dir, _ = quick_run
    demo_json = json.loads((run_dir / "demo.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    flops = {s["name"]: s["cost"].get("flops", 0.0) for s in report["stages"]}
    assert 0 < flops["expert iteration"] <= flops["GRPO"] and 0 < flops["oracle SFT"] <= flops["GRPO"]
    ei = json.loads((run_dir / "expert_iteration" / "summary.json").read_text())
    assert ei["metrics"]["rounds"] >= 1 and ei["config"]["model"]["path"] == str(run_dir / "sft" / "model")
    oracle_init = tomllib.loads((run_dir / "sft_oracle" / "config.toml").read_text())["model"]["init"]
    assert Path(oracle_init) == run_dir / "sft" / "model"
    # expert iteration's prompts are GRPO's prompt stream, in order: round 0 begins where GRPO's step 1 began
    grpo_cfg = tomllib.loads((run_dir / "grpo" / "config.toml").read_text())
    assert (
        ei["config"]["data"] == grpo_cfg["data"]
        and ei["config"]["train"]["seed"] == grpo_cfg["train"]["seed"]
    )
    assert demo_json["facts"]["rl_dir"]


def test_plots_and_artifacts_exist(quick_run):
    run_dir, _ = quick_run
    report = (run_dir / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) >= 5
    for image in images:
        assert (run_dir / image).is_file(), image
    for stage in ("pretrain", "sft", "grpo", "expert_iteration", "sft_oracle", "student_pretrain", "student"):
        assert (run_dir / stage / "metrics.jsonl").is_file(), stage
    # the student is distilled into its pretrained base, not a random init
    student_init = tomllib.loads((run_dir / "student" / "config.toml").read_text())["model"]["init"]
    assert Path(student_init) == run_dir / "student_pretrain" / "model"
    data = json.loads((run_dir / "report.json").read_text())
    assert [s["name"] for s in data["stages"]][:3] == ["tokenizer", "pretrain", "SFT"]


def test_evaluation_problems_never_trained_on(quick_run):
    run_dir, _ = quick_run
    trained = set()
    files = [run_dir / "data" / n for n in ("sft.jsonl", "traces.jsonl", "sft_oracle.jsonl")]
    files += sorted((run_dir / "expert_iteration").glob("round_*/traces.jsonl"))
    for path in files:
        for line in path.read_text().splitlines():
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


def test_the_cold_start_set_is_what_the_cold_start_read(tmp_path):
    from r1kit import demo
    from r1kit.train.data import BatchStream

    lines = [json.dumps({"messages": [{"role": "user", "content": f"{i}+1"}]}) for i in range(10)]
    chats = tmp_path / "sft.jsonl"
    chats.write_text("\n".join(lines) + "\n")
    recipe, config = demo.Recipe(sft_batch=4), demo.Config(seed=5)
    two = demo.cold_start_set(recipe, config, chats, 2)
    stream = BatchStream(list(range(10)), 4, seed=5)  # what SFT's loop draws: [train] batch and seed
    assert two == [lines[i] for i in stream.next_global_indices() + stream.next_global_indices()]
    assert len(set(two)) == 8
    # past one epoch it is the whole file, each conversation once
    assert sorted(demo.cold_start_set(recipe, config, chats, 3)) == sorted(lines)


def test_oracle_conversations_solve_grpos_prompts_in_order():
    from r1kit import demo
    from r1kit.rl.rollout import PromptStream
    from r1kit.tasks import get_task

    recipe, config = demo.Recipe(grpo_train_problems=50), demo.Config(seed=2)
    rows = [json.loads(line)["messages"] for line in demo.oracle_conversations(recipe, config, 60)]
    task = get_task("addition", min_digits=4, max_digits=5)
    stream = PromptStream(task.problems(split="train", n=50, seed=2), seed=2)
    expected = stream.take(60)  # more than the pool: the next epoch's shuffle, as GRPO reads it
    assert [r[0]["content"] for r in rows] == [p.prompt for p in expected]
    for messages, p in zip(rows, expected):
        assert task.score(messages[-1]["content"].removeprefix("<think>\n"), p) == 1.0
