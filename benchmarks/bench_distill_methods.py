"""Trace SFT vs logit KD vs on-policy distillation at equal FLOPs (issue 18).

1. Teacher: tiny Llama (D=128, 4 layers) SFT'd on 50,000 1-4 digit addition worked solutions (cosine
   schedule; `bench_distill.train_teacher`), stopped at --teacher-target held-out greedy accuracy.
2. Rejection sampling (`r1kit.distill.run_sample`): k samples per train prompt, the verified ones kept
   (one per prompt). Its FLOPs are charged once to each offline method (trace SFT, logit KD).
3. Three students, the same random init per seed (D=64, 4 layers; <= 1/4 of the teacher's active
   parameters, counted with `r1kit.model.counting.active_param_count`, embeddings included and excluded):
   - "trace SFT": `distill.method = "sft"` on the verified traces (R1-Distill);
   - "logit KD": `distill.method = "logits"` on the same traces (alpha T^2 KL + (1 - alpha) CE);
   - "on-policy": `distill.method = "on_policy"` (the student samples the train prompts, the teacher
     scores every sampled token, exact per-token reverse KL; GKD lambda = 1); no traces, so no
     rejection-sampling cost, but every step pays for the student's sampling and the teacher's forward.
   - "SFT then on-policy": trace SFT's own checkpoint at --handoff of its steps (same seed), then on-policy
     distillation from it at --handoff-lr until the same total FLOPs (the 2026-12-06 run that came
     closest did this by hand: docs/LOG.md).
   Each run saves checkpoints every --points-th of its steps. Trace SFT runs --sft-steps; logit KD and
   on-policy get the steps that bring them to the same total FLOPs (trace SFT's + the rejection
   sampling), estimated from trace SFT's measured FLOPs per step (`_steps_for`); the x axis is the
   metered count.
4. Every checkpoint (and the teacher) is scored on held-out test problems of two splits, 3-digit and
   4-digit addition (both inside the teacher's 1-4 digit training mix; 4-digit is the harder):
   greedy accuracy and pass@1 over k samples (T 0.6, top-p 0.95), in one batched engine call.
   Cumulative FLOPs of a checkpoint = the training run's metered FLOPs at that step (`metrics.jsonl`,
   which for logit KD includes the teacher's forward and for on-policy the sampling and the teacher's
   scoring) + the rejection sampling's for the offline methods.

Reports, per method, the first checkpoint whose seed-mean pass@1 is within --margin points of the teacher
on every split, and its FLOPs. Writes bench_distill_methods.json, .md and pass1_vs_flops.png to --out.

    OMP_NUM_THREADS=1 python benchmarks/bench_distill_methods.py --threads 1 --seeds 3
    python benchmarks/bench_distill_methods.py --quick --threads 1    # a smoke test (numbers meaningless)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from r1kit import distill
from r1kit.config import load_config
from r1kit.engine import Engine
from r1kit.evaluate import EvalParams, evaluate_engine, is_correct
from r1kit.loaders import load_model
from r1kit.model.config import ModelConfig
from r1kit.model.counting import active_param_count, flops_per_token
from r1kit.tasks import get_task
from r1kit.train.checkpoint import list_checkpoints

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distill import train_teacher  # noqa: E402

TASK_ARGS = {"min_digits": 1, "max_digits": 4}  # the teacher's SFT mix and the train prompts
SPLITS = {"3-digit": 3, "4-digit": 4}  # held-out test splits
TEACHER = {}  # the tiny-llama preset: D=128, 4 layers, 4 heads (2 KV), MLP 512
STUDENT = {
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}
METHODS = ("trace SFT", "logit KD", "on-policy", "SFT then on-policy")
MAX_NEW_TOKENS = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench_distill_methods")
    parser.add_argument("--teacher", default="", help="reuse this teacher run directory (skip step 1)")
    parser.add_argument("--teacher-steps", type=int, default=1500)
    parser.add_argument("--teacher-target", type=float, default=0.95, help="stop at this val greedy acc")
    parser.add_argument("--prompts", type=int, default=2000, help="train prompts for rejection sampling")
    parser.add_argument("--k", type=int, default=4, help="teacher samples per prompt")
    parser.add_argument("--sft-steps", type=int, default=600, help="trace SFT steps (sets the budget)")
    parser.add_argument("--batch", type=int, default=32, help="sequences (or completions) per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--on-policy-lr", type=float, default=3e-3)
    parser.add_argument("--handoff", type=float, default=0.5,
                        help="SFT then on-policy: share of trace SFT's steps before on-policy takes over")  # fmt: skip
    parser.add_argument("--handoff-lr", type=float, default=1e-3, help="SFT then on-policy: on-policy lr")
    parser.add_argument("--points", type=int, default=6, help="checkpoints evaluated per run")
    parser.add_argument("--eval-problems", type=int, default=100, help="test problems per split")
    parser.add_argument("--eval-k", type=int, default=4, help="samples per problem for pass@1")
    parser.add_argument("--margin", type=float, default=5.0, help="points below the teacher")
    parser.add_argument("--seeds", type=int, default=3, help="student seeds")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.teacher_steps, args.prompts, args.sft_steps, args.eval_problems = 200, 32, 12, 8
        args.points, args.seeds = 2, 1
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    args.methods = sorted(args.methods, key=lambda m: METHODS.index(m) if m in METHODS else 0)  # SFT first
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    if "SFT then on-policy" in args.methods and "trace SFT" not in args.methods:
        parser.error("method 'SFT then on-policy' starts from trace SFT's checkpoints: add 'trace SFT'")
    if not 0.0 < args.handoff < 1.0:
        parser.error(f"--handoff is a share of trace SFT's steps in (0, 1); got {args.handoff}")
    return args


def base_config(out: Path, args: argparse.Namespace, **overrides) -> distill.Config:
    """The sample/distill config shared by every run, with `overrides` ("section.key": value)."""
    base = {
        "teacher.path": str(out / "teacher"),
        "sample.task_args": {"addition": dict(TASK_ARGS)},
        "sample.prompts": args.prompts,
        "sample.k": args.k,
        "sample.max_new_tokens": MAX_NEW_TOKENS,
        "sample.max_per_prompt": 1,
        "sample.out": str(out / "traces.jsonl"),
        "student.preset": "tiny-llama",
        "student.overrides": dict(STUDENT),
        "distill.max_len": 96,
        "distill.max_new_tokens": MAX_NEW_TOKENS,
        "train.batch_size": args.batch,
        "train.lr": args.lr,
        "train.warmup_steps": 10,
        "train.schedule": "constant",
        "train.device": "cpu",
        "train.precision": "float32",
        "train.threads": args.threads,
        "val.every": 0,
        "run.log_every": 1,
        "run.keep_last": 1000,
        "run.plot": False,
        "run.progress": not args.quiet,
    }
    return load_config(distill.Config, None, {**base, **overrides})


def param_counts(model_dir: Path) -> dict[str, int]:
    """Active parameters of a saved model by its own count, with and without the (tied) embedding table."""
    model, _, _ = load_model(str(model_dir), device="cpu")
    active = active_param_count(model, include_mtp=False)
    embedding = model.config.vocab_size * model.config.hidden_size
    return {"active": active, "active_no_embedding": active - embedding}


def split_problems(n: int) -> dict[str, list]:
    """The held-out test problems of every split (fixed: the same for every model)."""
    return {
        name: get_task("addition", digits=d).problems(split="test", n=n, seed=0) for name, d in SPLITS.items()
    }


def score(model_dir: Path, problems: dict[str, list], k: int) -> dict[str, dict[str, float]]:
    """Greedy accuracy and pass@1 over k samples (T 0.6, top-p 0.95) per split, in percent; all splits
    decoded in one batched engine call."""
    model, tok, _ = load_model(str(model_dir), device="cpu")
    task = get_task("addition", **TASK_ARGS)  # scoring does not depend on the digit range
    flat = [p for ps in problems.values() for p in ps]
    params = EvalParams(k=k, max_new_tokens=MAX_NEW_TOKENS, greedy=True, seed=0)
    with torch.no_grad():
        (result,) = evaluate_engine(Engine(model, tok), tok, task, flat, params)
    out, start = {}, 0
    for name, ps in problems.items():
        records = result.records[start : start + len(ps)]
        start += len(ps)
        out[name] = {
            "greedy": 100 * sum(is_correct(r["greedy"]["score"]) for r in records) / len(ps),
            "pass@1": 100 * sum(sum(r["correct"]) / len(r["correct"]) for r in records) / len(ps),
        }
    return out


def flops_by_step(run_dir: Path) -> dict[int, float]:
    """Cumulative training FLOPs at each logged step (`metrics.jsonl`, one row per step)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {int(r["step"]): float(r["flops"]) for r in rows if "flops" in r and "step" in r}


def method_overrides(method: str, args: argparse.Namespace, steps: int) -> dict:
    """The distill config of one method with `steps` optimiser steps."""
    every = max(1, steps // args.points)
    common = {"train.steps": steps, "run.save_every": every}
    if method == "trace SFT":
        return {**common, "distill.method": "sft", "distill.files": [str(Path(args.out) / "traces.jsonl")]}
    if method == "SFT then on-policy":
        return {
            **method_overrides("on-policy", args, steps),
            "train.lr": args.handoff_lr,
            "train.warmup_steps": 0,
        }
    if method == "logit KD":  # bench_distill's setting: T 2, alpha 0.5
        return {
            **common,
            "distill.method": "logits",
            "distill.files": [str(Path(args.out) / "traces.jsonl")],
            "distill.temperature": 2.0,
            "distill.alpha": 0.5,
        }
    return {
        **common,
        "distill.method": "on_policy",
        "distill.kl_estimator": "full",
        "distill.sample_temperature": 1.0,
        "train.lr": args.on_policy_lr,
    }


def run_student(
    out: Path, args: argparse.Namespace, method: str, seed: int, steps: int, charge: float, **extra
):
    """Train one student, then score each of its checkpoints; returns its curve
    [{"step", "flops" (training + charge), "scores"}] and the run's total training FLOPs. `extra`: more
    config overrides ("section.key": value)."""
    run_dir = out / "students" / f"{method.replace(' ', '_')}_seed{seed}"
    overrides = {
        **method_overrides(method, args, steps),
        "run.dir": str(run_dir),
        "train.seed": seed,
        **extra,
    }
    distill.run(base_config(out, args, **overrides))
    flops = flops_by_step(run_dir)
    problems = split_problems(args.eval_problems)
    curve = []
    for ckpt in list_checkpoints(run_dir):
        step = int(ckpt.name.split("_")[-1])
        curve.append(
            {"step": step, "flops": flops[step] + charge, "scores": score(ckpt, problems, args.eval_k)}
        )
    return curve, flops[max(flops)]


def per_step_flops(run_dir: Path) -> float:
    """Mean training FLOPs per step of a finished run."""
    flops = flops_by_step(run_dir)
    return flops[max(flops)] / max(flops)


def mean_curves(curves: list[list[dict]]) -> list[dict]:
    """Seed mean and spread (min, max) of pass@1 and greedy per split, checkpoint by checkpoint."""
    points = []
    for rows in zip(*curves):
        point = {"step": rows[0]["step"], "flops": sum(r["flops"] for r in rows) / len(rows), "scores": {}}
        for split in SPLITS:
            for metric in ("pass@1", "greedy"):
                vals = [r["scores"][split][metric] for r in rows]
                point["scores"].setdefault(split, {})[metric] = {
                    "mean": sum(vals) / len(vals),
                    "min": min(vals),
                    "max": max(vals),
                    "per_seed": vals,
                }
        points.append(point)
    return points


def first_within(points: list[dict], teacher: dict, margin: float) -> dict | None:
    """The first checkpoint whose seed-mean pass@1 is within `margin` points of the teacher on every split."""
    for point in points:
        if all(point["scores"][s]["pass@1"]["mean"] >= teacher[s]["pass@1"] - margin for s in SPLITS):
            return point
    return None


def closest_gap(points: list[dict], teacher: dict) -> float:
    """The smallest worst-split gap (teacher - student seed-mean pass@1) over a method's checkpoints."""
    return min(max(teacher[s]["pass@1"] - p["scores"][s]["pass@1"]["mean"] for s in SPLITS) for p in points)


def plot(report: dict, path: Path) -> None:
    """Held-out pass@1 vs cumulative FLOPs, one panel per split; the teacher's level and its -margin line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher, margin = report["teacher"]["scores"], report["settings"]["margin"]
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(6 * len(SPLITS), 4.2), squeeze=False)
    for ax, split in zip(axes[0], SPLITS):
        for method, points in report["curves"].items():
            xs = [p["flops"] for p in points]
            mid = [p["scores"][split]["pass@1"]["mean"] for p in points]
            lo = [p["scores"][split]["pass@1"]["min"] for p in points]
            hi = [p["scores"][split]["pass@1"]["max"] for p in points]
            (line,) = ax.plot(xs, mid, marker="o", label=method)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
        level = teacher[split]["pass@1"]
        ax.axhline(level, color="black", label="teacher")
        ax.axhline(level - margin, color="black", linestyle="--", label=f"teacher - {margin:g}")
        ax.axvline(report["sampling"]["flops"], color="grey", linestyle=":", label="rejection sampling")
        ax.set_xscale("log")
        ax.set_xlabel("cumulative FLOPs (offline methods include the rejection sampling)")
        ax.set_ylabel(f"held-out pass@1 (%), k={report['settings']['eval_k']}")
        ax.set_title(f"{split} addition")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(report["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> str:
    """CPU model, its matmul flags, load and torch threads: every figure says where it was measured."""
    from r1kit.train.cost import cpu_description

    return f"{cpu_description()}, torch threads {torch.get_num_threads()}"


def bench(args: argparse.Namespace) -> dict:
    """Run the comparison; returns the report written to bench_distill_methods.json."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    report: dict = {"settings": vars(args) | {"splits": SPLITS, "task_args": TASK_ARGS, "student": STUDENT}}

    start = time.perf_counter()
    if args.teacher:
        shutil.copytree(args.teacher, out / "teacher")
        teacher_info: dict = {"reused": args.teacher}
    else:
        teacher_info = train_teacher(
            out, args.teacher_steps, args.teacher_target, args.quiet, TASK_ARGS, TEACHER, "cosine", 80, 50000
        )
    timings["teacher"] = time.perf_counter() - start
    problems = split_problems(args.eval_problems)
    teacher_info["scores"] = score(out / "teacher" / "model", problems, args.eval_k)
    report["teacher"] = teacher_info

    start = time.perf_counter()
    sampled = distill.run_sample(base_config(out, args))
    timings["rejection sampling"] = time.perf_counter() - start
    charge = float(sampled.cost["flops"])
    stats = sampled.metrics
    report["sampling"] = {
        "flops": charge,
        "prompts": stats["prompts"],
        "samples": stats["samples"],
        "acceptance_rate": stats["acceptance_rate"],
        "kept": stats["kept"],
        "mean_tokens": stats["mean_tokens"],
        "generated_tokens": stats["generated_tokens"],
    }
    if stats["kept"] == 0:
        raise RuntimeError("the teacher produced no verified trace: train it longer (--teacher-steps)")

    curves: dict[str, list[list[dict]]] = {m: [] for m in args.methods}
    totals: dict[str, list[float]] = {m: [] for m in args.methods}
    steps: dict[str, int] = {}
    for method in args.methods:  # trace SFT first: its FLOPs set the budget of the others
        start = time.perf_counter()
        for seed in range(args.seeds):
            if method == "SFT then on-policy":
                curve, total = run_handoff(out, args, seed, charge, curves["trace SFT"][seed], steps)
                curves[method].append(curve)
                totals[method].append(total)
                continue
            n = steps.setdefault(method, _steps_for(method, args, out, charge, steps))
            curve, total = run_student(out, args, method, seed, n, 0.0 if method == "on-policy" else charge)
            curves[method].append(curve)
            totals[method].append(total)
        timings[method] = time.perf_counter() - start

    report["params"] = {"teacher": param_counts(out / "teacher" / "model")}
    first_student = next((out / "students").iterdir()) / "model"
    report["params"]["student"] = param_counts(first_student)
    report["steps"] = steps
    report["training_flops"] = {m: sum(v) / len(v) for m, v in totals.items()}
    report["curves"] = {m: mean_curves(c) for m, c in curves.items()}
    teacher_scores = report["teacher"]["scores"]
    report["reached"] = {}
    for method, points in report["curves"].items():
        hit = first_within(points, teacher_scores, args.margin)
        report["reached"][method] = {
            "step": hit["step"] if hit else None,
            "flops": hit["flops"] if hit else None,
            "closest_gap": closest_gap(points, teacher_scores),
        }
    timings["total"] = time.perf_counter() - t0
    report["timings_s"] = timings
    report["machine"] = machine()
    (out / "bench_distill_methods.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "pass1_vs_flops.png")
    (out / "bench_distill_methods.md").write_text(markdown(report) + "\n")
    return report


def run_handoff(out: Path, args: argparse.Namespace, seed: int, charge: float, sft_curve: list[dict],
                steps: dict[str, int]) -> tuple[list[dict], float]:  # fmt: skip
    """ "SFT then on-policy" for one seed: trace SFT's checkpoint at --handoff of its steps (its curve up to
    there is this method's too), then on-policy from it for the steps that reach trace SFT's total FLOPs."""
    sft_dir = out / "students" / f"trace_SFT_seed{seed}"
    ckpts = {int(c.name.split("_")[-1]): c for c in list_checkpoints(sft_dir)}
    handoff = min(ckpts, key=lambda k: abs(k - args.handoff * steps["trace SFT"]))
    spent = flops_by_step(sft_dir)[handoff]
    budget = per_step_flops(sft_dir) * steps["trace SFT"]
    n = max(args.points, round(_steps_for("on-policy", args, out, charge, steps) * (1 - spent / budget)))
    steps.setdefault("SFT then on-policy", n)
    prefix = [p for p in sft_curve if p["step"] <= handoff]
    curve, total = run_student(out, args, "SFT then on-policy", seed, n, charge + spent,
                               **{"student.init": str(ckpts[handoff])})  # fmt: skip
    return prefix + [{**p, "step": handoff + p["step"]} for p in curve], spent + total


def _steps_for(method: str, args: argparse.Namespace, out: Path, charge: float, steps: dict[str, int]) -> int:
    """Steps that bring `method` to trace SFT's total FLOPs (its steps + the rejection sampling), from the
    measured FLOPs per step of seed 0's trace SFT run (the same traces, so the same tokens per step):
    logit KD adds the teacher's forward per token, on-policy the student's sampling forward and the
    teacher's scoring forward over samples assumed as long as the traces (the real count is metered)."""
    if method == "trace SFT" or "trace SFT" not in steps:
        return args.sft_steps
    sft_step = per_step_flops(out / "students" / "trace_SFT_seed0")
    budget = sft_step * steps["trace SFT"] + charge
    ratio = flops_per_token(_config_of(out / "teacher" / "model"), 0) / flops_per_token(
        _config_of(out / "students" / "trace_SFT_seed0" / "model"), 0
    )
    if method == "logit KD":
        return max(args.points, round((budget - charge) / (sft_step * (1 + ratio / 3))))
    return max(args.points, round(budget / (sft_step * (4 / 3 + ratio / 3))))


def _config_of(model_dir: Path) -> ModelConfig:
    return ModelConfig.from_hf_dict(json.loads((model_dir / "config.json").read_text()))


def markdown(report: dict) -> str:
    """The report as markdown: settings, parameters, FLOPs, the curves' table and which method got there."""
    s, p, t = report["settings"], report["params"], report["teacher"]["scores"]
    ratio = p["student"]["active"] / p["teacher"]["active"]
    ratio_ne = p["student"]["active_no_embedding"] / p["teacher"]["active_no_embedding"]
    lines = [
        f"Machine: {report['machine']}.",
        "",
        f"Teacher: D=128 x 4 layers, {p['teacher']['active']:,} active parameters "
        f"({p['teacher']['active_no_embedding']:,} without the tied embedding). Student: D=64 x 4 layers, "
        f"{p['student']['active']:,} ({p['student']['active_no_embedding']:,}): {ratio:.3f} of the teacher "
        f"({ratio_ne:.3f} without embeddings). Students start from random init (seeds 0..{s['seeds'] - 1}).",
        "",
        f"Rejection sampling: {report['sampling']['prompts']} prompts x {s['k']} samples, "
        f"{100 * report['sampling']['acceptance_rate']:.1f}% accepted, {report['sampling']['kept']} traces kept, "
        f"{report['sampling']['flops']:.3g} FLOPs (charged once to trace SFT and logit KD).",
        "",
        f"Steps (batch {s['batch']}): "
        + ", ".join(f"{m} {n}" for m, n in report["steps"].items())
        + "; training FLOPs (seed mean): "
        + ", ".join(f"{m} {f:.3g}" for m, f in report["training_flops"].items())
        + ".",
        "",
        f"Held-out pass@1 (k={s['eval_k']}, T 0.6, top-p 0.95; greedy in brackets), {s['eval_problems']} test "
        f"problems per split, mean of {s['seeds']} seed(s) [min-max of pass@1]. Teacher: "
        + ", ".join(f"{sp} {t[sp]['pass@1']:.1f}% ({t[sp]['greedy']:.1f}%)" for sp in SPLITS)
        + ".",
        "",
        "| method | step | cumulative FLOPs | " + " | ".join(f"{sp} pass@1" for sp in SPLITS) + " |",
        "|---|---|---|" + "---|" * len(SPLITS),
    ]
    for method, points in report["curves"].items():
        for pt in points:
            cells = []
            for sp in SPLITS:
                m = pt["scores"][sp]
                cells.append(
                    f"{m['pass@1']['mean']:.1f} [{m['pass@1']['min']:.1f}-{m['pass@1']['max']:.1f}] "
                    f"({m['greedy']['mean']:.1f})"
                )
            lines.append(f"| {method} | {pt['step']} | {pt['flops']:.3g} | " + " | ".join(cells) + " |")
    lines += ["", f"Within {s['margin']:g} points of the teacher's pass@1 on every split (seed mean):", ""]
    for method, hit in report["reached"].items():
        if hit["flops"] is None:
            lines.append(f"- {method}: not reached; closest worst-split gap {hit['closest_gap']:.1f} points")
        else:
            lines.append(f"- {method}: at step {hit['step']}, {hit['flops']:.3g} FLOPs")
    lines += ["", "Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["timings_s"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = bench(args)
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 1
    print()
    print(
        f"python benchmarks/bench_distill_methods.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    print()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
