"""Does GRPO teach? A tiny model SFT'ed on addition, then GRPO; held-out accuracy before and after.

    python benchmarks/bench_grpo_learn.py                       # SFT (~1-3 min) + GRPO 180 s + evals
    python benchmarks/bench_grpo_learn.py --sft-dir runs/sft_tiny --grpo-seconds 120 --control

1. Cold start: `r1kit sft configs/sft_tiny.toml` (a 2-layer, d=128 llama on 1-4 digit addition with
   column-by-column working), stopped on held-out greedy accuracy (val.target_accuracy), not a clock.
   `--sft-dir` reuses an SFT run instead.
2. Held-out evaluation of the SFT model on problems of the task's "test" split (never in train or in
   the SFT validation), drawn with `--eval-seed`: greedy accuracy, pass@1 over k samples at the
   training temperature (T=1) and at R1's evaluation setting (T=0.6, top-p 0.95), on the training
   distribution (1-4 digit operands) and on a harder split (exactly 4-digit operands).
3. GRPO with `configs/grpo_tiny.toml` (16 prompts x 8 samples, T=1, lr 1e-4, beta 0) for
   `--grpo-seconds`, through the Python API `r1kit.rl.grpo.run(Config)`.
4. The same evaluation of the GRPO model; with `--control`, also of the SFT model trained further by
   SFT for the same wall time (is the gain RL, or just more training?).

Prints a markdown table (points of accuracy, before -> after) and writes results.json to the work dir.
Use one thread (`--threads 1`, the default) on a shared machine; times are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_sft(workdir: Path, threads: int, max_digits: int, extra: list[str]) -> Path:
    """The cold-start SFT of configs/sft_tiny.toml into workdir/sft; returns the run dir."""
    from r1kit.config import load_config
    from r1kit.train import sft

    run_dir = workdir / "sft"
    args = ["--run.dir", str(run_dir), "--run.progress", "false", "--train.threads", str(threads)]
    if max_digits != 4:
        args += ["--data.task_args", f"{{addition = {{min_digits = 1, max_digits = {max_digits}}}}}"]
    cfg = load_config(sft.Config, ROOT / "configs" / "sft_tiny.toml", args + extra)
    sft.run(cfg)
    return run_dir


def sft_seconds_per_step(run_dir: Path) -> float:
    """Median wall seconds per SFT step, from the run's metrics.jsonl timestamps."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "loss" in r and "val_accuracy" not in r]
    gaps = sorted(b["time"] - a["time"] for a, b in zip(rows, rows[1:]) if b["step"] == a["step"] + 1)
    return gaps[len(gaps) // 2] if gaps else 0.5


def run_sft_control(workdir: Path, sft_dir: Path, seconds: float, threads: int, extra: list[str]) -> Path:
    """More SFT from the SFT model for about `seconds` of wall time (the compute control)."""
    from r1kit.config import load_config
    from r1kit.loaders import resolve_model_dir
    from r1kit.train import sft

    model_dir = resolve_model_dir(sft_dir)
    steps = max(1, int(seconds / sft_seconds_per_step(sft_dir)))
    run_dir = workdir / "sft_control"
    args = ["--run.dir", str(run_dir), "--run.progress", "false", "--train.threads", str(threads)]
    args += ["--model.init", str(model_dir), "--tokenizer.path", str(model_dir)]
    args += ["--train.steps", str(steps), "--train.warmup_steps", "0", "--val.every", "0"]
    cfg = load_config(sft.Config, ROOT / "configs" / "sft_tiny.toml", args + extra)
    t0 = time.perf_counter()
    sft.run(cfg)
    print(f"SFT control: {steps} steps in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return run_dir


def evaluate(model_path: Path, splits: dict[str, dict], args: argparse.Namespace) -> dict[str, dict]:
    """Greedy accuracy and pass@1 at T=1 and T=0.6 on each held-out split of the addition task."""
    import torch

    from r1kit.engine import Engine
    from r1kit.loaders import find_tokenizer_dir, resolve_model_dir
    from r1kit.model import Transformer
    from r1kit.rl.grpo import evaluate_policy
    from r1kit.tasks import get_task
    from r1kit.tokenizer import Tokenizer

    model_dir = resolve_model_dir(model_path)
    tokenizer = Tokenizer.from_pretrained(find_tokenizer_dir(model_dir))
    model = Transformer.from_pretrained(model_dir, dtype=torch.float32).eval()
    engine = Engine(model, tokenizer)
    out = {}
    for name, task_args in splits.items():
        task = get_task("addition", **task_args)
        problems = task.problems(split="test", n=args.eval_problems, seed=args.eval_seed)
        common = dict(max_new_tokens=96, template="chat", system="", seed=args.eval_seed)
        t1 = evaluate_policy(engine, tokenizer, task, problems, samples=args.samples, temperature=1.0,
                             top_p=1.0, **common)  # fmt: skip
        t06 = evaluate_policy(engine, tokenizer, task, problems, samples=args.samples, temperature=0.6,
                              top_p=0.95, greedy=False, **common)  # fmt: skip
        out[name] = {
            "greedy": t1["eval/greedy_acc"],
            "pass@1 T=1": t1["eval/pass@1"],
            "pass@1 T=0.6": t06["eval/pass@1"],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_grpo_learn"))
    ap.add_argument("--sft-dir", type=Path, default=None, help="reuse this SFT run (skip the cold start)")
    ap.add_argument("--sft-max-digits", type=int, default=4, help="operand digits in SFT (5: adds 5-digit)")
    ap.add_argument("--grpo-seconds", type=float, default=180.0, help="GRPO wall-clock budget")
    ap.add_argument("--grpo-steps", type=int, default=1000, help="GRPO step cap")
    ap.add_argument("--lr", type=float, default=None, help="override train.lr of grpo_tiny.toml")
    ap.add_argument("--grpo-arg", action="append", default=[], help="extra grpo override: --grpo-arg=--k=v")
    ap.add_argument("--eval-problems", type=int, default=200)
    ap.add_argument("--samples", type=int, default=8, help="k samples per problem for pass@1")
    ap.add_argument("--eval-seed", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0, help="GRPO seed (prompt order, sampling)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--control", action="store_true", help="also SFT further for the same wall time")
    args = ap.parse_args()

    import torch

    from r1kit.config import load_config
    from r1kit.rl import grpo

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sft_dir = args.sft_dir or run_sft(args.workdir, args.threads, args.sft_max_digits, [])
    sft_s = time.perf_counter() - t0

    splits = {"1-4 digits": {"min_digits": 1, "max_digits": 4}, "4 digits": {"digits": 4}}
    if args.sft_max_digits >= 5:
        splits["5 digits"] = {"digits": 5}
    results: dict = {"before": evaluate(sft_dir, splits, args)}

    overrides = ["--run.dir", str(args.workdir / "grpo"), "--model.path", str(sft_dir)]
    overrides += ["--train.max_seconds", str(args.grpo_seconds), "--train.steps", str(args.grpo_steps)]
    overrides += [
        "--train.threads",
        str(args.threads),
        "--run.progress",
        "false",
        "--train.seed",
        str(args.seed),
    ]
    overrides += ["--eval.every", "50", "--run.save_every", "0"]
    if args.sft_max_digits != 4:
        overrides += [
            "--data.task_args",
            f"{{addition = {{min_digits = 1, max_digits = {args.sft_max_digits}}}}}",
        ]
    if args.lr is not None:
        overrides += ["--train.lr", str(args.lr)]
    overrides += [t for a in args.grpo_arg for t in a.split("=", 1)]
    cfg = load_config(grpo.Config, ROOT / "configs" / "grpo_tiny.toml", overrides)
    if (args.workdir / "grpo").exists():
        import shutil

        shutil.rmtree(args.workdir / "grpo")
    result = grpo.run(cfg)
    results["after"] = evaluate(result.model_dir, splits, args)
    results["grpo"] = {
        "steps": result.steps,
        "wall_s": result.cost.get("wall_s"),
        "time_split_s": result.cost.get("time_split_s"),
        "eval_history": result.eval_history,
    }
    if args.control:
        control_dir = run_sft_control(args.workdir, sft_dir, result.cost.get("wall_s", args.grpo_seconds),
                                      args.threads, [])  # fmt: skip
        results["sft_control"] = evaluate(control_dir, splits, args)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    print(
        f"\nGRPO learning test: tiny llama (2 layers, d=128) SFT'ed on addition ({sft_s:.0f} s incl. "
        f"set-up), then GRPO {result.steps} steps in {results['grpo']['wall_s']:.0f} s "
        f"(lr {cfg.train.lr:g}, {cfg.rollout.prompts_per_step} prompts x {cfg.rollout.group_size} samples, "
        f"T={cfg.rollout.temperature:g}); {args.eval_problems} held-out test problems per split "
        f"(seed {args.eval_seed}), pass@1 over {args.samples} samples; {args.threads} thread(s)\n"
    )
    cols = ["before (SFT)", "after GRPO", "gain"] + (["SFT control"] if args.control else [])
    print("| split | metric | " + " | ".join(cols) + " |")
    print("|---" * (2 + len(cols)) + "|")
    for split in splits:
        for metric in ("greedy", "pass@1 T=1", "pass@1 T=0.6"):
            b, a = results["before"][split][metric], results["after"][split][metric]
            row = [f"{100 * b:.1f}", f"{100 * a:.1f}", f"{100 * (a - b):+.1f}"]
            if args.control:
                row.append(f"{100 * results['sft_control'][split][metric]:.1f}")
            print(f"| {split} | {metric} | " + " | ".join(row) + " |")
    print(f"\ncommand: {command}")
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
