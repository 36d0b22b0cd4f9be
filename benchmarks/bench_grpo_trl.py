"""GRPO step time, r1kit against TRL's GRPOTrainer, on the same tiny model, data and settings.

    python benchmarks/bench_grpo_trl.py                 # or: ./run.sh bench bench_grpo_trl
    python benchmarks/bench_grpo_trl.py --steps 12 --warmup 2 --skip-trl
    python benchmarks/bench_grpo_trl.py --trl-python /work/trl-venv/bin/python --precision auto --compile
    python benchmarks/bench_grpo_trl.py --device cuda --trl-python PYTHON_WITH_TRL
    python benchmarks/bench_grpo_trl.py --threads 2 --engine-compile on --bound   # + the GEMM bound

Both sides train the same randomly initialised Qwen2 (hidden 128 or `--hidden`, 4 layers, heads of 32, half as many KV heads,
char-level vocab of ~100, saved once with transformers; r1kit loads the same directory) on the same
prompts: 8 prompts x 8 completions x exactly 64 new tokens per step (EOS suppressed on both sides),
temperature 1, beta 0, one update per rollout batch (mu = 1), AdamW, the same reward. Each side runs
in its best precision by default: r1kit `train.precision = auto` (bf16 autocast where bf16 matmuls
measure much faster, `r1kit.precision`), and TRL by the same measured rule at the model's width (bf16 on
CUDA and on CPUs where bf16 matmuls are much faster at that width, fp32 elsewhere; `--trl-precision` overrides).
The step's FLOP ceiling (its counted FLOPs at the device's matmul peak) is printed beside the times.

TRL runs in its own environment, `benchmarks/.venv-trl` (created on first use: torch==2.13.0 first,
then trl from PyPI), in a subprocess (`_grpo_trl_worker.py`); r1kit runs in this interpreter. The
two alternate, never at once: `--rounds` rounds of `--steps` steps each, the order flipped every
round, so a shared machine's load hits both sides alike. Seconds per step are the median over all
rounds' steps after each round's warm-up; the process CPU time per step (robust to other jobs when
`--threads 1`) is reported too. The script prints a markdown table and the command that produced it.
`--bound` adds the Amdahl bound of the comparison: one profiled step of each side (separate short runs)
gives the share of TRL's step spent in GEMMs, which an implementation running the same GEMMs no faster
cannot go below, and r1kit's own GEMM seconds, a floor of its step: the speed-up they allow and the
non-GEMM time per step a 2.5x speed-up would leave.

Top-level imports are stdlib only: the TRL worker imports `bench_reward` from this file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRL_VENV = HERE / ".venv-trl"
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
TRL_SPEC = os.environ.get("TRL_SPEC", "trl")

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<think>", "</think>"]
# printable ASCII plus newline: 96 characters, 102 tokens with the specials
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


def bench_reward(completion: str, problem: object = None) -> float:
    """The benchmark's reward, identical on both sides: the share of digits among the characters.

    Cheap and with variance inside a group even for a random model, so advantages are non-zero.
    """
    return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)


def make_prompts(n: int = 256, seed: int = 0) -> list[str]:
    """n addition prompts like ``"Add 123+45 ="``, the same for both sides."""
    rng = random.Random(seed)
    return [f"Add {rng.randint(0, 9999)}+{rng.randint(0, 9999)} =" for _ in range(n)]


def make_model_dir(path: Path, seed: int = 0, hidden: int = 128) -> Path:
    """Save a random tiny Qwen2 (fp32; width `hidden`, 4 layers, MLP 4x, heads of 32) and a char-level
    PreTrainedTokenizerFast to ``path``."""
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    import torch
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    cfg = Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=4,
        num_attention_heads=hidden // 32,
        num_key_value_heads=max(hidden // 64, 1),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).float()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


def ensure_trl_venv() -> Path:
    """Create or reuse benchmarks/.venv-trl (torch pinned first, then trl); return its python."""
    python = TRL_VENV / "bin" / "python"
    stamp = TRL_VENV / ".bench-setup"
    want = f"{TORCH_SPEC} {TRL_SPEC}"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    # the environment is a build output: keep git from ever seeing it
    (TRL_VENV / ".gitignore").write_text("*\n")
    if not stamp.exists() or stamp.read_text().strip() != want:
        # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
        subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH_SPEC], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", TRL_SPEC], check=True)
        stamp.write_text(want + "\n")
    return python


def run_trl(
    python: Path, model_dir: Path, prompts_file: Path, args: argparse.Namespace, profile_step: int = 0
) -> dict:
    """Run the TRL worker in its environment; return its JSON report (`profile_step`: see `--bound`)."""
    cmd = [
        str(python),
        str(HERE / "_grpo_trl_worker.py"),
        "--model",
        str(model_dir),
        "--prompts",
        str(prompts_file),
        "--steps",
        str(args.steps),
        "--prompts-per-step",
        str(args.prompts_per_step),
        "--group-size",
        str(args.group_size),
        "--new-tokens",
        str(args.new_tokens),
        "--lr",
        str(args.lr),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--precision",
        args.trl_precision,
        "--out",
        str(args.workdir / "trl"),
        "--profile-step",
        str(profile_step),
    ]
    env = dict(os.environ, PYTHONPATH=str(HERE))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"TRL worker failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_r1kit(model_dir: Path, prompts_file: Path, args: argparse.Namespace, profile_step: int = 0) -> dict:
    """Train the same steps with `r1kit.rl.grpo.run` in this process; return step times (and, for
    `profile_step` > 0, that step's GEMM profile: see `--bound`)."""
    import torch

    from r1kit.config import load_config
    from r1kit.rl import grpo

    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = args.workdir / "r1kit"
    shutil.rmtree(run_dir, ignore_errors=True)
    problems_file = args.workdir / "prompts.jsonl"
    prompts = json.loads(prompts_file.read_text())
    problems_file.write_text("".join(json.dumps({"prompt": p, "answer": ""}) + "\n" for p in prompts))
    overrides = {
        "run.dir": str(run_dir),
        "train.device": args.device,
        "train.precision": args.precision,
        "train.compile": "true" if args.compile else "false",
        "engine.compile": args.engine_compile,
        "train.steps": str(args.steps),
        "run.log_every": "1",
        "run.progress": "false",
        "run.tensorboard": "false",
        "run.plot": "false",
        "model.path": str(model_dir),
        "data.task": f"jsonl:{problems_file}",
        "data.task_args": f'{{"jsonl:{problems_file}" = {{hash_split = false}}}}',
        "data.train_problems": str(len(prompts)),
        "prompt.template": "raw",
        "reward.names": "bench_grpo_trl:bench_reward",
        "reward.weights": "1.0",
        "rollout.prompts_per_step": str(args.prompts_per_step),
        "rollout.group_size": str(args.group_size),
        "rollout.max_new_tokens": str(args.new_tokens),
        "rollout.ignore_eos": "true",  # exactly new_tokens per completion, as min_new_tokens on TRL's side
        "rollout.temperature": "1.0",
        "loss.loss_type": "grpo",
        "loss.beta": "0",
        "loss.mu": "1",
        "train.lr": str(args.lr),
        "train.grad_clip": "1.0",
        "eval.every": "0",
    }
    tokens = [t for k, v in overrides.items() for t in (f"--{k}", v)]
    config = load_config(grpo.Config, None, tokens)
    sys.path.insert(0, str(HERE))  # so the reward "bench_grpo_trl:bench_reward" imports
    cpu_seconds: list[float] = []
    real_step = grpo.GRPOTrainer.train_step

    profiled: dict[str, float] = {}

    def timed_step(self):  # process CPU time per step: robust to other jobs on a shared machine
        c0 = time.process_time()
        if len(cpu_seconds) + 1 == profile_step:
            from _gemm import gemm_profile
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                out = real_step(self)
            profiled.update(gemm_profile(prof))
        else:
            out = real_step(self)
        cpu_seconds.append(time.process_time() - c0)
        return out

    grpo.GRPOTrainer.train_step = timed_step
    t0 = time.perf_counter()
    try:
        grpo.run(config)
    finally:
        grpo.GRPOTrainer.train_step = real_step
    total = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "time/step" in r]
    from r1kit.precision import resolve_precision

    return {
        "precision": resolve_precision(args.precision, args.device, args.hidden),  # at the model's width
        "step_flops": [r.get("cost/flops", 0.0) for r in rows],
        "step_seconds": [r["time/step"] for r in rows],
        "step_cpu_seconds": cpu_seconds,
        "mean_completion_length": [r.get("completion/length_mean") for r in rows],
        "split": {
            k: statistics.median(r[k] for r in rows[args.warmup :] or rows)
            for k in ("time/generate", "time/score", "time/logprobs", "time/backward")
            if rows and k in rows[0]
        },
        "total_seconds": total,
        "torch_threads": torch.get_num_threads(),
        "profile": profiled,
    }


def median_after_warmup(times: list[float], warmup: int) -> float:
    """Median of the step times after the first `warmup` steps."""
    kept = times[warmup:] or times
    return statistics.median(kept)


def pooled(rounds: list[dict], key: str, warmup: int) -> list[float]:
    """The step times under `key` of every round, each round's warm-up steps left out."""
    return [t for r in rounds for t in (r.get(key, [])[warmup:] or r.get(key, []))]


def main() -> None:
    """Run both sides alternately and print the comparison as a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--steps", type=int, default=6, help="training steps per side and round, warm-up included"
    )
    ap.add_argument("--warmup", type=int, default=1, help="leading steps of each round left out")
    ap.add_argument("--rounds", type=int, default=2, help="alternations r1kit/TRL (order flips each round)")
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument(
        "--hidden", type=int, default=128, help="model width (4 layers, MLP 4x, heads of 32 dims)"
    )
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: default)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_grpo_trl"))
    ap.add_argument("--skip-trl", action="store_true", help="time r1kit only")
    ap.add_argument("--trl-python", type=Path, default=None, help="python of an existing TRL environment")
    ap.add_argument("--device", default="cpu", help="cpu or cuda, both sides")
    ap.add_argument(
        "--precision",
        default="auto",
        help="r1kit's train.precision: auto (measured, r1kit.precision), bf16, fp32",
    )
    ap.add_argument(
        "--trl-precision",
        default="",
        help="TRL's: fp32 or bf16 (its bf16 autocast); default: bf16 where r1kit's measured 'auto' rule picks it at --hidden (TRL at width 512 on an AVX512-BF16 CPU: 2.1x faster in bf16; at 128 on AVX2/AMX CPUs: slower)",
    )
    ap.add_argument(
        "--compile", action="store_true", help="r1kit: train.compile (torch.compile of the update)"
    )
    ap.add_argument(
        "--bound",
        action="store_true",
        help="after the timed rounds, profile one step of each side (a separate 3-step run, its third step): "
        "the share of the step in GEMMs (aten mm/addmm/bmm/baddbmm) and the speed-up over TRL that an "
        "implementation running the same GEMMs no faster, with zero time outside them, could reach",
    )
    ap.add_argument(
        "--engine-compile",
        default="",
        choices=["", "auto", "on", "off"],
        help="r1kit's engine.compile for the rollouts: on = the compiled decode step from the first step (its "
        "compile lands in the warm-up step, reported apart); default the engine's own (auto: compiles after "
        "2M decoded row-steps, ~490 steps of this benchmark)",
    )
    args = ap.parse_args()
    if args.bound and args.device != "cpu":
        # on a GPU the profiler's self CPU time of aten::mm is the kernel launch, not the GEMM
        ap.error("--bound profiles CPU time and works on --device cpu only; drop --bound on a GPU")
    if not args.trl_precision:  # TRL's best: bf16 where r1kit's own "auto" rule picks it at this width
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)  # the probe is cached per thread count
        from r1kit.precision import resolve_precision

        best = resolve_precision("auto", args.device, args.hidden)
        args.trl_precision = "bf16" if best == "bfloat16" else "fp32"
    args.workdir.mkdir(parents=True, exist_ok=True)

    model_dir = make_model_dir(
        args.workdir / ("model" if args.hidden == 128 else f"model-h{args.hidden}"), hidden=args.hidden
    )
    prompts_file = args.workdir / "prompts.json"
    prompts_file.write_text(json.dumps(make_prompts()))

    python = None if args.skip_trl else (args.trl_python or ensure_trl_venv())
    rounds: dict[str, list[dict]] = {"r1kit": [], "TRL": []}
    for i in range(args.rounds):
        order = ["r1kit", "TRL"] if i % 2 == 0 else ["TRL", "r1kit"]
        for name in order:
            if name == "r1kit":
                rounds[name].append(run_r1kit(model_dir, prompts_file, args))
            elif python is not None:
                rounds[name].append(run_trl(python, model_dir, prompts_file, args))
            last = rounds[name][-1] if rounds[name] else None
            if last:
                med = median_after_warmup(last["step_seconds"], args.warmup)
                print(f"round {i + 1}: {name} {med:.3f} s/step", file=sys.stderr)
    rounds = {k: v for k, v in rounds.items() if v}
    bounds: dict[str, dict] = {}
    if args.bound:  # separate short runs: the profiler's overhead stays out of the timed rounds
        short = argparse.Namespace(**{**vars(args), "steps": 3})
        bounds["r1kit"] = run_r1kit(model_dir, prompts_file, short, profile_step=3)["profile"]
        if python is not None:
            bounds["TRL"] = run_trl(python, model_dir, prompts_file, short, profile_step=3)["profile"]

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    n = args.prompts_per_step * args.group_size
    threads = rounds["r1kit"][0]["torch_threads"]
    print(
        f"\nGRPO step, tiny Qwen2 (hidden {args.hidden}, 4 layers, {args.hidden // 32} heads, {max(args.hidden // 64, 1)} KV heads, "
        f"vocab {len(SPECIALS) + len(CHARS)}), "
        f"{args.prompts_per_step} prompts x {args.group_size} completions x {args.new_tokens} new tokens "
        f"({n} sequences), beta 0, mu 1, r1kit {rounds['r1kit'][0]['precision']}"
        f"{' + torch.compile' if args.compile else ''}"
        f"{f', engine.compile {args.engine_compile}' if args.engine_compile else ''}, TRL {args.trl_precision}, {args.device} "
        f"({os.cpu_count()} cores, {threads} torch threads); "
        f"{args.rounds} alternating rounds of {args.steps} steps, first {args.warmup} of each left out\n"
    )
    print(
        "| implementation | s/step (median) | min | max | CPU s/step (median) | tokens/s | completion length |"
    )
    print("|---|---|---|---|---|---|---|")
    med, cpu = {}, {}
    for name, res in rounds.items():
        times = pooled(res, "step_seconds", args.warmup)
        cpus = pooled(res, "step_cpu_seconds", args.warmup)
        med[name] = statistics.median(times)
        cpu[name] = statistics.median(cpus) if cpus else float("nan")
        lengths = [x for r in res for x in r.get("mean_completion_length", []) if x is not None]
        length = f"{statistics.mean(lengths):.1f}" if lengths else "?"
        print(
            f"| {name} | {med[name]:.3f} | {min(times):.3f} | {max(times):.3f} | {cpu[name]:.3f} | "
            f"{n * args.new_tokens / med[name]:.0f} | {length} |"
        )
    if "TRL" in med:
        per_round = [
            median_after_warmup(t["step_seconds"], args.warmup)
            / median_after_warmup(r["step_seconds"], args.warmup)
            for r, t in zip(rounds["r1kit"], rounds["TRL"])
        ]
        print(
            f"\nspeed-up r1kit vs TRL: {med['TRL'] / med['r1kit']:.2f}x wall "
            f"(per round: {', '.join(f'{x:.2f}x' for x in per_round)}), "
            f"{cpu['TRL'] / cpu['r1kit']:.2f}x CPU time"
        )
    flops = [f for r in rounds["r1kit"] for f in r.get("step_flops", [])[args.warmup :] if f]
    if flops:
        from r1kit.train.cost import lookup_device_peak

        step_flops = statistics.median(flops)
        ceilings = {}
        for dt in ("fp32", "bf16"):
            peak = lookup_device_peak(args.device, dt)
            flops_s = peak.flops
            if peak.source == "measured matmul" and dt == "fp32":
                # a shared machine's probe reads low now and then (84-142 GFLOP/s within one hour on 2 EPYC
                # cores): the ceiling takes the best of a few more probes, the machine's achievable peak
                from r1kit.train.cost import measure_matmul_flops

                flops_s = max([flops_s] + [measure_matmul_flops(args.device, dt) for _ in range(3)])
            ceilings[dt] = step_flops / flops_s
        used = "bf16" if rounds["r1kit"][0]["precision"] == "bfloat16" else "fp32"
        print(
            f"step FLOP ceiling ({step_flops / 1e9:.1f} GFLOP per step at the device's peak, {peak.source}): "
            f"{ceilings['fp32']:.3f} s fp32, {ceilings['bf16']:.3f} s bf16; r1kit at "
            f"{100 * ceilings[used] / med['r1kit']:.0f}% of its {used} ceiling"
            + (
                f", TRL at {100 * ceilings['bf16' if args.trl_precision == 'bf16' else 'fp32'] / med['TRL']:.0f}% of its"
                if "TRL" in med
                else ""
            )
        )
    splits = [r["split"] for r in rounds["r1kit"] if r.get("split")]
    if splits:
        keys = splits[0].keys()
        print(
            "r1kit time split (median s): "
            + ", ".join(f"{k[5:]} {statistics.median(s[k] for s in splits):.3f}" for k in keys)
        )
    for name, b in bounds.items():
        if b:
            print(
                f"{name} spends {b['gemm_share']:.0%} of a profiled step in GEMMs ({b['gemm_s']:.3f} of "
                f"{b['total_s']:.3f} s, {b.get('gemm_calls', '?')} calls of aten mm/addmm/bmm/baddbmm)"
                + (
                    f": an implementation running these GEMMs no faster, with zero time outside them, would "
                    f"be at most {1 / b['gemm_share']:.2f}x TRL"
                    if name == "TRL"
                    else ""
                )
            )
    own = bounds.get("r1kit")
    if own and "TRL" in med:  # r1kit's own GEMM seconds are a floor of its step: the speed-up they allow
        rest, allowed = med["r1kit"] - own["gemm_s"], med["TRL"] / 2.5 - own["gemm_s"]
        print(
            f"r1kit's own GEMMs ({own['gemm_s']:.3f} s a step) bound it at {med['TRL'] / own['gemm_s']:.2f}x TRL's "
            f"median step with zero time outside them; 2.5x needs its non-GEMM time at {allowed:.3f} s a step "
            f"(now {rest:.3f} s)"
        )
    first = [r["step_seconds"][0] for r in rounds["r1kit"] if r.get("step_seconds")]
    if first:  # where a compile lands (the engine's with --engine-compile on, the update's with --compile)
        print("r1kit first step of each round (s): " + ", ".join(f"{x:.1f}" for x in first))
    if "TRL" in rounds:
        v = rounds["TRL"][0]
        print(f"TRL {v.get('trl_version')}, torch {v.get('torch_version')}")
    print(f"\ncommand: {command}")
    (args.workdir / "results.json").write_text(json.dumps({**rounds, "bound": bounds}, indent=1))


if __name__ == "__main__":
    main()
