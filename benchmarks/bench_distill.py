"""End to end on a tiny model: teacher SFT -> rejection sampling -> distillation, against fair controls.

1. Teacher: a tiny Llama-style model (D=128, 2 layers) fine-tuned on 1-3 digit addition with column-by-column
   worked solutions (`r1kit.train.sft`), stopped once held-out greedy accuracy reaches --teacher-target.
2. `r1kit sample`: the teacher samples k completions per train prompt at temperature 0.6 / top-p 0.95; only
   verified-correct, well-formed ones are kept, at most one per prompt (`r1kit.distill.run_sample`). Every
   kept trace is re-scored here and must score 1.
3. `r1kit distill`: a smaller dense student (D=64, 2 layers) is fine-tuned for the same number of steps, with
   the same seeds, batch and learning rate, on datasets with the SAME prompts (the prompts the teacher solved)
   and the same number of conversations; only the assistant turns differ:
   - "verified traces": the teacher's verified reasoning traces (R1-Distill);
   - "answer-only": the gold answer after an empty thinking block (the same student without the teacher's
     traces: the control the issue asks for);
   - "unverified samples": the teacher's first sample for each prompt, right or wrong (no rejection);
   - "gold worked solutions" (reference, --no-gold skips it): the task's own solutions, which the teacher
     was trained on;
   - optionally (--logits) logit distillation on the verified traces: alpha T^2 KL + (1 - alpha) CE.
4. Every model is evaluated on held-out test problems (`r1kit.evaluate.evaluate`, one batched engine call):
   greedy accuracy, pass@1 over k samples at temperature 0.6 / top-p 0.95, maj@k.

Prints a markdown table and writes `bench_distill.json` to --out.

    OMP_NUM_THREADS=1 python benchmarks/bench_distill.py --threads 1   # ~3.5 CPU minutes
    python benchmarks/bench_distill.py --seeds 3                      # student seeds averaged
    python benchmarks/bench_distill.py --teacher runs/bench_distill/teacher   # reuse a teacher
    python benchmarks/bench_distill.py --quick --teacher DIR          # a smoke test (numbers meaningless)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from r1kit import distill, evaluate
from r1kit.config import load_config
from r1kit.loaders import load_model
from r1kit.tasks import get_task
from r1kit.tokenizer import format_assistant
from r1kit.train import sft
from r1kit.train.loop import RunConfig, TrainConfig
from r1kit.train.pretrain import ModelSection, TokenizerSection

TASK_ARGS = {"min_digits": 1, "max_digits": 3}
TEACHER = {"num_hidden_layers": 2}  # tiny-llama: D=128, 4 heads (2 KV), MLP 512
STUDENT = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def train_teacher(
    out: Path,
    steps: int,
    target: float,
    quiet: bool,
    task_args: dict | None = None,
    overrides: dict | None = None,
    schedule: str = "constant",
    max_len: int = 64,
    examples: int = 5000,
) -> dict:
    """SFT of the teacher on the task's worked solutions (addition with `task_args`, default this
    benchmark's 1-3 digits; tiny-llama with `overrides`, default TEACHER), stopped at `target` held-out
    greedy accuracy. `examples` distinct worked solutions are drawn."""
    config = sft.Config(
        model=ModelSection(preset="tiny-llama", overrides=dict(TEACHER if overrides is None else overrides)),
        tokenizer=TokenizerSection(vocab_size=512),
        data=sft.SFTData(
            task="addition",
            task_args={"addition": dict(task_args or TASK_ARGS)},
            num_examples=examples,
            max_len=max_len,
        ),
        val=sft.ValSection(every=25, problems=64, max_new_tokens=max_len - 16, target_accuracy=target),
        train=TrainConfig(
            steps=steps, batch_size=32, lr=3e-3, warmup_steps=10, schedule=schedule, device="cpu"
        ),
        run=RunConfig(dir=str(out / "teacher"), progress=not quiet),
    )
    result = sft.run(config)
    print(f"teacher: {result.metrics['steps']} steps, val greedy {result.metrics.get('val_accuracy', 0):.3f}")
    return {"steps": result.metrics["steps"], "val_accuracy": result.metrics.get("val_accuracy")}


def distill_config(out: Path, args: argparse.Namespace, **overrides) -> distill.Config:
    """The shared sample/distill config of this benchmark, with `overrides` ("section.key": value)."""
    base = {
        "teacher.path": str(out / "teacher"),
        "sample.task_args": {"addition": dict(TASK_ARGS)},
        "sample.prompts": args.prompts,
        "sample.k": args.k,
        "sample.max_new_tokens": 48,
        "sample.max_per_prompt": 1,
        "sample.out": str(out / "traces.jsonl"),
        "student.preset": "tiny-llama",
        "student.overrides": dict(STUDENT),
        "distill.max_len": 64,
        "train.steps": args.student_steps,
        "train.batch_size": 32,
        "train.lr": 3e-3,
        "train.warmup_steps": 10,
        "train.schedule": "constant",
        "train.device": "cpu",
        "val.every": 0,
        "run.progress": not args.quiet,
    }
    return load_config(distill.Config, None, {**base, **overrides})


def answer_only(rows: list[dict]) -> list[dict]:
    """The same prompts with the gold answer and an empty thinking block."""
    return [
        {
            "messages": [
                row["messages"][-2],
                {"role": "assistant", "content": format_assistant("", row["reference"])},
            ],
            "id": row["id"],
        }
        for row in rows
    ]


def gold_solutions(rows: list[dict], prompts: int) -> list[dict]:
    """The same prompts with the task's own worked solution (what the teacher was trained on)."""
    task = get_task("addition", **TASK_ARGS)
    by_id = {p.id: p for p in task.problems(split="train", n=prompts, seed=0)}  # sample.seed = 0
    return [{"messages": task.sft_messages(by_id[row["id"]]), "id": row["id"]} for row in rows]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score(model_dir: Path, problems, k: int) -> dict[str, float]:
    """Held-out greedy accuracy, pass@1 over k samples (T 0.6, top-p 0.95), maj@k, mean thinking tokens."""
    model, tok, _ = load_model(str(model_dir), device="cpu")
    task = get_task("addition", **TASK_ARGS)
    with torch.no_grad():
        sampling = evaluate.SamplingSection(k=k, max_new_tokens=48, best_of=[])
        result = evaluate.evaluate(model, tok, task, problems, sampling)
    m = result.metrics
    return {
        "greedy_acc": m["greedy_acc"],
        "pass@1": m["pass@1"],
        f"maj@{k}": m[f"maj@{k}"],
        "think_tokens": m["think_tokens"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench_distill")
    parser.add_argument("--teacher", default="", help="reuse this teacher run directory (skip step 1)")
    parser.add_argument("--teacher-steps", type=int, default=900)
    parser.add_argument(
        "--teacher-target", type=float, default=0.6, help="stop the teacher at this val accuracy"
    )
    parser.add_argument("--prompts", type=int, default=1500, help="train prompts for rejection sampling")
    parser.add_argument("--k", type=int, default=4, help="teacher samples per prompt")
    parser.add_argument("--student-steps", type=int, default=1000)
    parser.add_argument("--eval-problems", type=int, default=200)
    parser.add_argument("--logits", action="store_true", help="also run logit distillation")
    parser.add_argument(
        "--no-gold",
        dest="gold",
        action="store_false",
        help="skip the reference student trained on the task's gold worked solutions",
    )
    parser.add_argument("--seeds", type=int, default=1, help="student seeds (scores are averaged)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.teacher_steps, args.prompts, args.student_steps, args.eval_problems = 10, 16, 4, 8
    return args


def bench(args: argparse.Namespace) -> dict:
    """Run the benchmark; returns the report written to `bench_distill.json` (settings, sampling
    statistics, held-out scores per model, timings). Raises RuntimeError when the teacher produced no
    verified trace, AssertionError when a kept trace does not verify."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    # 1. teacher
    start = time.perf_counter()
    teacher: dict = {"reused": args.teacher}
    if args.teacher:
        shutil.copytree(args.teacher, out / "teacher")
        log = out / "teacher" / "metrics.jsonl"
        if log.is_file():
            last = json.loads(log.read_text().splitlines()[-1])
            teacher.update(steps=last.get("step"), val_accuracy=last.get("val_accuracy"))
    else:
        teacher = train_teacher(out, args.teacher_steps, args.teacher_target, args.quiet)
    timings["teacher"] = time.perf_counter() - start

    # 2. rejection sampling (verified) and the same samples without verification (same seed)
    start = time.perf_counter()
    sampled = distill.run_sample(distill_config(out, args))
    verified = read_rows(out / "traces.jsonl")
    distill.run_sample(
        distill_config(
            out,
            args,
            **{
                "sample.verify": False,
                "sample.require_format": False,
                "sample.out": str(out / "unverified.jsonl"),
                "run.progress": False,
            },
        )
    )
    timings["sampling"] = time.perf_counter() - start
    n = len(verified)
    if n == 0:
        raise RuntimeError("the teacher produced no verified trace: train it longer (--teacher-steps)")
    # no rejection: the first sample of the same prompts, right or wrong (same seed: the same samples)
    first_sample = {row["id"]: row for row in read_rows(out / "unverified.jsonl")}
    unverified = [first_sample[row["id"]] for row in verified]
    distill.write_chat_jsonl(out / "unverified_n.jsonl", unverified)
    distill.write_chat_jsonl(out / "answer_only.jsonl", answer_only(verified))
    task = get_task("addition", **TASK_ARGS)
    # every kept trace must score 1 under the task's verifier (the point of rejection sampling)
    verified_scores = [task.score(r["messages"][-1]["content"], _problem(r)) for r in verified]
    bad = [r["id"] for r, sc in zip(verified, verified_scores) if sc != 1.0]
    assert not bad, f"rejection sampling kept {len(bad)} traces that do not verify: {bad[:5]}"
    wrong = sum(task.score(r["messages"][-1]["content"], _problem(r)) < 1.0 for r in unverified)
    distill.write_chat_jsonl(out / "gold.jsonl", gold_solutions(verified, args.prompts))

    # 3. students: same architecture, steps, batch and seeds, the same prompts; only the assistant turns differ
    runs = {
        "verified traces (distilled)": ("sft", out / "traces.jsonl"),
        "answer-only, same prompts (baseline)": ("sft", out / "answer_only.jsonl"),
        "unverified samples, same prompts (no rejection)": ("sft", out / "unverified_n.jsonl"),
    }
    if args.gold:
        runs["gold worked solutions, same prompts (reference)"] = ("sft", out / "gold.jsonl")
    if args.logits:
        runs["logit distillation on verified traces"] = ("logits", out / "traces.jsonl")
    problems = get_task("addition", **TASK_ARGS).problems(split="test", n=args.eval_problems, seed=0)
    per_seed: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    start = time.perf_counter()
    for i, (name, (method, path)) in enumerate(runs.items()):
        for seed in range(args.seeds):
            run_dir = out / f"student_{i}_seed{seed}"
            overrides = {"distill.files": [str(path)], "run.dir": str(run_dir), "train.seed": seed}
            if method == "logits":
                overrides.update(
                    {"distill.method": "logits", "distill.temperature": 2.0, "distill.alpha": 0.5}
                )
            result = distill.run(distill_config(out, args, **overrides))
            per_seed[name].append(score(result.model_dir, problems, args.k))
    timings["students"] = time.perf_counter() - start

    # 4. held-out evaluation (students were scored as they finished)
    start = time.perf_counter()
    scores = {"teacher": score(out / "teacher", problems, args.k)}
    for name, runs_ in per_seed.items():
        scores[name] = {key: sum(r[key] for r in runs_) / len(runs_) for key in runs_[0]}
        scores[name]["per_seed_greedy_acc"] = [r["greedy_acc"] for r in runs_]
    timings["eval"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - t0

    stats = sampled.metrics
    report = {
        "settings": vars(args),
        "teacher": teacher,
        "sampling": {
            "prompts": stats["prompts"],
            "samples": stats["samples"],
            "acceptance_rate": stats["acceptance_rate"],
            "solved_rate": stats["solved_rate"],
            "kept": n,
            "mean_tokens": stats["mean_tokens"],
            "verified_wrong": 0,
            "unverified_wrong": wrong,
        },
        "scores": scores,
        "timings_s": timings,
    }
    (out / "bench_distill.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = bench(args)
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 1
    stats, scores, timings = report["sampling"], report["scores"], report["timings_s"]
    n = stats["kept"]
    k = args.k
    print()
    print(
        f"python benchmarks/bench_distill.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip()
    )
    print()
    print(
        f"Rejection sampling: {stats['prompts']} train prompts x {k} samples (T 0.6, top-p 0.95): "
        f"{100 * stats['acceptance_rate']:.1f}% of samples verified correct, {100 * stats['solved_rate']:.1f}% of "
        f"prompts solved; kept {n} traces (1 per solved prompt, {stats['mean_tokens']:.1f} tokens on average). "
        f"All kept traces verify; the first samples of the same prompts (no rejection) hold "
        f"{stats['unverified_wrong']} wrong answers."
    )
    print()
    print(
        f"Teacher: D=128 x 2 layers, {report['teacher'].get('steps', '?')} SFT steps on worked solutions. "
        f"Students: dense D=64 x 2 layers, {args.student_steps} steps x batch 32 on {n} conversations each. "
        f"Held-out: {args.eval_problems} test problems, 1-3 digit addition."
    )
    print()
    print(f"Student scores are means over {args.seeds} seed(s); greedy accuracy per seed in brackets.")
    print()
    print(f"| model | data | greedy acc | pass@1 (k={k}) | maj@{k} | thinking tokens |")
    print("|---|---|---|---|---|---|")
    for name, s in scores.items():
        model = "teacher D=128" if name == "teacher" else "student D=64"
        data = "worked solutions (SFT)" if name == "teacher" else name
        seeds = s.get("per_seed_greedy_acc", [])
        per_seed = f" [{', '.join(f'{100 * a:.1f}' for a in seeds)}]" if len(seeds) > 1 else ""
        print(
            f"| {model} | {data} | {100 * s['greedy_acc']:.1f}%{per_seed} | {100 * s['pass@1']:.1f}% | "
            f"{100 * s[f'maj@{k}']:.1f}% | {s['think_tokens']:.1f} |"
        )
    print()
    print("time: " + ", ".join(f"{name} {sec:.0f} s" for name, sec in timings.items()))
    return 0


def _problem(row: dict):
    from r1kit.tasks import Problem

    return Problem(id=row["id"], prompt=row["messages"][-2]["content"], answer=row["reference"])


if __name__ == "__main__":
    sys.exit(main())
