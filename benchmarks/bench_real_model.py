"""The engine on a real checkpoint: greedy parity with transformers `generate` and tok/s, side by side.

    PYTHONPATH=. python benchmarks/bench_real_model.py --model MODEL_DIR --data gsm8k_test.jsonl \\
        --prompts 32 --max-new-tokens 64 --threads 2

MODEL_DIR is an HF directory (SmolLM2-135M-Instruct after `r1kit convert`); --data a maths JSONL
({"id", "problem", "answer"}). The first N problems are rendered with the model's own chat template
(r1kit's renderer, checked equal to `apply_chat_template`), then decoded greedily by transformers
`generate` (batch 1 per prompt for exact parity, and the whole batch left-padded for throughput) and by
r1kit's engine (the whole batch), both stopping on the model's end-of-turn ids from
generation_config.json. Prints: how many of the N completions are token-for-token identical, and the
tok/s of each side with the ratio (the same prompts, the same number of generated tokens counted).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from r1kit.engine import Engine, SamplingParams
from r1kit.loaders import load_model, set_threads


def _cpu() -> str:
    from r1kit.train.cost import cpu_description

    return cpu_description()


def _hf_generate(
    hf, rows: list[list[int]], new: int, eos: list[int], pad: int
) -> tuple[list[list[int]], float]:
    """Greedy completions of `rows` in one left-padded transformers call, and its seconds."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    t0 = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    seconds = time.perf_counter() - t0
    completions = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        completions.append(row[:cut])
    return completions, seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    from transformers import AutoModelForCausalLM

    model, tokenizer, _ = load_model(args.model, device="cpu", dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    problems = [json.loads(line) for line in open(args.data)][: args.prompts]
    rows = [tokenizer.prompt_ids(p["problem"]) for p in problems]
    eos = sorted(set(model.generation_eos_ids) | ({tokenizer.eos_id} - {None}))
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else eos[0]
    engine = Engine(model, tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    engine.generate(rows[:2], SamplingParams(temperature=0.0, max_new_tokens=4))  # warm-up
    t0 = time.perf_counter()
    ours = [list(c.token_ids) for c in engine.generate(rows, params)]
    t_ours = time.perf_counter() - t0
    theirs_batched, t_hf = _hf_generate(hf, rows, args.max_new_tokens, eos, pad)
    theirs_single = [_hf_generate(hf, [r], args.max_new_tokens, eos, pad)[0][0] for r in rows]
    same = sum(a == b for a, b in zip(ours, theirs_single))
    same_batched = sum(a == b for a, b in zip(ours, theirs_batched))
    tokens = sum(map(len, ours))
    tokens_hf = sum(map(len, theirs_batched))
    result = {
        "model": args.model,
        "prompts": len(rows),
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "cpu": _cpu(),
        "greedy_identical_vs_hf_single": same,
        "greedy_identical_vs_hf_batched": same_batched,
        "r1kit_tok_s": tokens / t_ours,
        "transformers_tok_s": tokens_hf / t_hf,
        "ratio": (tokens / t_ours) / (tokens_hf / t_hf),
        "r1kit_tokens": tokens,
        "transformers_tokens": tokens_hf,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
