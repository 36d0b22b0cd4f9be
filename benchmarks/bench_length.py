"""Does thinking longer pay under GRPO? DeepSeek-R1-Zero's curve on Countdown search, with a control.

    PYTHONPATH=. python benchmarks/bench_length.py --threads 1                  # ~20-30 min on 1 core
    PYTHONPATH=. python benchmarks/bench_length.py --grpo-steps 40 --quick      # a smoke run

1. Cold start: SFT of a tiny llama (2 layers, d=128) on Countdown traces of a *short* random search
   (`r1kit.tasks.countdown`: a budget of 1..max_failed+1 attempts per problem, every new attempt
   starting with "Wait, ", a search that spends its budget gives up with a wrong answer).
2. GRPO from the cold start on the same task's train prompts (prompt + verifier only), with the
   pass-rate filter (`rollout.pass_rate_filter = [0.0, 1.0]`) unless `--no-filter`; held-out pass@1
   (T=1, k samples) and mean completion length every `--eval-every` steps.
3. The control: more SFT on the same finite cold-start set (same problems, more epochs) from the same
   checkpoint, for about the FLOPs GRPO spent, evaluated at the same points of its FLOPs.
4. Budget forcing (s1, arXiv 2501.19393) on the held-out split for the cold start, GRPO and the control:
   thinking caps, and "Wait" extensions (a sampled `</think>` replaced by "Wait", N times).

Writes <workdir>/results.json and <workdir>/length.png (held-out accuracy and mean completion length
vs step for GRPO and the control; the budget curves). Use one thread on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

TASK = "countdown"


def task_args(max_failed: int) -> dict:
    """The Countdown configuration of this benchmark: 3 numbers in 1..9, + and -, targets <= 30 (1,723
    distinct train problems; one random attempt hits 36 % of the time, 2 attempts 57 %, 8 attempts 92 %)."""
    return {
        "numbers": 3,
        "max_number": 9,
        "max_target": 30,
        "ops": "+-",
        "max_failed": max_failed,
        "answer_format": "steps",
    }


def run_sft(run_dir: Path, args, init: str = "", steps: int = 0, seed: int = 0) -> tuple[Path, float]:
    """SFT on `args.sft_examples` cold-start problems (the same finite set for the control)."""
    from r1kit.train import sft
    from r1kit.train.loop import RunConfig, TrainConfig
    from r1kit.train.sections import ModelSection, TokenizerSection

    cfg = sft.Config(
        model=ModelSection(
            preset="tiny-llama", init=init, overrides={} if init else {"num_hidden_layers": 2}
        ),
        tokenizer=TokenizerSection(path=init, vocab_size=384),
        data=sft.SFTData(
            task=TASK,
            task_args={TASK: task_args(args.max_failed)},
            num_examples=args.sft_examples,
            seed=0,
            max_len=160,
        ),
        train=TrainConfig(
            steps=steps or args.sft_steps,
            batch_size=64,
            lr=3e-3 if not init else 1e-3,
            warmup_steps=0 if init else 20,
            schedule="constant",
            grad_clip=1.0,
            device="cpu",
            seed=seed,
            threads=args.threads,
        ),
        run=RunConfig(dir=str(run_dir), progress=False, log_every=10),
    )
    result = sft.run(cfg)
    return Path(result.model_dir), float(result.cost.get("flops", 0.0))


def load(model_dir: Path):
    import torch

    from r1kit.loaders import find_tokenizer_dir
    from r1kit.model import Transformer
    from r1kit.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(find_tokenizer_dir(model_dir))
    return Transformer.from_pretrained(model_dir, dtype=torch.float32).eval(), tok


def held_out(model_dir: Path, problems, args) -> dict:
    """pass@1 over k samples at T=1 (and greedy accuracy) with mean completion lengths."""
    from r1kit.engine import Engine
    from r1kit.rl.grpo import evaluate_policy
    from r1kit.tasks import get_task

    model, tok = load(model_dir)
    task = get_task(TASK, **task_args(args.max_failed))
    out = evaluate_policy(Engine(model, tok), tok, task, problems, samples=args.samples, temperature=1.0,
                          top_p=1.0, max_new_tokens=args.max_new_tokens, template="chat", system="",
                          seed=args.eval_seed)  # fmt: skip
    return out


def sampled_length(model_dir: Path, problems, args) -> float:
    """Mean completion tokens of T=1 samples (the length R1-Zero plots is the sampled one)."""
    from r1kit.engine import Engine, SamplingParams

    model, tok = load(model_dir)
    prompts = [tok.prompt_ids(p.prompt, "chat", "") for p in problems]
    params = SamplingParams(n=args.samples, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=3)
    comps = Engine(model, tok).generate(prompts, params)
    return sum(len(c.token_ids) for c in comps) / max(len(comps), 1)


def budget(model_dir: Path, problems, args) -> list[dict]:
    from r1kit.evaluate import BudgetSection, budget_curve
    from r1kit.tasks import get_task

    model, tok = load(model_dir)
    section = BudgetSection(
        caps=list(args.caps), waits=list(args.waits), samples=args.samples, temperature=1.0,
        max_new_tokens=args.budget_max_new_tokens, wait_string=args.wait_string,
    )  # fmt: skip
    task = get_task(TASK, **task_args(args.max_failed))
    return budget_curve(model, tok, task, problems, section, max_new_tokens=args.budget_max_new_tokens,
                        seed=args.eval_seed)  # fmt: skip


def run_grpo(run_dir: Path, sft_dir: Path, args) -> dict:
    from r1kit.rl import grpo

    rollout = grpo.RolloutSection(
        prompts_per_step=args.prompts,
        group_size=args.group,
        temperature=1.0,
        max_new_tokens=args.max_new_tokens,
        pass_rate_filter=[] if args.no_filter else [0.0, 1.0],
        hard_prompt_samples=args.hard_samples,
    )
    names, weights = ["accuracy", "format"], [1.0, 0.1]
    if args.verify_weight:  # a false "ok" costs more than an honest give-up
        names.append("r1kit.tasks.countdown:verified_search_reward")
        weights.append(args.verify_weight)
    cfg = grpo.Config(
        model=grpo.ModelSection(path=str(sft_dir)),
        data=grpo.DataSection(
            task=TASK, task_args={TASK: task_args(args.max_failed)}, train_problems=args.train_problems
        ),
        reward=grpo.RewardSection(names=names, weights=weights),
        rollout=rollout,
        loss=grpo.LossSection(loss_type="grpo", beta=0.0, mu=1),
        train=grpo.TrainSection(
            steps=args.grpo_steps,
            lr=args.lr,
            schedule="constant",
            grad_clip=1.0,
            device="cpu",
            seed=args.seed,
            threads=args.threads,
            max_seconds=args.grpo_seconds,
        ),  # fmt: skip
        run=grpo.RunSection(dir=str(run_dir), log_every=1, progress=False, tensorboard=False, save_every=0),
        eval=grpo.EvalSection(
            every=args.eval_every,
            split="test",
            problems=args.eval_problems,
            samples=args.samples,
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=args.max_new_tokens,
            seed=args.eval_seed,
        ),  # fmt: skip
    )
    result = grpo.run(cfg)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    curve = []
    flops = 0.0
    for row in rows:
        flops = row.get("cost/flops_total", flops + row.get("cost/flops", 0.0))
        if "eval/pass@1" in row:
            curve.append({"step": row["step"], "pass@1": row["eval/pass@1"], "flops": flops,
                          "greedy_len": row.get("eval/length_mean")})  # fmt: skip
    lengths = [(r["step"], r["completion/length_mean"]) for r in rows if "completion/length_mean" in r]
    return {
        "model_dir": str(result.model_dir),
        "curve": curve,
        "train_length": lengths,
        "flops": float(result.cost.get("flops", flops)),
        "steps": result.steps,
        "skipped": sum(r.get("curriculum/skipped", 0.0) for r in rows),
    }


def plot(path: Path, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    g, c = res["grpo"]["curve"], res["control"]["curve"]
    ax[0].plot([r["step"] for r in g], [r["pass@1"] for r in g], "o-", label="GRPO")
    ax[0].plot([r["step"] for r in c], [r["pass@1"] for r in c], "s--", label="SFT on the cold-start set")
    ax[0].set(xlabel="GRPO step (control: same FLOPs)", ylabel="held-out pass@1 (T=1)", title="accuracy")
    ax[1].plot([r["step"] for r in g], [r["length"] for r in g], "o-", label="GRPO")
    ax[1].plot([r["step"] for r in c], [r["length"] for r in c], "s--", label="control")
    ax[1].set(xlabel="step", ylabel="mean completion tokens (T=1)", title="length")
    for name, style in (("sft", ":"), ("grpo", "-"), ("control", "--")):
        pts = res["budget"].get(name, [])
        caps = [p for p in pts if p["mode"] == "cap"]
        waits = [p for p in pts if p["mode"] == "wait"]
        ax[2].plot(
            [p["think_tokens"] for p in caps], [p["accuracy"] for p in caps], "o" + style, label=f"{name} cap"
        )
        ax[2].plot(
            [p["think_tokens"] for p in waits],
            [p["accuracy"] for p in waits],
            "x" + style,
            label=f"{name} wait",
        )
    ax[2].set(xlabel="mean thinking tokens", ylabel="accuracy", title="budget forcing")
    for a in ax:
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_length"))
    ap.add_argument("--sft-dir", type=Path, default=None, help="reuse a cold-start model directory")
    ap.add_argument("--max-failed", type=int, default=1, help="cold-start search budget: 1..max_failed+1")
    ap.add_argument("--sft-examples", type=int, default=1500)
    ap.add_argument("--sft-steps", type=int, default=600)
    ap.add_argument("--train-problems", type=int, default=400, help="GRPO prompt pool (train split)")
    ap.add_argument("--grpo-steps", type=int, default=200)
    ap.add_argument("--grpo-seconds", type=float, default=900.0)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--no-filter", action="store_true", help="GRPO without the pass-rate filter")
    ap.add_argument("--verify-weight", type=float, default=0.0,
                    help="weight of countdown's verified_search_reward (-1 for a false 'ok'); 0 = off")  # fmt: skip
    ap.add_argument("--hard-samples", type=int, default=0, help="rollout.hard_prompt_samples")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-problems", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--eval-seed", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--caps", type=int, nargs="*", default=[12, 24, 48, 96])
    ap.add_argument("--waits", type=int, nargs="*", default=[0, 1, 2, 4])
    ap.add_argument(
        "--wait-string", default="Wait, ", help="budget forcing's wait string (the traces' own prefix)"
    )
    ap.add_argument("--budget-max-new-tokens", type=int, default=240)
    ap.add_argument("--control-points", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from r1kit.tasks import get_task

    args.workdir.mkdir(parents=True, exist_ok=True)
    task = get_task(TASK, **task_args(args.max_failed))
    test = task.problems("test", n=args.eval_problems, seed=args.eval_seed)
    res: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "budget": {}}
    t0 = time.perf_counter()
    if args.sft_dir:
        sft_dir, sft_flops = args.sft_dir, 0.0
    else:
        sft_dir, sft_flops = run_sft(args.workdir / "sft", args)
    res["time_sft_s"] = time.perf_counter() - t0
    res["sft"] = {**held_out(sft_dir, test, args), "length": sampled_length(sft_dir, test, args)}
    print("cold start:", res["sft"], flush=True)

    t0 = time.perf_counter()
    g = run_grpo(args.workdir / "grpo", sft_dir, args)
    res["time_grpo_s"] = time.perf_counter() - t0
    # the T=1 sampled length at each evaluation step is the rollout's (training prompts) mean length
    train_len = dict(g["train_length"])
    for point in g["curve"]:
        point["length"] = train_len.get(point["step"], train_len.get(point["step"] + 1, float("nan")))
    g["curve"][0]["length"] = res["sft"]["length"]
    res["grpo"] = g
    print("GRPO:", g["curve"], flush=True)

    # the control: SFT on the same finite cold-start set, about GRPO's FLOPs, in segments
    sft_flops_per_step = sft_flops / max(args.sft_steps, 1)
    total_steps = max(1, int(g["flops"] / sft_flops_per_step)) if sft_flops_per_step else args.sft_steps
    seg = max(1, total_steps // args.control_points)
    control = [{"step": 0, "pass@1": res["sft"]["eval/pass@1"], "length": res["sft"]["length"], "flops": 0.0}]
    init = sft_dir
    for k in range(1, args.control_points + 1):
        init, _ = run_sft(args.workdir / f"control{k}", args, init=str(init), steps=seg, seed=k)
        ev = held_out(init, test, args)
        frac = k * seg / total_steps
        control.append({"step": round(frac * g["steps"]), "pass@1": ev["eval/pass@1"],
                        "length": sampled_length(init, test, args), "flops": k * seg * sft_flops_per_step})  # fmt: skip
        print("control:", control[-1], flush=True)
    res["control"] = {"curve": control, "steps": seg * args.control_points, "model_dir": str(init)}

    for name, path in (("sft", sft_dir), ("grpo", Path(g["model_dir"])), ("control", Path(init))):
        res["budget"][name] = budget(path, test, args)
        print("budget", name, [(p["mode"], p["value"], round(p["accuracy"], 3), round(p["think_tokens"], 1))
                               for p in res["budget"][name]], flush=True)  # fmt: skip
    (args.workdir / "results.json").write_text(json.dumps(res, indent=1, default=str))
    plot(args.workdir / "length.png", res)
    print("wrote", args.workdir / "results.json", args.workdir / "length.png")


if __name__ == "__main__":
    main()
