"""LoRA against full fine-tuning: peak memory and step time of one SFT step, same model, same batch.

The model has the SmolLM2-135M shape (30 layers, d 576, 9 heads / 3 KV heads, MLP 1536, vocabulary 49,152,
tied head; random init: the cost does not depend on the weights). One step is the loop's
``r1kit.train.loop.train_step`` with ``lm_loss`` (forward, backward, clipping, fused AdamW), as `r1kit sft`
runs it. LoRA (arXiv 2106.09685) adapts every linear layer of every block (q, k, v, o, gate, up, down) at
``--rank``; full fine-tuning trains every weight.

Each variant runs in its own fresh process (peak RSS is per process), and the variants alternate for
``--rounds`` rounds so neighbours' load hits both alike; the table gives the median step time over all
timed steps of all rounds, the largest peak RSS, and the peak above the RSS with the model built (what
training adds: gradients, AdamW moments, activations), and the bytes held between steps (weights + AdamW
moments, counted from the tensors). Ratios are LoRA / full. AdamW's moments are allocated at the first
step, after the backward has freed the activations, so at larger batches the activations set the peak and
LoRA's saving shows in the held state more than in the peak.

    python benchmarks/bench_lora.py            # batch 2 x 128, rank 16, 2 rounds of 1 + 2 steps (~6 min loaded)
    python benchmarks/bench_lora.py --quick    # 1 round, 1 timed step, batch 1 x 64 (a smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time

SMOLLM2_135M = dict(
    family="llama",
    vocab_size=49152,
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    intermediate_size=1536,
    tie_word_embeddings=True,
    rope_theta=100000.0,
)


def _rss_bytes() -> int:
    """This process's resident set now (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _variant(name: str, args: dict, out: mp.Queue) -> None:
    """One variant in a fresh process: build, (adapt), warm up, time; puts its numbers on ``out``."""
    import torch

    from r1kit import lora
    from r1kit.model import ModelConfig, Transformer
    from r1kit.train import loop
    from r1kit.train.sections import LoRASection

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**SMOLLM2_135M))
    if name == "lora":
        lora.apply_lora(model, LoRASection(rank=args["rank"], alpha=2.0 * args["rank"]))
    model.train()
    rss_model = _rss_bytes()
    optimizer = loop.build_optimizer(model, lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    batch, seq = args["batch"], args["seq"]
    tokens = batch * seq
    times = []
    for step in range(args["warmup"] + args["steps"]):
        ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (batch, seq + 1), generator=gen)
        micro = [{"input_ids": ids[:, :-1], "targets": ids[:, 1:]}]
        start = time.perf_counter()
        stats = loop.train_step(
            model, optimizer, micro, lambda m, b: loop.lm_loss(m, b, tokens), grad_clip=1.0
        )
        if step >= args["warmup"]:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    # what stays allocated between steps: the weights and AdamW's two moments (gradients are freed)
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    held += sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    out.put(
        {
            "name": name,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "times": times,
            "peak": peak,
            "rss_model": rss_model,
            "held": held,
            "loss": stats.loss,
        }
    )


def _run(name: str, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_variant, args=(name, args, out))
    proc.start()
    result = out.get()
    proc.join()
    return result


def _cpu() -> str:
    """lscpu's model name and the matmul flags (every figure is recorded with them)."""
    from r1kit.train.cost import cpu_description

    return cpu_description()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2, help="sequences per step")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first, per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating full / LoRA rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per variant")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 timed step, batch 1 x 64")
    parser.add_argument("--json", default="", help="also write the raw numbers to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.batch, args.seq = 1, 1, 1, 64
    shared = {k: getattr(args, k) for k in ("batch", "seq", "rank", "steps", "warmup", "threads")}
    runs: dict[str, list[dict]] = {"full": [], "lora": []}
    for _ in range(args.rounds):
        for name in ("full", "lora"):
            runs[name].append(_run(name, shared))
            steps = ", ".join(f"{t:.2f}" for t in runs[name][-1]["times"])
            print(f"{name}: timed steps {steps} s", flush=True)
    rows = {}
    for name, results in runs.items():
        rows[name] = {
            "params": results[0]["params"],
            "trainable": results[0]["trainable"],
            "step_s": statistics.median(t for r in results for t in r["times"]),
            "peak_gib": max(r["peak"] for r in results) / 2**30,
            "over_model_gib": max(r["peak"] - r["rss_model"] for r in results) / 2**30,
            "held_gib": results[0]["held"] / 2**30,
        }
    full, low = rows["full"], rows["lora"]
    print(f"\nCommand: python {' '.join(sys.argv)}")
    print(f"CPU: {_cpu()}; {args.threads} thread(s) per variant; fp32; machine shared with other jobs")
    print(
        f"Model: SmolLM2-135M shape ({full['params'] / 1e6:.1f}M parameters), batch {args.batch} x {args.seq}\n"
    )
    print(
        "| variant | trainable | step (s) | peak RSS (GiB) | peak above the built model (GiB) "
        "| weights + AdamW state held (GiB) |"
    )
    print("|---|---|---|---|---|---|")
    for name, label in (("full", "full fine-tuning"), ("lora", f"LoRA r={args.rank}, all linear layers")):
        r = rows[name]
        print(
            f"| {label} | {r['trainable'] / 1e6:.2f}M | {r['step_s']:.2f} | {r['peak_gib']:.2f} | "
            f"{r['over_model_gib']:.2f} | {r['held_gib']:.2f} |"
        )
    print(
        f"| LoRA / full | {low['trainable'] / full['trainable']:.3f} | {low['step_s'] / full['step_s']:.2f} | "
        f"{low['peak_gib'] / full['peak_gib']:.2f} | {low['over_model_gib'] / full['over_model_gib']:.2f} | "
        f"{low['held_gib'] / full['held_gib']:.2f} |"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "runs": runs, "cpu": _cpu()}, f, indent=1)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
