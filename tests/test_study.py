"""`r1kit study`: the mean ± spread tables and checks by hand on made-up seeds, and one quick seed end to
end (every arm ran from the one cold start at GRPO's FLOPs, the report has every table and plot)."""

from __future__ import annotations

import json
import math
import re

import pytest

from r1kit import demo, study
from r1kit.config import UserError
from r1kit.report import mean_spread, spread_table


def test_mean_spread_by_hand():
    assert mean_spread([0.2, 0.4, 0.6]) == pytest.approx((0.4, 0.2))
    assert mean_spread([0.5]) == (0.5, 0.0)
    assert all(math.isnan(x) for x in mean_spread([float("nan")]))


def test_spread_table_shows_mean_sd_and_each_seed():
    table = spread_table(
        {"GRPO": {"5-digit pass@1 (k=8)": [0.2, 0.4, 0.6], "5-digit mean thinking tokens": [40.0, 44.0]}},
        ["5-digit pass@1 (k=8)", "5-digit mean thinking tokens", "5-digit maj@8"],
    )
    row = table.splitlines()[2]
    assert row == "| GRPO | 40.0% ± 20.0 (20.0, 40.0, 60.0) | 42.0 ± 2.8 (40.0, 44.0) | – |"


def _seed(seed: int, grpo: float, ei: float, cold: float, sft: float = 0.05) -> dict:
    def m(p1: float, maj: float | None = None) -> dict:
        return {"pass@1": p1, "maj@8": p1 if maj is None else maj, "greedy_acc": p1, "think_tokens": 45.0}

    results = {
        "SFT": {"4-digit": m(0.3), "5-digit": m(sft)},
        "GRPO": {"4-digit": m(0.9), "5-digit": m(grpo)},
        demo.EXPERT_ITERATION: {"4-digit": m(0.8), "5-digit": m(ei, maj=ei - 0.1)},
        demo.COLD_START_SFT: {"4-digit": m(0.5), "5-digit": m(cold)},
        demo.ORACLE: {"4-digit": m(0.99), "5-digit": m(0.9)},
    }
    costs = {name: {"flops": 1e12, "wall_s": 10.0, "tokens": 5} for name in results}
    curve = [
        {"flops": 0.0, "accuracy": 0.1, "length": 40.0},
        {"flops": 1e12, "accuracy": grpo, "length": 41.0},
    ]
    points = [{"mode": "cap", "value": c, "accuracy": a, "think_tokens": c} for c, a in ((8, 0.0), (32, 0.5))]
    return {
        "task": "addition", "seed": seed, "results": results, "costs": costs,
        "curves": {"GRPO": curve, demo.EXPERT_ITERATION: curve}, "budget": {"points": points},
        "sft_steps": 100, "sft_val": 0.25, "wall_s": 60.0, "eval_k": 8, "splits": ["4-digit", "5-digit"],
    }  # fmt: skip


def test_report_of_made_up_seeds_states_the_checks(tmp_path):
    config = study.Config(run_dir=str(tmp_path), seeds=3)
    runs = {
        "addition": {
            0: _seed(0, 0.30, 0.20, 0.10),
            1: _seed(1, 0.10, 0.15, 0.05),
            2: _seed(2, 0.50, 0.30, 0.2),
        }
    }
    path = study.write_study_report(config, runs, 123.0)
    text = path.read_text()
    checks = text.split("## Checks\n", 1)[1].split("\n## ", 1)[0]
    # lifts over SFT's 5%: +25, +5, +45 points -> 2 of 3 seeds
    # no capped seed; the share of each cold start's headroom closed: 25/95, 5/95, 45/95
    assert (
        "by ≥ 15 points in 2 of 3 seeds (+25.0, +5.0, +45.0): NOT met; of the cold start's headroom "
        in checks
    )
    assert "(100% - its pass@1) GRPO closed 26%, 5%, 47%\n" in checks
    capped = dict(
        runs["addition"][1],
        results={**runs["addition"][1]["results"], "SFT": {"5-digit": {"pass@1": 0.9, "maj@8": 0.9}}},
    )
    line = study.findings("addition", [runs["addition"][0], capped], list(demo.ARMS))[0]
    assert line.endswith(
        "(+25.0, -80.0): NOT met; of the cold start's headroom (100% - its pass@1) GRPO closed 26%, -800%; "
        "a +15 lift is impossible where the cold start is above 85%: seed 1 (90.0%)"
    )
    assert "GRPO ≥ expert iteration on 5-digit pass@1 in 2 of 3 seeds (means 30.0% vs 21.7%)" in checks
    assert "30.0% / 21.7% / 11.7%): met" in checks
    # expert iteration's maj@8 is 10 points under its pass@1 on 5-digit in every seed (all above 5%)
    assert "maj@8 ≥ pass@1 wherever pass@1 > 5%: NOT met in 3 cells" in checks
    assert "monotone in the cap" in checks and "(0.0%, 50.0%)" in checks
    table = text.split("mean ± sd over 3 seed(s)", 1)[1].split("\n## ", 1)[0]
    grpo_row = next(line for line in table.splitlines() if line.startswith("| GRPO |"))
    assert "30.0% ± 20.0 (30.0, 10.0, 50.0)" in grpo_row
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (tmp_path / image).is_file(), image
    data = json.loads(path.with_suffix(".json").read_text())
    assert data["findings"] and data["runs"]["addition"]["1"]["seed"] == 1 and data["stages"]


def test_bad_tasks_and_arms_say_what_to_type():
    with pytest.raises(UserError, match="--tasks"):
        study.Config(tasks=["countdown-length"])
    with pytest.raises(UserError, match="the arms are"):
        study.Config(arms=["more RL"])


def test_one_quick_seed_end_to_end(tmp_path):
    tiny = study.STUDY_TASKS["addition"][1]
    result = study.run(study.Config(run_dir=str(tmp_path), seeds=1, quick=True, progress=False, threads=1))
    seed = result.runs["addition"][0]
    assert set(seed["results"]) == {"SFT", "GRPO", *demo.ARMS}
    grpo_flops = seed["costs"]["GRPO"]["flops"]
    for arm in demo.ARMS:
        assert 0 < seed["costs"][arm]["flops"] <= grpo_flops, arm
    # the SFT-on-cold-start arm trained only on conversations the cold start had trained on
    seed_dir = tmp_path / "addition" / "seed0"
    cold = set((seed_dir / "data" / "sft_cold_start.jsonl").read_text().splitlines())
    had = set(
        demo.cold_start_set(tiny(), demo.Config(seed=0), seed_dir / "data" / "sft.jsonl", seed["sft_steps"])
    )
    assert cold and cold <= {json.dumps(json.loads(line)) for line in had}
    assert seed["curves"]["GRPO"] and seed["curves"][demo.EXPERT_ITERATION]
    text = result.report.read_text()
    assert "Quick smoke test" in text and "## Checks" in text and "equal compute" in text
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (tmp_path / image).is_file(), image
    # --reuse: the finished seed is read back, nothing runs again, the report is the same
    again = study.run(
        study.Config(run_dir=str(tmp_path), seeds=1, quick=True, progress=False, threads=1, reuse=True)
    )
    assert not (tmp_path / "addition" / "seed0.prev").exists()  # the seed directory was not moved aside
    assert json.loads(json.dumps(again.runs["addition"][0])) == json.loads(json.dumps(seed, default=float))


def test_addition_preset_is_a_finite_cold_start():
    """R1's setting: the cold start sees its few thousand conversations many times, without an early stop,
    so "more SFT on the cold-start set" is more epochs over seen data; the demo's recipe is kept apart."""
    finite, demo_recipe = study.STUDY_TASKS["addition"][0](), study.STUDY_TASKS["addition-demo"][0]()
    assert finite.sft_examples <= 10_000 and finite.val_target >= 1.0
    assert finite.sft_max_steps * finite.sft_batch >= 10 * finite.sft_examples  # >= 10 epochs
    assert 0.0 < finite.hard_share < 1.0
    assert demo_recipe.sft_examples > finite.sft_max_steps * finite.sft_batch


def test_addition_scarce_preset_changes_only_the_hard_share():
    """The scarce preset is the finite cold start with fewer 5-digit conversations, nothing else: its
    results compare with the finite preset's as one change."""
    from dataclasses import asdict

    finite, scarce = study.STUDY_TASKS["addition"][0](), study.STUDY_TASKS["addition-scarce"][0]()
    diff = {k for k, v in asdict(scarce).items() if asdict(finite)[k] != v}
    assert diff == {"hard_share"}
    assert 0.0 < scarce.hard_share < finite.hard_share


def test_addition_long_preset_makes_the_longest_split_the_hard_one():
    """The long preset's hard split (the last, what `findings` checks) is 6-digit, GRPO's prompts reach
    it and the cold start's hard half does too; the easy mix is the finite preset's."""
    finite, long = study.STUDY_TASKS["addition"][0](), study.STUDY_TASKS["addition-long"][0]()
    assert list(long.eval_splits)[-1] == "6-digit" and long.eval_splits["6-digit"] == 6
    assert long.rl_digits[1] == long.hard_digits[1] == 6
    assert (long.sft_digits, long.hard_share, long.sft_examples) == (
        finite.sft_digits,
        finite.hard_share,
        finite.sft_examples,
    )


def test_addition_calibrated_preset_stops_the_cold_start_on_the_hard_split():
    """The calibrated preset changes only the cold start's early stop: it validates on the hard split's
    operand length (val split, not the test split the report uses) and stops at a target below the
    band where no lift is possible; the default recipe keeps validating on 4-digit problems."""
    from dataclasses import asdict

    finite, cal = study.STUDY_TASKS["addition"][0](), study.STUDY_TASKS["addition-calibrated"][0]()
    diff = {k for k, v in asdict(cal).items() if asdict(finite)[k] != v}
    assert diff == {"val_digits", "val_target", "val_every"}
    hard = list(cal.eval_splits)[-1]
    section = demo._val_section(cal, cal.val_target, cal.val_every)
    assert section.task_args == {"addition": {"digits": cal.eval_splits[hard]}} and section.split == "val"
    assert 0.0 < section.target_accuracy < 0.5 and section.every == 20
    plain = demo._val_section(finite, finite.val_target, finite.val_every)
    assert plain.task_args == {"addition": {"digits": 4}}
