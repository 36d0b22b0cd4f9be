"""What RL adds, on both tasks, in one command and one report (issue 18's study).

    PYTHONPATH=. python benchmarks/bench_study.py --seeds 3 --jobs 2 --threads 1   # hours on 2 cores
    PYTHONPATH=. python benchmarks/bench_study.py --quick --seeds 1 --workdir runs/bench_study_quick   # smoke

Three parts, each one existing command run as a subprocess (its log in <workdir>/logs/), over the same
seeds (--first-seed .. --first-seed + --seeds - 1):

1. **addition** (`r1kit study --tasks addition`): R1's finite cold start, then GRPO, expert iteration, more
   SFT on the cold-start set and the oracle reference at GRPO's FLOPs; held-out 4-digit and the hard
   5-digit split. -> <workdir>/addition/study.json
2. **chase** (`benchmarks/bench_length.py --task chase`, the length task: a longer search finds more):
   the 6,000-step cold start that executes its chains (`CHASE_RECIPE`), then the same arms (no oracle);
   R1-Zero's curve and the budget curves. -> <workdir>/chase/results.json
3. **distillation** (`benchmarks/bench_distill_methods.py`): trace SFT, logit KD, on-policy distillation
   and SFT-then-on-policy into a student with <= 1/4 of the teacher's active parameters, at equal FLOPs.
   -> <workdir>/distill/bench_distill_methods.json

Seeds run as separate processes, --jobs at a time; then one reporting pass per part (which reads the
seeds back), then <workdir>/study.md: the checks of both tasks with one definition (`r1kit.study.findings`:
GRPO's lift over the cold start on the hard split, GRPO vs expert iteration, the expected order, maj@k >=
pass@1, budget caps monotone), R1-Zero's length check on chase, which distillation method got within the
margin with the fewest FLOPs, then each part's own report (mean ± sd tables, plots). A part whose results
exist is read, not rerun (addition and chase resume by seed, a finished distillation run at --seeds is
read back), so a stopped study continues where it stopped;
--addition-dir / --chase-dir / --distill-dir point a part at an earlier run. Extra flags for a part:
--addition-args / --chase-args / --distill-args "…" (appended, so they override the recipe's).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("addition", "chase", "distill")
CHASE_RECIPE = (
    "--task chase --symbols pairs --size 7 --hops 3 --layers 2 --sft-examples 20000 --sft-steps 6000 "
    "--sft-lr 3e-3 --max-new-tokens 160 --train-problems 2000 --grpo-steps 200 --verify verdicts"
)
"""chase: a 7-letter map, 3 hops, a 2-layer model; the 6,000-step cold start (shorter ones did not execute
their chains in every seed: docs/LOG.md 2026-12-07); GRPO fined for every false verdict."""
DISTILL_RECIPE = "--prompts 8000 --k 2 --sft-steps 3000 --quiet"
"""distillation: the budget under which SFT-then-on-policy got within 5 points (docs/LOG.md 2026-12-07)."""
RESULT_FILE = {
    "addition": "study.json",
    "chase": "results.json",
    "distill": "bench_distill_methods.json",
}
REPORT_FILE = {"addition": "study.md", "chase": "report.md", "distill": "bench_distill_methods.md"}


def commands(args: argparse.Namespace) -> dict[str, tuple[list[list[str]], list[str]]]:
    """part -> (one command per seed, the reporting command that reads the seeds back and writes the report)."""
    py, seeds = sys.executable, range(args.first_seed, args.first_seed + args.seeds)
    out: dict[str, tuple[list[list[str]], list[str]]] = {}
    if "addition" in args.parts:
        base = [py, "-m", "r1kit", "study", "--tasks", "addition", "--run_dir", str(args.addition_dir),
                "--threads", str(args.threads), "--progress", "false",
                *(["--quick", "true"] if args.quick else []), *shlex.split(args.addition_args)]  # fmt: skip
        out["addition"] = (
            [[*base, "--seeds", "1", "--first_seed", str(s), "--reuse", "true"] for s in seeds],
            [*base, "--seeds", str(args.seeds), "--first_seed", str(args.first_seed), "--reuse", "true"],
        )
    if "chase" in args.parts:
        base = [py, str(ROOT / "benchmarks" / "bench_length.py"), *shlex.split(CHASE_RECIPE),
                "--workdir", str(args.chase_dir), "--threads", str(args.threads),
                *(["--quick"] if args.quick else []), *shlex.split(args.chase_args)]  # fmt: skip
        out["chase"] = (
            [
                [
                    *base,
                    "--seeds",
                    str(args.seeds),
                    "--first-seed",
                    str(args.first_seed),
                    "--only-seed",
                    str(s),
                ]
                for s in seeds
            ],
            [*base, "--seeds", str(args.seeds), "--first-seed", str(args.first_seed)],
        )
    if "distill" in args.parts:
        cmd = [py, str(ROOT / "benchmarks" / "bench_distill_methods.py"), *shlex.split(DISTILL_RECIPE),
               "--out", str(args.distill_dir), "--seeds", str(args.seeds), "--threads", str(args.threads),
               *(["--quick"] if args.quick else []), *shlex.split(args.distill_args)]  # fmt: skip
        out["distill"] = ([], cmd)  # one process: its students share one teacher and one set of traces
    return out


def run_logged(cmd: list[str], log: Path, threads: int) -> int:
    """Run one command with its output in `log`; its exit status."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
    }
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def run_parts(args: argparse.Namespace) -> None:
    """Every part's seed commands, --jobs at a time (a finished seed is read back by its command), then each
    part's reporting pass; a finished distillation run is not run again."""
    todo = {
        part: cmds for part, cmds in commands(args).items() if not distill_done(args) or part != "distill"
    }
    jobs = [(part, i, cmd) for part, (per_seed, _) in todo.items() for i, cmd in enumerate(per_seed)]
    jobs += [(part, -1, report) for part, (per_seed, report) in todo.items() if not per_seed]
    logs = args.workdir / "logs"

    def one(job: tuple[str, int, list[str]]) -> tuple[str, int]:
        part, i, cmd = job
        name = f"{part}_seed{args.first_seed + i}" if i >= 0 else part
        print(f"[bench_study] {name}: running (log {logs / name}.log)", flush=True)
        rc = run_logged(cmd, logs / f"{name}.log", args.threads)
        print(f"[bench_study] {name}: {'done' if rc == 0 else f'FAILED (exit {rc})'}", flush=True)
        return name, rc

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        failed = [name for name, rc in pool.map(one, jobs) if rc != 0]
    for part, (per_seed, report) in todo.items():
        if per_seed and not any(n.startswith(part) for n in failed):
            name, rc = one((part, -1, report))
            failed += [name] if rc else []
    if failed:
        sys.exit(f"bench_study: {', '.join(failed)} failed; see {logs}/<name>.log, then run the same command again "
                 "(finished seeds are read back)")  # fmt: skip


def part_dir(args: argparse.Namespace, part: str) -> Path:
    return getattr(args, f"{part}_dir")


def distill_done(args: argparse.Namespace) -> bool:
    """bench_distill_methods does not resume, so its finished run (at these seeds) is read instead of rerun.
    addition and chase always run their commands: those read back every finished seed themselves."""
    path = args.distill_dir / RESULT_FILE["distill"]
    return path.is_file() and json.loads(path.read_text())["settings"].get("seeds") == args.seeds


# ----------------------------------------------------------------------------------------------
# the one report


def chase_seeds(results: dict[str, Any]) -> list[dict[str, Any]]:
    """bench_length's seeds in `r1kit.study`'s seed layout ("SFT" = the cold start, one split "test"), so
    both tasks are checked by the same `r1kit.study.findings`."""
    k = int(float(results["args"]["samples"]))
    names = {"cold start": "SFT", "GRPO": "GRPO", "expert iteration": "expert iteration",
             "SFT on cold-start set": "SFT on cold-start set"}  # fmt: skip
    out = []
    for s in results["seeds"]:
        res = {}
        for arm, stage in names.items():
            m = dict(s["final"][arm])
            m[f"maj@{k}"] = m.pop("maj@k", float("nan"))
            res[stage] = {"test": m}
        out.append(
            {"seed": s["seed"], "results": res, "splits": ["test"], "eval_k": k, "budget": s["budget"]}
        )
    return out


def chase_findings(results: dict[str, Any]) -> list[str]:
    """The study's checks on chase, budget caps monotone for every arm, and R1-Zero's length check: GRPO's
    mean sampled completion length rises from the cold start's while the more-SFT control's does not."""
    from r1kit.study import budget_finding, findings

    seeds = chase_seeds(results)
    lines = findings("chase", seeds, ["expert iteration", "SFT on cold-start set"])
    for arm in ("cold start", "GRPO", "expert iteration", "SFT on cold-start set"):
        lines.append(budget_finding("chase", [s["budget"].get(arm, []) for s in seeds], who=arm))
    length = {a: [s["final"][a]["length"] for s in results["seeds"]] for a in
              ("cold start", "GRPO", "SFT on cold-start set")}  # fmt: skip
    grew = sum(g >= 1.5 * c for g, c in zip(length["GRPO"], length["cold start"]))
    stayed = sum(
        abs(t - c) <= 0.25 * c for t, c in zip(length["SFT on cold-start set"], length["cold start"])
    )
    n = len(seeds)

    def fmt(v: list[float]) -> str:
        return ", ".join(f"{x:.1f}" for x in v)

    lines.append(
        f"chase: R1-Zero's curve: GRPO's mean sampled completion length ≥ 1.5× the cold start's in {grew} of {n} "
        f"seeds (tokens {fmt(length['cold start'])} -> {fmt(length['GRPO'])}) and the more-SFT control's within "
        f"25% of it in {stayed} of {n} ({fmt(length['SFT on cold-start set'])}): "
        f"{'met' if grew == n and stayed == n else 'NOT met'}"
    )
    return lines


def distill_findings(data: dict[str, Any]) -> list[str]:
    """Which methods got within the margin of the teacher on every split, and with how many FLOPs."""
    params = data["params"]
    ratio = params["student"]["active"] / params["teacher"]["active"]
    margin = data["settings"].get("margin", 5.0)
    reached = {m: r for m, r in data["reached"].items() if r.get("flops") is not None}
    lines = [
        f"distillation: student/teacher active parameters {ratio:.3f} (≤ 0.25: {'met' if ratio <= 0.25 else 'NOT met'})"
    ]
    for method, r in data["reached"].items():
        lines.append(
            f"distillation: {method} within {margin:g} points of the teacher on every split: "
            + (
                f"yes, at {r['flops']:.3g} FLOPs (step {r['step']})"
                if r.get("flops") is not None
                else f"no (closest gap {r.get('closest_gap', float('nan')):.1f} points)"
            )
        )
    best = min(reached, key=lambda m: reached[m]["flops"]) if reached else None
    lines.append(
        "distillation: fewest FLOPs to the margin: " + (best if best else "none of the methods got there")
    )
    return lines


FINDINGS = {
    "addition": lambda data: list(data["findings"]),
    "chase": chase_findings,
    "distill": distill_findings,
}
"""part -> its checks from its results file (addition's are `r1kit study`'s own)."""


def embed(markdown: str, subdir: str) -> str:
    """A part's report inside the study's: headings two levels down, relative links and images under subdir/."""
    text = re.sub(r"^(#+) ", lambda m: "#" * min(6, len(m.group(1)) + 2) + " ", markdown, flags=re.M)
    return re.sub(
        r"(!?\[[^\]]*\]\()(?!https?:|/|#)([^)]+)\)", lambda m: f"{m.group(1)}{subdir}/{m.group(2)})", text
    )


def write_report(args: argparse.Namespace) -> Path:
    """<workdir>/study.md and study.json from whichever parts have results."""
    from r1kit.train.cost import cpu_description

    checks: dict[str, list[str]] = {}
    bodies: list[str] = []
    for part in PARTS:
        d = part_dir(args, part)
        result = d / RESULT_FILE[part]
        if part not in args.parts or not result.is_file():
            if part in args.parts:
                checks[part] = [f"{part}: no results ({result} missing)"]
            continue
        data = json.loads(result.read_text())
        checks[part] = FINDINGS[part](data)
        rel = os.path.relpath(d, args.workdir)
        report = d / REPORT_FILE[part]
        if report.is_file():
            text = report.read_text()
            # a plot its report does not show is appended below it
            unseen = [p.name for p in sorted(d.glob("*.png")) if p.name not in text]
            bodies += [f"## {part} (`{rel}/{REPORT_FILE[part]}`)", "", embed(text, rel), ""]
            bodies += [f"![{part}: {Path(name).stem}]({rel}/{name})\n" for name in unseen]
    quick = "**Quick smoke test: every stage shrunk, the numbers mean nothing.**\n\n" if args.quick else ""
    lines = [
        "# What RL adds: both tasks, one report (bench_study)",
        "",
        f"{quick}Command: `PYTHONPATH=. python benchmarks/bench_study.py {' '.join(args.argv)}`. Machine: "
        f"{cpu_description()}. Seeds {args.first_seed}..{args.first_seed + args.seeds - 1}; each part's own "
        "command and settings are in its section. Every arm of a seed starts from that seed's cold start and "
        "stops at GRPO's FLOPs; held-out test splits; pass@1 over k samples.",
        "",
        "## Checks",
        "",
    ]
    for part, found in checks.items():
        lines += [f"### {part}", "", *(f"- {line}" for line in found), ""]
    path = args.workdir / "study.md"
    path.write_text("\n".join(lines + bodies))
    (args.workdir / "study.json").write_text(json.dumps({"argv": args.argv, "checks": checks}, indent=1))
    return path


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_study"))
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument(
        "--jobs", type=int, default=1, help="seed processes at a time (one per core at --threads 1)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument(
        "--quick", action="store_true", help="every part's smoke preset: tiny, the numbers mean nothing"
    )
    ap.add_argument(
        "--report-only", action="store_true", help="write study.md from the results there, run nothing"
    )
    for part in PARTS:
        ap.add_argument(
            f"--{part}-dir", type=Path, default=None, help=f"the {part} run (default <workdir>/{part})"
        )
        ap.add_argument(f"--{part}-args", default="", help=f"extra flags for the {part} command (quoted)")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.seeds < 1 or args.jobs < 1:
        ap.error("--seeds and --jobs take a number ≥ 1")
    args.workdir = args.workdir.absolute()  # absolute: the commands' paths do not depend on where they run
    for part in PARTS:
        setattr(args, f"{part}_dir", (part_dir(args, part) or args.workdir / part).absolute())
        try:
            shlex.split(getattr(args, f"{part}_args"))
        except ValueError as e:
            ap.error(f'--{part}-args: {e}; quote the flags as one string, e.g. --{part}-args "--lr 3e-4"')
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run_parts(args)
    path = write_report(args)
    print(f"wrote {path}")
    print("## " + path.read_text().split("\n## ", 2)[1])  # the checks: the study's answer
    return path


if __name__ == "__main__":
    main()
