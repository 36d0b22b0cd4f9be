"""GRPO on a real checkpoint: the data, the curves and the summary of a run of configs/smollm2/grpo.toml.

    python benchmarks/bench_real_rl.py --write-data data/add2.jsonl        # 4,000 addition questions
    r1kit grpo configs/smollm2/grpo.toml --model.path models/smollm2-135m-instruct
    python benchmarks/bench_real_rl.py --summarise runs/smollm2_grpo          # curves.png + summary.json

`--write-data` writes 1-2 digit addition questions ("What is 47 + 38?", answer "85") as maths JSONL,
every (a, b) pair at most once, seeded (the file is the same on every machine). `--summarise` reads a
GRPO run's metrics.jsonl and draws reward, completion length and held-out accuracy (greedy and pass@1)
against the step, and prints them with the run's cost line.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def write_data(path: str, n: int = 4000, seed: int = 0) -> int:
    """Write `n` distinct "What is a + b?" problems (1 <= a, b <= 99) as {"id", "problem", "answer"} JSONL."""
    rng, seen, rows = random.Random(seed), set(), []
    if n > 99 * 99:
        raise SystemExit(f"--n at most {99 * 99} distinct pairs")
    while len(rows) < n:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        if (a, b) not in seen:
            seen.add((a, b))
            rows.append({"id": f"add-{a}-{b}", "problem": f"What is {a} + {b}?", "answer": str(a + b)})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return len(rows)


def summarise(run_dir: str) -> dict:
    """Curves (curves.png) and a summary (summary.json) of a GRPO run directory."""
    from r1kit.train.log import save_figure

    rows = [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]
    train = [r for r in rows if "reward/mean" in r]
    evals = [r for r in rows if "eval/greedy_acc" in r]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot([r["step"] for r in train], [r["reward/mean"] for r in train], lw=1)
    axes[0].set(title="reward (rollouts)", xlabel="step")
    axes[1].plot(
        [r["step"] for r in train], [r["completion/length_mean"] for r in train], lw=1, label="rollouts"
    )
    axes[1].plot([r["step"] for r in evals], [r["eval/length_mean"] for r in evals], "o-", label="held-out")
    axes[1].set(title="completion length (tokens)", xlabel="step")
    axes[1].legend()
    axes[2].plot([r["step"] for r in evals], [r["eval/greedy_acc"] for r in evals], "o-", label="greedy")
    axes[2].plot(
        [r["step"] for r in evals], [r.get("eval/pass@1", float("nan")) for r in evals], "s-", label="pass@1"
    )
    axes[2].set(title="held-out accuracy", xlabel="step", ylim=(0, 1))
    axes[2].legend()
    save_figure(fig, Path(run_dir) / "curves.png")
    last = rows[-1]
    summary = {
        "steps": train[-1]["step"] if train else 0,
        "eval": [
            {k: r[k] for k in ("step", "eval/greedy_acc", "eval/pass@1", "eval/length_mean") if k in r}
            for r in evals
        ],
        "cost": {k: last.get(k) for k in ("tokens", "flops", "mfu", "device_hours", "dollars")},
    }
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-data", default="", help="write the addition JSONL here")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--summarise", default="", help="a GRPO run directory")
    args = ap.parse_args(argv)
    if not (args.write_data or args.summarise):
        ap.error("give --write-data PATH or --summarise RUN_DIR")
    if args.write_data:
        print(f"{write_data(args.write_data, args.n)} problems -> {args.write_data}")
    if args.summarise:
        summarise(args.summarise)


if __name__ == "__main__":
    main()
