"""`r1kit eval` on a real model and real maths data: greedy, then pass@1 over k samples (R1's protocol).

    PYTHONPATH=. python benchmarks/bench_real_eval.py --model MODEL_DIR --data gsm8k_test.jsonl \\
        --problems 32 --k 4 --max-new-tokens 256 --threads 1 --out runs/bench_real_eval.json

MODEL_DIR is an HF directory (e.g. SmolLM2-135M-Instruct converted with `r1kit convert`); --data is a
maths file or folder in any layout `math:` reads (`{"id", "problem", "answer"}` JSONL, GSM8K
"#### 42", parquet, ...) or a preset name (gsm8k, math500, aime24, amc: the hub). Several --data
values run one after the other. Prints one table per arm (its title: the model's name and sha256,
a "data sha256" row, and `boxed_anywhere`: a diagnostic, the share of completions whose last \\boxed{}
anywhere is right, also without `</think>`, and `last_number`: the share whose last number is
right, lm-eval's GSM8K flexible extract) and writes a JSON with the metrics, the data hash, the model hash, the protocol
and timing of each (arm, dataset), and the per-problem records (prompt, completions, scores) next to
it (`<out without .json>/records_*.jsonl`). `--k 0` runs greedy only.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
from rich.console import Console

from r1kit import evaluate
from r1kit.engine import Engine
from r1kit.loaders import load_model, set_threads
from r1kit.tasks import PRESETS, get_task
from r1kit.tasks.math import math_score


def _cpu() -> str:
    """The CPU model and its matmul flags, for the record."""
    from r1kit.train.cost import cpu_description

    return cpu_description()


def _last_number_right(text: str, reference: str) -> float:
    """1.0 when the last number in `text` equals the numeric `reference` (a diagnostic, not a score)."""
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    if not numbers:
        return 0.0
    try:
        return float(float(numbers[-1].replace(",", "")) == float(reference.replace(",", "")))
    except ValueError:
        return 0.0


def _task(data: str, split: str, hash_split: bool = False, instruction: str | None = None):
    if data in PRESETS:
        return get_task(data), data
    kwargs = {} if instruction is None else {"instruction": instruction}
    return get_task(f"math:{data}", hash_split=hash_split, **kwargs), Path(data).stem


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model directory (or r1kit run directory)")
    ap.add_argument("--data", action="append", required=True, help="maths file/folder or preset; repeatable")
    ap.add_argument("--split", default="test")
    ap.add_argument("--problems", type=int, default=32, help="first N problems of each dataset (0 = all)")
    ap.add_argument("--k", type=int, default=4, help="samples per problem for pass@1 (0 = greedy only)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-problems", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--template", default="chat", choices=["chat", "r1", "r1-zero", "raw"])
    ap.add_argument(
        "--hash-split", action="store_true", help="a JSONL file's hash split (default: all of it)"
    )
    ap.add_argument(
        "--instruction", default=None, help='text appended to each prompt (default R1\'s; "" = none)'
    )
    ap.add_argument("--system", default="")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/bench_real_eval.json")
    args = ap.parse_args(argv)

    set_threads(args.threads)
    console = Console()
    t0 = time.perf_counter()
    model, tok, model_dir = load_model(args.model, "", "cpu", "float32")
    load_s = time.perf_counter() - t0
    fingerprint = evaluate.model_fingerprint(model_dir)
    engine = Engine(model, tok)
    arms = {"greedy": evaluate.EvalParams(k=0, greedy=True, max_new_tokens=args.max_new_tokens)}
    if args.k:
        arms[f"pass@1 over k={args.k}"] = evaluate.EvalParams(
            k=args.k,
            temperature=0.6,
            top_p=0.95,
            max_new_tokens=args.max_new_tokens,
            greedy=False,
            seed=args.seed,
        )
    report = {
        "model": fingerprint,
        "cpu": _cpu(),
        "threads": args.threads,
        "load_seconds": load_s,
        "runs": [],
    }
    for data in args.data:
        task, label = _task(data, args.split, args.hash_split, args.instruction)
        problems = task.problems(args.split, n=args.problems or None)
        results = []
        for arm_name, params in arms.items():
            with torch.no_grad():
                (result,) = evaluate.evaluate_engine(
                    engine, tok, task, problems, params, template=args.template, system=args.system,
                    batch_problems=args.batch_problems, label=label, split=args.split, progress=True,
                    description=f"{label} {arm_name}", console=console,
                )  # fmt: skip
            result.task = f"{label} {arm_name}"
            slug = f"{label}_{arm_name}".replace(" ", "_").replace("@", "at").replace("=", "")
            evaluate.write_records(Path(args.out).with_suffix("") / f"records_{slug}.jsonl", result.records)
            # diagnostic, not a score: the last \boxed{} anywhere in the completion (also without `</think>`,
            # which an instruct model that never thinks in tags does not write)
            texts = [[r["greedy"]["text"]] if "greedy" in r else r["samples"] for r in result.records]
            boxed = [[math_score(t, r["reference"]) for t in ts] for ts, r in zip(texts, result.records)]
            result.metrics["boxed_anywhere"] = sum(sum(b) / len(b) for b in boxed) / len(boxed)
            # and the last number anywhere (lm-eval's GSM8K "flexible-extract"): what a prose answer
            # ("The sum of 3 and 83 is 86.") means, which the verifier (LaTeX only, no sympy parsing of
            # model text) does not read
            last = [
                [_last_number_right(t, r["reference"]) for t in ts] for ts, r in zip(texts, result.records)
            ]
            result.metrics["last_number"] = sum(sum(b) / len(b) for b in last) / len(last)
            results.append(result)
            report["runs"].append(
                {
                    "data": data,
                    "arm": arm_name,
                    "problems": len(problems),
                    "data_hash": result.data_hash,
                    "protocol": {
                        "k": params.k,
                        "temperature": params.temperature if params.k else 0.0,
                        "top_p": params.top_p if params.k else 1.0,
                        "max_new_tokens": params.max_new_tokens,
                        "seed": params.seed,
                        "template": args.template,
                        "batch_problems": args.batch_problems,
                    },
                    "metrics": result.metrics,
                    "timing": result.timing,
                }
            )
        console.print(evaluate.format_table(results, fingerprint))
        for r in results:
            console.print(
                f"  {r.task}: {int(r.metrics['problems'])} problems in {r.timing['seconds']:.1f} s "
                f"({r.timing['tokens_per_s']:.1f} generated tok/s)",
                highlight=False,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"cpu: {report['cpu']}; threads {args.threads}; results in {out}", highlight=False)
    return report


if __name__ == "__main__":
    main()
