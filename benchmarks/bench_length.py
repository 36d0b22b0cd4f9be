"""Does thinking longer pay under GRPO? DeepSeek-R1-Zero's curve on a search task, against two controls.

    PYTHONPATH=. python benchmarks/bench_length.py --seeds 3 --threads 1      # ~30 min a seed on 1 core
    PYTHONPATH=. python benchmarks/bench_length.py --quick --seeds 1          # a smoke run (~3 min)
    PYTHONPATH=. python benchmarks/bench_length.py --task chase --sft-examples 4000 --train-problems 2000 \
        --max-new-tokens 160 --only-seed 0                                    # one seed (run seeds in parallel)

`--task countdown` (default) or `--task chase` (`r1kit.tasks.chase`: the start letter whose 3-hop chain
through a random permutation ends at the target; the start cannot be computed without trying, so only a
longer search solves more: k of 10 attempts solve k / 10). The steps below are Countdown's; chase's cold
start is the same kind of short search (`chase_args`).

For each seed (0, 1, ... --seeds - 1):

1. Cold start: SFT of a tiny llama (2 layers, d=128, seeded init) on Countdown traces of a *short*
   random search (`r1kit.tasks.countdown`: 3 numbers in 1..9 (with 4 the cold start could not execute
   the 3-step chains: 2.7% held-out pass@1, docs/LOG.md 2026-12-06), + and -, only problems one random
   attempt solves 10..30 % of the time; a budget of 1..max_failed+1 attempts per trace, every new
   attempt starting with "Wait, ", a search that spends its budget gives up with a wrong answer, half
   of the hits re-checked on one more "Wait, check ... ok" line).
2. From that checkpoint, each arm at the FLOPs GRPO spends (sampling + updates, as `r1kit.rl.grpo`
   counts them):
   - GRPO on the task's train prompts (prompt + verifier only), the pass-rate filter
     (`rollout.pass_rate_filter = [0.0, 1.0]`) unless `--no-filter`, and countdown's
     `verified_search_reward` (a false "ok" costs more than an honest "no") at `--verify-weight`
     (chase: `--verify verdicts` fines every false verdict, a hit called "no" too);
   - expert iteration (`r1kit.expert_iteration`: GRPO's prompts in GRPO's order, its verifier, k
     samples per prompt, fine-tune on the correct ones, repeat), the fair control;
   - more SFT on the same finite cold-start set (same problems, more epochs).
3. Held-out test split (the same problems for every arm and seed): pass@1 over `--samples` samples at
   T=1 / top-p 1 (the samples of a random search: the length R1-Zero plots is the sampled one), the
   mean completion length, attempts per sample, false "ok" claims; and budget forcing (s1, arXiv
   2501.19393) of every final model: thinking caps, and "Wait" extensions (a sampled `</think>`
   replaced by "Wait, ", N times).

Writes <workdir>/report.md (mean ± spread over seeds: final held-out table, budget tables with a
monotonicity check, the curves), <workdir>/results.json, <workdir>/length.png (R1-Zero's plot: held-out
pass@1 and mean sampled completion length against FLOPs, every arm and seed) and budget.png. A seed
whose <workdir>/seed<S>/result.json exists is read back, not rerun. Use one thread on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ARMS = ("cold start", "GRPO", "expert iteration", "SFT on cold-start set")


def task_args(args) -> dict:
    """The task's configuration (`--task`; chase's is `chase_args`). Countdown's: --numbers numbers (3) in
    1..9, + and -, targets <= 30, only problems whose hit rate (share of random attempts that reach the target) is in [--min-hit, --max-hit] (default 0.1..0.3: one
    attempt solves ~20 %, 2 attempts ~36 %, 8 attempts ~83 %), so a 1..2-attempt cold start mostly gives
    up and a longer search is what solves; `--recheck` of the hits replay themselves on one more line."""
    if args.task == "chase":
        return chase_args(args)
    return {
        "numbers": args.numbers,
        "max_number": 9,
        "max_target": 30,
        "ops": "+-",
        "max_failed": args.max_failed,
        "answer_format": "steps",
        "min_hit_rate": args.min_hit,
        "max_hit_rate": args.max_hit,
        "recheck": args.recheck,
    }


def chase_args(args) -> dict:
    """Pointer chase (`r1kit.tasks.chase`): a random permutation of --size letters, the start whose
    --hops-step chain ends at the target; the cold start tries starts in order and goes on after a miss
    with probability --continue-p (mean ~1.7 attempts, ~17 % solved); k attempts solve k / size."""
    return {"size": args.size, "hops": args.hops, "continue_p": args.continue_p, "recheck": args.recheck,
            "symbols": args.symbols}  # fmt: skip


def verify_reward(args) -> str:
    """The task's verified-search reward: -1 for a false "ok" (chase with `--verify verdicts`: for any false
    verdict, a hit called "no" included)."""
    if args.task == "chase":
        name = "honest_chase_reward" if args.verify == "verdicts" else "verified_chase_reward"
        return f"r1kit.tasks.chase:{name}"
    return "r1kit.tasks.countdown:verified_search_reward"


def run_sft(run_dir: Path, args, seed: int, init: str = "", steps: int = 0) -> tuple[Path, float]:
    """SFT on `args.sft_examples` cold-start problems (the same finite set for the control)."""
    from r1kit.train import sft
    from r1kit.train.loop import RunConfig, TrainConfig
    from r1kit.train.sections import ModelSection, TokenizerSection

    cfg = sft.Config(
        model=ModelSection(
            preset="tiny-llama", init=init, overrides={} if init else {"num_hidden_layers": args.layers}
        ),
        tokenizer=TokenizerSection(path=init, vocab_size=384),
        data=sft.SFTData(
            task=args.task,
            task_args={args.task: task_args(args)},
            num_examples=args.sft_examples,
            seed=0,
            max_len=args.max_len,
        ),
        train=TrainConfig(
            steps=steps or args.sft_steps,
            batch_size=64,
            lr=args.control_lr if init else args.sft_lr,
            warmup_steps=0 if init else 20,
            schedule="constant",
            grad_clip=1.0,
            device="cpu",
            seed=seed,
            threads=args.threads,
        ),
        run=RunConfig(dir=str(run_dir), progress=False, log_every=50),
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


def search_stats(text: str, problem, task: str = "countdown") -> tuple[int, bool, bool]:
    """(attempt lines, whether it claimed a hit, whether a claim was false) of one sampled completion."""
    if task == "chase":
        from r1kit.tasks.chase import search_lines, verified_chase_reward

        lines = search_lines(text)
        attempts = sum(1 for _, _, recheck in lines if not recheck)
        return attempts, any(v == "ok" for _, v, _ in lines), verified_chase_reward(text, problem) < 0
    from r1kit.tasks.countdown import CHECK, verified_search_reward

    think = text.split("</think>", 1)[0]
    lines = [x.strip().removeprefix("Wait,").strip() for x in think.splitlines()]
    attempts = sum(1 for x in lines if x.endswith((" ok", " no")) and not x.startswith(CHECK))
    claimed = any(x.endswith(" ok") for x in lines)
    return attempts, claimed, verified_search_reward(text, problem) < 0


def held_out(model_dir: Path, problems, args) -> dict:
    """pass@1 over k samples (T=1, top-p 1), mean sampled completion tokens and the search's shape."""
    from r1kit.engine import Engine
    from r1kit.evaluate import EvalParams, evaluate_engine
    from r1kit.tasks import get_task

    model, tok = load(model_dir)
    task = get_task(args.task, **task_args(args))
    params = EvalParams(k=args.samples, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
                        greedy=False, seed=args.eval_seed)  # fmt: skip
    (result,) = evaluate_engine(Engine(model, tok), tok, task, problems, params, template="chat", system="")
    stats = [search_stats(s, p, args.task) for r, p in zip(result.records, problems) for s in r["samples"]]
    n = max(len(stats), 1)
    out = {
        "pass@1": result.metrics["pass@1"],
        "maj@k": result.metrics[f"maj@{args.samples}"],  # majority vote over the k samples' answers
        "length": result.metrics["completion_tokens"],
        "attempts": sum(a for a, _, _ in stats) / n,
        "long_search": sum(a >= 3 for a, _, _ in stats) / n,
        "claims": sum(c for _, c, _ in stats) / n,
        "false_claims": sum(f for _, _, f in stats) / n,
    }
    if args.task == "chase":  # can the model execute the lookups? (each hop of each attempt line, vs the map)
        samples = [(s, p) for r, p in zip(result.records, problems) for s in r["samples"]]
        out.update(hop_accuracy(samples, args.hops))
    return out


def hop_accuracy(samples, hops: int) -> dict:
    """Over the attempt lines of (completion text, problem) pairs of chase: the share whose k-th symbol is the
    map's image of the (k-1)-th, k = 1..hops; of whole right chains; and of the two false verdicts, an "ok"
    on a line that does not hit the target (false_ok_lines) and a "no" on one that does (hidden_hits)."""
    from r1kit.tasks.chase import chain_ok, search_lines

    right, whole, lines, false_ok, hidden = [0] * hops, 0, 0, 0, 0
    for text, problem in samples:
        mapping, target = problem.meta["map"], problem.meta["target"]
        for line, verdict, _ in search_lines(text):
            lines += 1
            ok = True
            for k in range(1, hops + 1):
                good = len(line) > k and line[k] == mapping.get(line[k - 1])
                right[k - 1] += good
                ok &= good
            whole += ok
            hit = chain_ok(line, mapping, target, hops)
            false_ok += verdict == "ok" and not hit
            hidden += verdict == "no" and hit
    n = max(lines, 1)
    return {**{f"hop{k + 1}": right[k] / n for k in range(hops)}, "chains_ok": whole / n,
            "false_ok_lines": false_ok / n, "hidden_hits": hidden / n}  # fmt: skip


def budget(model_dir: Path, problems, args) -> list[dict]:
    from r1kit.evaluate import BudgetSection, budget_curve
    from r1kit.tasks import get_task

    model, tok = load(model_dir)
    section = BudgetSection(
        caps=list(args.caps), waits=list(args.waits), samples=args.samples, temperature=1.0,
        max_new_tokens=args.budget_max_new_tokens, wait_string=args.wait_string,
    )  # fmt: skip
    task = get_task(args.task, **task_args(args))
    return budget_curve(model, tok, task, problems, section, max_new_tokens=args.budget_max_new_tokens,
                        seed=args.eval_seed)  # fmt: skip


def eval_section(args):
    """GRPO's and expert iteration's held-out evaluation during training: the bench's protocol."""
    from r1kit.rl import grpo

    return grpo.EvalSection(
        every=args.eval_every, split="test", problems=args.eval_problems, samples=args.samples,
        temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=args.eval_seed,
    )  # fmt: skip


def data_section(args):
    from r1kit.rl import grpo

    return grpo.DataSection(
        task=args.task, task_args={args.task: task_args(args)}, train_problems=args.train_problems
    )


def run_grpo(run_dir: Path, sft_dir: Path, args, seed: int) -> dict:
    """GRPO from the cold start; its held-out pass@1 and rollout length (train prompts, T=1) vs FLOPs."""
    from r1kit.rl import grpo

    rollout = grpo.RolloutSection(
        prompts_per_step=args.prompts,
        group_size=args.group,
        temperature=1.0,
        max_new_tokens=args.max_new_tokens,
        pass_rate_filter=[] if args.no_filter else [0.0, 1.0],
    )
    names, weights = ["accuracy", "format"], [1.0, 0.1]
    if args.verify_weight:  # a false "ok" costs more than an honest give-up
        names.append(verify_reward(args))
        weights.append(args.verify_weight)
    cfg = grpo.Config(
        model=grpo.ModelSection(path=str(sft_dir)),
        data=data_section(args),
        reward=grpo.RewardSection(names=names, weights=weights),
        rollout=rollout,
        loss=grpo.LossSection(loss_type="grpo", beta=0.0, mu=1),
        train=grpo.TrainSection(
            steps=args.grpo_steps,
            lr=args.lr,
            schedule="constant",
            grad_clip=1.0,
            device="cpu",
            seed=seed,
            threads=args.threads,
        ),
        run=grpo.RunSection(dir=str(run_dir), log_every=1, progress=False, tensorboard=False, save_every=0),
        eval=eval_section(args),
    )
    result = grpo.run(cfg)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    lengths = {r["step"]: r["completion/length_mean"] for r in rows if "completion/length_mean" in r}
    curve, flops = [], 0.0
    for row in rows:
        flops = row.get("cost/flops_total", flops + row.get("cost/flops", 0.0))
        if "eval/pass@1" in row:  # the rollout of the step evaluated (or the next one, for step 0)
            length = lengths.get(row["step"], lengths.get(row["step"] + 1, float("nan")))
            curve.append(
                {"step": row["step"], "flops": flops, "accuracy": row["eval/pass@1"], "length": length}
            )
    return {"model_dir": str(result.model_dir), "curve": curve, "flops": float(result.cost.get("flops", flops)),
            "steps": result.steps}  # fmt: skip


def run_ei(run_dir: Path, sft_dir: Path, args, seed: int, budget_flops: float) -> dict:
    """Expert iteration at `budget_flops`; held-out pass@1 and sampled length (train prompts) vs FLOPs."""
    from r1kit import expert_iteration as ei
    from r1kit.train.loop import RunConfig, TrainConfig

    evs = eval_section(args)
    cfg = ei.Config(
        model=ei.ModelDirSection(path=str(sft_dir)),
        data=data_section(args),
        ei=ei.EISection(
            budget_flops=budget_flops,
            prompts_per_round=args.ei_prompts,
            k=args.group,
            temperature=1.0,
            max_new_tokens=args.max_new_tokens,
            max_len=args.max_len,
        ),
        train=TrainConfig(
            lr=args.ei_lr,
            batch_size=32,
            warmup_steps=0,
            schedule="constant",
            grad_clip=1.0,
            device="cpu",
            seed=seed,
            threads=args.threads,
        ),
        run=RunConfig(dir=str(run_dir), progress=False, log_every=50, plot=False),
        eval=type(evs)(**{**vars(evs), "every": args.ei_eval_every}),
    )
    result = ei.run(cfg)
    _, tok = load(sft_dir)
    lengths = {}
    for info in result.rounds:  # sampled tokens = prompts' prefill + completions (as GRPO counts them)
        prompt_tokens = sum(len(tok.prompt_ids(p, "chat", "")) for p in info["prompts"])
        lengths[info["round"]] = (info["sampled_tokens"] - prompt_tokens) / (
            len(info["prompts"]) * args.group
        )
    curve = [{"step": h["step"], "flops": h["flops"], "accuracy": h["eval/pass@1"],
              "length": lengths.get(h["step"], lengths.get(h["step"] - 1, float("nan")))}
             for h in result.history if "eval/pass@1" in h]  # fmt: skip
    return {"model_dir": str(result.model_dir), "curve": curve, "flops": float(result.metrics["flops"]),
            "steps": result.metrics["rounds"]}  # fmt: skip


def run_control(run_dir: Path, sft_dir: Path, sft_flops: float, args, seed: int, budget_flops: float,
                test, start: dict) -> dict:  # fmt: skip
    """More SFT on the same cold-start set at about `budget_flops`, in --control-points segments."""
    per_step = sft_flops / max(args.sft_steps, 1)
    total = max(1, int(budget_flops / per_step))
    seg = max(1, total // args.control_points)
    curve = [{"step": 0, "flops": 0.0, "accuracy": start["pass@1"], "length": start["length"]}]
    init = sft_dir
    for k in range(1, args.control_points + 1):
        init, _ = run_sft(run_dir / f"part{k}", args, seed=1000 * seed + k, init=str(init), steps=seg)
        ev = held_out(init, test, args)
        curve.append(
            {"step": k * seg, "flops": k * seg * per_step, "accuracy": ev["pass@1"], "length": ev["length"]}
        )
    return {"model_dir": str(init), "curve": curve, "flops": seg * args.control_points * per_step,
            "steps": seg * args.control_points}  # fmt: skip


def run_seed(seed: int, args, test) -> dict:
    """One seed's cold start, three arms, final held-out evaluations and budget curves."""
    wd = args.workdir / f"seed{seed}"
    done = wd / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    pilot = wd / "cold_start.json"  # a cold start already trained and scored (--cold-start-only) is reused
    if pilot.exists():
        res = json.loads(pilot.read_text())
        sft_dir, sft_flops, start = Path(res["sft_dir"]), float(res["sft_flops"]), res["final"]["cold start"]
    elif args.cold_start_from is not None:  # a longer cold start: another run's more-SFT model of this seed
        src = json.loads((args.cold_start_from / f"seed{seed}" / "result.json").read_text())
        longer = src["arms"]["SFT on cold-start set"]
        # sft_flops stays the first SFT's: the control's per-step cost is read from it
        sft_dir, sft_flops = Path(longer["model_dir"]), float(src["sft_flops"])
        res = {"seed": seed, "final": {}, "budget": {}, "arms": {}, "time_s": {}, "sft_dir": str(sft_dir),
               "sft_flops": sft_flops, "cold_start_flops": sft_flops + float(longer["flops"]),
               "cold_start_steps": args.sft_steps + int(longer["steps"])}  # fmt: skip
        res["final"]["cold start"] = start = held_out(sft_dir, test, args)
        wd.mkdir(parents=True, exist_ok=True)
        pilot.write_text(json.dumps(res, indent=1, default=str))
    else:
        t0 = time.perf_counter()
        sft_dir, sft_flops = run_sft(wd / "sft", args, seed=seed)
        res = {"seed": seed, "final": {}, "budget": {}, "arms": {}, "time_s": {}}
        res["final"]["cold start"] = start = held_out(sft_dir, test, args)
        res["time_s"]["cold start"] = time.perf_counter() - t0
        res["sft_dir"], res["sft_flops"] = str(sft_dir), sft_flops
        pilot.write_text(json.dumps(res, indent=1, default=str))
    print(f"seed {seed} cold start:", start, flush=True)
    if args.cold_start_only:  # a pilot of the task design: can the cold start execute the search?
        return res
    t0 = time.perf_counter()
    res["arms"]["GRPO"] = g = run_grpo(wd / "grpo", sft_dir, args, seed)
    res["time_s"]["GRPO"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res["arms"]["expert iteration"] = run_ei(wd / "ei", sft_dir, args, seed, g["flops"])
    res["time_s"]["expert iteration"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res["arms"]["SFT on cold-start set"] = run_control(wd / "control", sft_dir, sft_flops, args, seed, g["flops"],
                                                       test, start)  # fmt: skip
    res["time_s"]["SFT on cold-start set"] = time.perf_counter() - t0
    dirs = {"cold start": sft_dir, **{arm: Path(a["model_dir"]) for arm, a in res["arms"].items()}}
    for arm, path in dirs.items():
        if arm != "cold start":
            res["final"][arm] = held_out(path, test, args)
        res["budget"][arm] = budget(path, test, args)
        print(f"seed {seed} {arm}:", res["final"][arm], flush=True)
    done.write_text(json.dumps(res, indent=1, default=str))
    return res


def machine() -> str:
    """The CPU model, its matmul flags and the load, for every figure."""
    from r1kit.train.cost import cpu_description

    return f"{cpu_description()}, Python {platform.python_version()}"


def monotone(values: list[float]) -> bool:
    return all(b >= a for a, b in zip(values, values[1:]))


def report(args, seeds: list[dict], started: str) -> str:
    """The markdown report: final held-out table, budget tables (mean ± spread), the plots."""
    from r1kit.report import mean_spread, spread_table

    cols = ["pass@1", *(["maj@k"] if all("maj@k" in s["final"][a] for s in seeds for a in ARMS) else [])]
    cols += ["length", "attempts", "long_search", "claims", "false_claims"]
    cols += [
        c
        for c in ("hop1", "hop2", "hop3", "chains_ok", "false_ok_lines", "hidden_hits")
        if all(c in s["final"][a] for s in seeds for a in ARMS)
    ]
    cells = {arm: {c: [s["final"][arm][c] for s in seeds] for c in cols} for arm in ARMS}
    flops = {arm: [s["arms"][arm]["flops"] for s in seeds] for arm in ARMS[1:]}
    lines = [
        f"# {args.task.capitalize()}: does thinking longer pay? (bench_length)",
        "",
        f"Command: `PYTHONPATH=. python benchmarks/bench_length.py {' '.join(args.argv)}`",
        f"Machine at the start: {started}; at the end: {machine()}.",
        f"Seeds {[s['seed'] for s in seeds]}; task_args {task_args(args)}; held-out: {args.eval_problems} test "
        f"problems x {args.samples} samples at T=1, top-p 1, max {args.max_new_tokens} new tokens.",
        *(
            [
                f"Cold start: {args.cold_start_from}'s 'SFT on cold-start set' model of each seed (steps "
                f"{[s.get('cold_start_steps') for s in seeds]}, FLOPs "
                f"{[round(s.get('cold_start_flops', 0.0) / 1e12, 2) for s in seeds]} T)."
            ]
            if args.cold_start_from is not None
            else []
        ),
        "",
        "## Final held-out evaluation (mean ± sd over seeds, the seeds' values in brackets)",
        "",
        f"maj@k: majority vote over the {args.samples} samples; length: mean sampled completion tokens; "
        "attempts: attempt lines per sample; long_search: share of samples with >= 3 attempts; claims / "
        "false_claims: share of samples with an 'ok' line / a false one; chase's hopK / chains_ok: share of "
        "attempt lines whose K-th hop / whole chain is the map's; false_ok_lines / hidden_hits: share of "
        "attempt lines saying 'ok' without hitting the target / 'no' on a hit.",
        "",
        spread_table(cells, cols).replace("| stage |", "| arm |"),
        "",
        "FLOPs per arm (sampling + updates; the control: SFT training FLOPs): "
        + "; ".join(f"{arm} {mean_spread(v)[0] / 1e12:.2f} TFLOPs" for arm, v in flops.items()),
        "",
        "## Budget forcing (accuracy, mean ± sd over seeds)",
        "",
    ]
    for mode, name in (("cap", "thinking cap (tokens)"), ("wait", f'forced "{args.wait_string}" extensions')):
        values = sorted(
            {p["value"] for s in seeds for pts in s["budget"].values() for p in pts if p["mode"] == mode}
        )
        if not values:
            continue
        table = {arm: {str(v): [p["accuracy"] for s in seeds for p in s["budget"][arm]
                                if p["mode"] == mode and p["value"] == v] for v in values} for arm in ARMS}  # fmt: skip
        lines += [
            f"### {name}",
            "",
            spread_table(table, [str(v) for v in values]).replace("| stage |", "| arm |"),
            "",
        ]
        for arm in ARMS:
            means = [mean_spread(table[arm][str(v)])[0] for v in values]
            think = [mean_spread([p["think_tokens"] for s in seeds for p in s["budget"][arm]
                                  if p["mode"] == mode and p["value"] == v])[0] for v in values]  # fmt: skip
            lines.append(f"- {arm}: mean accuracy {'monotone non-decreasing' if monotone(means) else 'NOT monotone'}"
                         f" in the {mode}; mean thinking tokens {', '.join(f'{t:.1f}' for t in think)}")  # fmt: skip
        lines.append("")
    lines += ["## Curves", "", "![R1-Zero's plot](length.png)", "", "![budget forcing](budget.png)", "",
              "Length in the curves: GRPO's and expert iteration's own samples of the step (train prompts, "
              "T=1); the control's held-out samples. Wall time per seed (s): "
              + "; ".join(f"seed {s['seed']}: " + ", ".join(f"{k} {v:.0f}" for k, v in s["time_s"].items())
                          for s in seeds), ""]  # fmt: skip
    return "\n".join(lines)


def plot_budget(path: Path, seeds: list[dict]) -> None:
    """Accuracy against the cap and the Wait count, mean over seeds, one line per arm."""
    from matplotlib.figure import Figure

    from r1kit.report import mean_spread
    from r1kit.train.log import save_figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, mode in zip(axes, ("cap", "wait")):
        for i, arm in enumerate(ARMS):
            by: dict = {}
            for s in seeds:
                for p in s["budget"][arm]:
                    if p["mode"] == mode:
                        by.setdefault(p["value"], []).append(p["accuracy"])
            xs = sorted(by)
            ms = [mean_spread(by[x]) for x in xs]
            ax.errorbar(xs, [m for m, _ in ms], yerr=[sd for _, sd in ms], marker="o", capsize=3, color=f"C{i}",
                        label=arm)  # fmt: skip
        ax.set(xlabel="thinking cap (tokens)" if mode == "cap" else 'forced "Wait, " extensions',
               ylabel="held-out accuracy (T=1)", ylim=(-0.02, 1.02))  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path, "budget forcing, mean ± sd over seeds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_length"))
    ap.add_argument(
        "--seeds", type=int, default=3, help="N seeds, --first-seed.. (cold start, arms, data order)"
    )
    ap.add_argument("--first-seed", type=int, default=0, help="the first of the --seeds seeds")
    ap.add_argument("--only-seed", type=int, default=None,
                    help="run this one seed and stop (run seeds in parallel, then once more to report)")  # fmt: skip
    ap.add_argument("--task", choices=["countdown", "chase"], default="countdown")
    ap.add_argument("--size", type=int, default=10, help="chase: letters in the map")
    ap.add_argument("--hops", type=int, default=3, help="chase: steps of the chain (> the model's 2 layers)")
    ap.add_argument(
        "--symbols",
        choices=["digits", "pairs"],
        default="digits",
        help='chase: "digits" (map "05,12,..") or "pairs" (letters, map entries one token each)',
    )
    ap.add_argument("--continue-p", type=float, default=0.4, help="chase: cold start's P(another attempt)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny steps and evaluations")
    ap.add_argument(
        "--numbers", type=int, default=3, help="numbers per problem (4: see docs/LOG.md 2026-12-06)"
    )
    ap.add_argument("--min-hit", type=float, default=0.1)
    ap.add_argument("--max-hit", type=float, default=0.3)
    ap.add_argument("--recheck", type=float, default=0.5, help="share of solved traces that re-check the hit")
    ap.add_argument("--max-failed", type=int, default=1, help="cold-start search budget: 1..max_failed+1")
    ap.add_argument(
        "--sft-examples", type=int, default=800, help="<= ~870 distinct 3-number problems in the band"
    )
    ap.add_argument("--sft-steps", type=int, default=600)
    ap.add_argument("--layers", type=int, default=2, help="the cold-start model's layers (tiny llama, d=128)")
    ap.add_argument(
        "--cold-start-only",
        action="store_true",
        help="stop after the cold start's held-out evaluation (a pilot of the task design); a later run "
        "without it reuses that cold start (<workdir>/seed<S>/cold_start.json)",
    )
    ap.add_argument(
        "--cold-start-from",
        type=Path,
        default=None,
        help="start every arm from the 'SFT on cold-start set' model of this earlier workdir's seed (a cold "
        "start trained longer on the same set), instead of training one",
    )
    ap.add_argument("--sft-lr", type=float, default=3e-3, help="the cold start's learning rate")
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--control-lr", type=float, default=1e-3)
    ap.add_argument(
        "--train-problems", type=int, default=400, help="GRPO's (and EI's) prompt pool (train split)"
    )
    ap.add_argument("--grpo-steps", type=int, default=150)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8, help="GRPO's group size = EI's samples per prompt")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ei-lr", type=float, default=3e-4)
    ap.add_argument("--ei-prompts", type=int, default=128, help="expert iteration's prompts per round")
    ap.add_argument(
        "--ei-eval-every", type=int, default=4, help="expert iteration's rounds between evaluations"
    )
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--no-filter", action="store_true", help="GRPO without the pass-rate filter")
    ap.add_argument("--verify-weight", type=float, default=0.5,
                    help="weight of countdown's verified_search_reward (-1 for a false 'ok'); 0 = off")  # fmt: skip
    ap.add_argument(
        "--verify",
        choices=["claims", "verdicts"],
        default="claims",
        help='chase: fine false "ok" claims only, or every false verdict (a hit called "no" too)',
    )
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-problems", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--eval-seed", type=int, default=7)
    ap.add_argument("--caps", type=int, nargs="*", default=[16, 32, 64, 128])
    ap.add_argument("--waits", type=int, nargs="*", default=[0, 1, 2, 4])
    ap.add_argument(
        "--wait-string", default="Wait, ", help="budget forcing's wait string (the traces' own prefix)"
    )
    ap.add_argument("--budget-max-new-tokens", type=int, default=320)
    ap.add_argument("--control-points", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    args.argv = [a for a in os.sys.argv[1:]]
    if args.task == "chase" and args.wait_string == "Wait, ":
        args.wait_string = "Wait,"  # chase's own prefix (no space: letters stay bare tokens)
    if args.quick:
        args.sft_steps, args.sft_examples, args.grpo_steps, args.eval_every = 40, 200, 4, 2
        args.eval_problems, args.samples, args.ei_prompts, args.ei_eval_every = 8, 2, 16, 1
        args.train_problems, args.prompts, args.caps, args.waits, args.control_points = (
            40,
            4,
            [16, 64],
            [0, 1],
            1,
        )

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from r1kit.report import plot_learning_curves
    from r1kit.tasks import get_task

    started = machine()
    args.workdir.mkdir(parents=True, exist_ok=True)
    test = get_task(args.task, **task_args(args)).problems("test", n=args.eval_problems, seed=args.eval_seed)
    seed_ids = range(args.first_seed, args.first_seed + args.seeds)
    if args.cold_start_from is not None:  # one clear line (exit 2) rather than a KeyError mid-run
        for s in [args.only_seed] if args.only_seed is not None else seed_ids:
            src = args.cold_start_from / f"seed{s}" / "result.json"
            if not (args.workdir / f"seed{s}" / "cold_start.json").exists() and not src.exists():
                ap.exit(2, f"bench_length.py: error: --cold-start-from: {src} does not exist; run bench_length "
                           f"with --workdir {args.cold_start_from} for seed {s} first (all arms)\n")  # fmt: skip
    if args.only_seed is not None or args.cold_start_only:
        for seed in [args.only_seed] if args.only_seed is not None else seed_ids:
            run_seed(seed, args, test)
        return
    seeds = [run_seed(seed, args, test) for seed in seed_ids]
    curves = {arm: [s["arms"][arm]["curve"] for s in seeds] for arm in ARMS[1:]}
    plot_learning_curves(
        curves,
        args.workdir / "length.png",
        f"{args.task.capitalize()}: held-out pass@1 and sampled length vs FLOPs",
    )
    plot_budget(args.workdir / "budget.png", seeds)
    (args.workdir / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                           "seeds": seeds}, indent=1, default=str))  # fmt: skip
    (args.workdir / "report.md").write_text(report(args, seeds, started))
    print("wrote", args.workdir / "report.md")


if __name__ == "__main__":
    main()
