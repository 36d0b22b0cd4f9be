"""benchmarks/bench_study.py: both tasks' checks by the one definition, on made-up results worked by hand;
the commands it runs; the one report it writes from the parts' results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_study", ROOT / "benchmarks" / "bench_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _arm(p1: float, maj: float, length: float) -> dict:
    return {"pass@1": p1, "maj@k": maj, "length": length, "attempts": 1.0}


def _budget(accs: list[float]) -> list[dict]:
    return [{"mode": "cap", "value": c, "accuracy": a} for c, a in zip((16, 32, 64), accs)]


def _chase_results() -> dict:
    """Three seeds: GRPO lifts +30, +40, +10 points over the cold start; EI above GRPO in seed 2 only."""
    seeds = []
    for seed, (grpo, ei, grpo_len, ctl_len) in enumerate([(0.5, 0.4, 50.0, 20.0), (0.6, 0.5, 60.0, 21.0),
                                                          (0.3, 0.35, 25.0, 30.0)]):  # fmt: skip
        seeds.append({
            "seed": seed,
            "final": {"cold start": _arm(0.2, 0.25, 20.0), "GRPO": _arm(grpo, grpo + 0.05, grpo_len),
                      "expert iteration": _arm(ei, ei - 0.1, 40.0),  # maj@k below pass@1: a miss each seed
                      "SFT on cold-start set": _arm(0.22, 0.3, ctl_len)},
            "budget": {"cold start": _budget([0.1, 0.2, 0.2]), "GRPO": _budget([0.1, 0.4, 0.3]),
                       "expert iteration": _budget([0.0, 0.3, 0.4]), "SFT on cold-start set": _budget([0.1, 0.1, 0.2])},
        })  # fmt: skip
    return {"args": {"samples": "4"}, "seeds": seeds}


def test_chase_checks_by_hand(bench):
    lines = bench.chase_findings(_chase_results())
    text = "\n".join(lines)
    # lifts GRPO - cold start: +30, +40, +10 -> 2 of 3
    assert "by ≥ 15 points in 2 of 3 seeds (+30.0, +40.0, +10.0): NOT met" in text
    # GRPO >= EI in seeds 0 and 1; means 46.7 vs 41.7; control 22.0: order met
    assert "GRPO ≥ expert iteration on test pass@1 in 2 of 3 seeds (means 46.7% vs 41.7%)" in text
    assert "46.7% / 41.7% / 22.0%): met" in text
    # expert iteration's maj@4 is 10 points under its pass@1 in every seed
    assert "maj@4 ≥ pass@1 wherever pass@1 > 5%: NOT met in 3 cells" in text
    assert text.count("expert iteration test seed") == 3
    # budget: GRPO's mean (0.1, 0.4, 0.3) drops; the others rise
    assert "accuracy of GRPO monotone in the cap (mean over seeds, caps [16, 32, 64]): NOT met" in text
    assert (
        "accuracy of expert iteration monotone in the cap (mean over seeds, caps [16, 32, 64]): met" in text
    )
    # length: GRPO 50, 60 >= 1.5 x 20 (seed 2's 25 is not); control 20, 21 within 25% of 20, 30 is not
    assert "≥ 1.5× the cold start's in 2 of 3 seeds" in text
    assert "within 25% of it in 2 of 3" in text
    assert lines[-1].endswith("NOT met")


def test_distill_checks_name_the_cheapest_method(bench):
    data = {
        "settings": {"margin": 5.0},
        "params": {"teacher": {"active": 1000}, "student": {"active": 210}},
        "reached": {
            "trace SFT": {"step": None, "flops": None, "closest_gap": 13.8},
            "on-policy": {"step": 900, "flops": 7e12},
            "SFT then on-policy": {"step": 1605, "flops": 5.2e12},
        },
    }
    lines = bench.distill_findings(data)
    assert lines[0] == "distillation: student/teacher active parameters 0.210 (≤ 0.25: met)"
    assert "trace SFT within 5 points of the teacher on every split: no (closest gap 13.8 points)" in lines[1]
    assert (
        "SFT then on-policy within 5 points of the teacher on every split: yes, at 5.2e+12 FLOPs" in lines[3]
    )
    assert lines[-1] == "distillation: fewest FLOPs to the margin: SFT then on-policy"
    data["reached"] = {"trace SFT": {"step": None, "flops": None, "closest_gap": 9.0}}
    assert bench.distill_findings(data)[-1].endswith("none of the methods got there")


def test_embed_demotes_headings_and_moves_relative_links(bench):
    md = "# Title\n## Sub\ntext ![plot](length.png) [log](https://x.org/a.png) [abs](/tmp/a.png)\n"
    out = bench.embed(md, "chase")
    assert out.splitlines()[:2] == ["### Title", "#### Sub"]
    assert "![plot](chase/length.png)" in out
    assert "[log](https://x.org/a.png)" in out and "[abs](/tmp/a.png)" in out


def test_commands_per_seed_and_report_pass(bench, tmp_path):
    args = bench.main.__globals__["argparse"].Namespace(
        parts=["addition", "chase", "distill"], seeds=2, first_seed=3, threads=1, quick=True,
        addition_dir=tmp_path / "a", chase_dir=tmp_path / "c", distill_dir=tmp_path / "d",
        addition_args="", chase_args="--lr 3e-4", distill_args="",
    )  # fmt: skip
    cmds = bench.commands(args)
    per_seed, report = cmds["chase"]
    assert [c[c.index("--only-seed") + 1] for c in per_seed] == ["3", "4"]
    assert "--only-seed" not in report and report[-2:] == ["--first-seed", "3"]
    assert "--quick" in report and report[report.index("--lr") + 1] == "3e-4"
    assert report[report.index("--sft-steps") + 1] == "6000"
    per_seed, report = cmds["addition"]
    assert [c[c.index("--first_seed") + 1] for c in per_seed] == ["3", "4"]
    assert report[report.index("--seeds") + 1] == "2" and report[report.index("--quick") + 1] == "true"
    assert cmds["distill"][0] == [] and cmds["distill"][1][cmds["distill"][1].index("--seeds") + 1] == "2"


def test_report_only_writes_one_report_from_the_parts(bench, tmp_path, monkeypatch):
    wd = tmp_path / "study"
    (wd / "chase").mkdir(parents=True)
    (wd / "chase" / "results.json").write_text(json.dumps(_chase_results()))
    (wd / "chase" / "report.md").write_text("# Chase\n\n![R1-Zero's plot](length.png)\n")
    (wd / "chase" / "length.png").write_bytes(b"")
    (wd / "chase" / "budget.png").write_bytes(b"")  # not in report.md: appended below it
    (wd / "addition").mkdir()
    (wd / "addition" / "study.json").write_text(json.dumps({"findings": ["addition: a check: met"]}))
    (wd / "addition" / "study.md").write_text("# r1kit study\n\n## Checks\n- addition: a check: met\n")
    monkeypatch.chdir(tmp_path)  # a relative --workdir is made absolute (the parts run as subprocesses)
    path = bench.main(["--workdir", "study", "--report-only", "--seeds", "3"])
    assert path == wd / "study.md" and path.is_absolute()
    text = path.read_text()
    assert text.count("\n## ") == 3  # Checks, then addition's and chase's reports
    assert "### addition\n\n- addition: a check: met" in text
    assert "- distill: no results (" in text
    assert "![R1-Zero's plot](chase/length.png)" in text and "### Chase" in text
    assert "![chase: budget](chase/budget.png)" in text and text.count("chase/length.png") == 1
    checks = json.loads((wd / "study.json").read_text())["checks"]
    assert set(checks) == {"addition", "chase", "distill"} and len(checks["chase"]) == 9


def test_a_failed_part_exits_with_its_log(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "commands", lambda args: {"chase": ([[sys.executable, "-c", "import sys; sys.exit(3)"]],
                                                                   [sys.executable, "-c", "print('report')"])})  # fmt: skip
    with pytest.raises(SystemExit) as e:
        bench.main(["--workdir", str(tmp_path), "--parts", "chase", "--seeds", "1"])
    assert "chase_seed0 failed" in str(e.value.code)
    assert "exit 3" in capsys.readouterr().out
    assert (tmp_path / "logs" / "chase_seed0.log").read_text().startswith("$ ")


def test_bad_flags_exit_2(bench, tmp_path, capsys):
    for argv in (["--seeds", "0"], ["--chase-args", "--lr '3e-4"]):
        with pytest.raises(SystemExit) as e:
            bench.main(["--workdir", str(tmp_path), *argv])
        assert e.value.code == 2
    assert "quote the flags as one string" in capsys.readouterr().err
