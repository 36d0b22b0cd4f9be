"""Training throughput and MFU of r1kit's loop on this machine's CPU (or GPU), against the measured peak.

Runs optimiser steps of the shared training step (``r1kit.train.loop.train_step`` + ``lm_loss``, fused AdamW,
grad clipping) on random tokens for a ~20M-parameter dense Llama-style model and a DeepSeek-V3-style MoE
(MLA, 8 routed experts top-2 + 1 shared, MTP off) with about the same active parameters, and prints a
markdown table: tokens/s, model TFLOP/s (6 x active params + attention, ``r1kit.model.counting``) and MFU
against the matmul peak that ``r1kit.train.cost`` measures.

    python benchmarks/bench_train.py                 # dense + MoE, eager, batch 4 x 512 tokens (< 3 min on 2 cores)
    python benchmarks/bench_train.py --compile       # also the torch.compile'd dense model
    python benchmarks/bench_train.py --quick         # fewer steps, for a smoke test
    python benchmarks/bench_train.py --profile       # where the time of one dense step goes
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from r1kit.model import ModelConfig, Transformer
from r1kit.model.counting import active_param_count, flops_per_token, param_count
from r1kit.train import loop
from r1kit.train.cost import lookup_device_peak
from r1kit.train.data import BatchStream, PackedWindows

VOCAB = 8192
DENSE = dict(
    family="llama",
    vocab_size=VOCAB,
    hidden_size=512,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=8,
    intermediate_size=1408,
    tie_word_embeddings=True,
)
# Same width and depth; 1 dense layer then MoE layers whose shared + 2 routed experts (3 x 480) match the
# dense MLP's 1408; MLA with V3's ratios scaled to D = 512.
MOE = dict(
    family="deepseek_v3",
    vocab_size=VOCAB,
    hidden_size=512,
    num_hidden_layers=6,
    num_attention_heads=8,
    intermediate_size=1408,
    q_lora_rank=128,
    kv_lora_rank=128,
    qk_nope_head_dim=64,
    qk_rope_head_dim=32,
    v_head_dim=64,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    moe_intermediate_size=480,
    first_k_dense_replace=1,
    routed_scaling_factor=2.5,
    tie_word_embeddings=True,
)

# --size 0.5b: the Qwen2.5-0.5B shape (vocabulary 151,936, tied) and a DeepSeek-V3-style MoE of about the
# same total size (16 routed experts top-2 + 1 shared, MLA), for the GPU suite.
DENSE_05B = dict(
    family="qwen2",
    vocab_size=151_936,
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    qkv_bias=True,
    tie_word_embeddings=True,
)
MOE_05B = dict(
    MOE,
    vocab_size=151_936,
    hidden_size=896,
    num_hidden_layers=12,
    num_attention_heads=14,
    intermediate_size=4864,
    q_lora_rank=256,
    kv_lora_rank=256,
    n_routed_experts=16,
    moe_intermediate_size=704,
)


def measure(name: str, fields: dict, args: argparse.Namespace, device: torch.device, compile: bool) -> dict:
    """Train ``args.warmup`` + ``args.steps`` steps; return throughput over the timed steps."""
    torch.manual_seed(0)
    cfg = ModelConfig(**fields)
    model = Transformer(cfg).to(device)
    windows = PackedWindows(
        torch.randint(0, VOCAB, (args.batch * args.seq * (args.warmup + args.steps) + 1,)), args.seq
    )
    stream = BatchStream(windows, args.batch, args.micro_batch, shuffle=False)
    runner = torch.compile(model) if compile else model
    optimizer = loop.build_optimizer(model, lr=3e-4)
    autocast = loop.autocast_for(device, args.precision, cfg.hidden_size)
    tokens_per_step = args.batch * args.seq
    times = []
    for step in range(args.warmup + args.steps):
        micro = [{k: v.to(device) for k, v in b.items()} for b in stream.next_micro_batches()]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loop.train_step(
            runner,
            optimizer,
            micro,
            lambda m, b: loop.lm_loss(m, b, tokens_per_step),
            grad_clip=1.0,
            autocast=autocast,
        )
        model.update_moe_bias(1e-3) if cfg.is_moe else None
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]  # median: robust to neighbours' load spikes
    flops = flops_per_token(cfg, args.seq, include_mtp=False) * tokens_per_step
    return {
        "name": name + (" + compile" if compile else ""),
        "params": param_count(cfg),
        "active": active_param_count(cfg),
        "step_s": step_s,
        "tokens_per_s": tokens_per_step / step_s,
        "flops_per_s": flops / step_s,
    }


def profile_step(args: argparse.Namespace, device: torch.device) -> None:
    """Print the ops that take the time of one dense training step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:  # model set-up is in the profile too; it is small
        measure("dense", DENSE, argparse.Namespace(**{**vars(args), "warmup": 0, "steps": 1}), device, False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--micro-batch", type=int, default=0, help="sequences per forward (0 = batch)")
    parser.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also measure the torch.compile'd dense model")
    parser.add_argument("--quick", action="store_true", help="2 timed steps after 1 warm-up, batch 4 x 256")
    parser.add_argument("--profile", action="store_true", help="profile one dense step instead")
    parser.add_argument(
        "--size", choices=["20m", "0.5b"], default="20m", help="model sizes (0.5b: for a GPU)"
    )
    parser.add_argument("--precision", default="auto", help="train.precision: auto (measured), bf16, fp32")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.batch, args.seq = 2, 1, 4, 256
    device = loop.resolve_device(args.device)
    if args.profile:
        profile_step(args, device)
        return 0
    from r1kit.precision import resolve_precision

    dense, moe = (DENSE_05B, MOE_05B) if args.size == "0.5b" else (DENSE, MOE)
    # both models share one width, so one precision (and one peak) for the table
    dtype = (
        "bf16" if resolve_precision(args.precision, device, dense["hidden_size"]) == "bfloat16" else "fp32"
    )
    peak = lookup_device_peak(device, dtype)  # the peak of the precision that runs
    rows = [measure("dense", dense, args, device, compile=False)]
    if args.compile:
        rows.append(measure("dense", dense, args, device, compile=True))
    n_exp = moe["n_routed_experts"]
    rows.append(measure(f"MoE (MLA, {n_exp} experts top-2 + 1 shared)", moe, args, device, compile=False))
    peak_after = lookup_device_peak(device, dtype) if device.type != "cpu" else peak

    print(f"\nCommand: python {' '.join(sys.argv)}")
    print(f"Device: {peak.name}, torch {torch.__version__}, {torch.get_num_threads()} threads, {dtype}")
    print(f"Peak: {peak.flops / 1e9:.1f} GFLOP/s ({peak.source}); batch {args.batch} x {args.seq} tokens\n")
    print("| model | params | active | step (s) | tokens/s | model GFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['active'] / 1e6:.1f}M | {r['step_s']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | {r['flops_per_s'] / 1e9:.1f} | {100 * r['flops_per_s'] / peak_after.flops:.1f}% |"
        )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
