"""r1kit's Engine against transformers' `generate`, side by side in one process, same weights, same batch.

Run: `python benchmarks/bench_engine.py` (or `./run.sh bench bench_engine`); `--quick` for a smoke run.

Rows: (a) a ~1M-parameter Qwen2 and (b) a ~20M-parameter DeepSeek-V3-style model (MLA + MoE), each
built by transformers with random weights, saved, and loaded into r1kit. Both sides sample
(temperature 1, no top-k/top-p), use their KV cache, and produce exactly `--new` tokens per row (no
EOS). Then (c) MTP speculative decoding against plain greedy decoding on model (b) with an MTP block
briefly self-distilled on the model's own greedy outputs (acceptance stays ~5% on random weights), or
on a checkpoint with a trained MTP block (`--mtp-checkpoint DIR`).
Roofline fraction = forward FLOPs per token (r1kit.model.counting, at the mean context length) x
tokens/s / measured fp32 matmul peak (r1kit.train.cost).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time

import torch

from r1kit.engine import Engine, SamplingParams
from r1kit.model import ModelConfig, Transformer
from r1kit.model.counting import flops_per_token, param_count
from r1kit.train.cost import lookup_device_peak

VOCAB = 104


def hf_configs():
    import transformers

    qwen = transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    v3 = transformers.DeepseekV3Config(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        q_lora_rank=64,
        kv_lora_rank=128,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        n_routed_experts=16,
        n_shared_experts=1,
        num_experts_per_tok=2,
        moe_intermediate_size=256,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        num_mtp_layers=0,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    return {"(a) Qwen2 ~1M": qwen, "(b) DeepSeek-V3 MLA+MoE ~20M": v3}


def qwen05b_config(layers: int):
    """The Qwen2.5-0.5B shape (hidden 896, MLP 4864, 14 heads, 2 KV heads, vocabulary 151,936, tied),
    `layers` of its 24 blocks, random weights: where the head dominates decode."""
    import transformers

    return transformers.Qwen2Config(
        vocab_size=151_936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )


def make_prompts(batch: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 25, (batch,), generator=gen).tolist()
    return [torch.randint(1, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def left_pad(prompts):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def timed(*fns, repeats: int) -> list[float]:
    """Best wall-clock seconds of each function over `repeats` rounds after one warm-up call each.

    The functions alternate within every round, so a change in machine load hits them alike.
    """
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def roofline(cfg: ModelConfig, context: float, tokens_per_s: float, peak: float) -> float:
    forward_flops = flops_per_token(cfg, int(context), include_mtp=False) / 3  # training = 3 x forward
    return forward_flops * tokens_per_s / peak


def self_distill_mtp(model: Transformer, prompts, new: int, steps: int) -> None:
    """Train only the MTP block on the model's own greedy continuations (next-next-token loss)."""
    outs = Engine(model).generate(prompts, SamplingParams(temperature=0, max_new_tokens=new))
    seqs = torch.tensor([p[-8:] + o.token_ids for p, o in zip(prompts, outs)])
    params = list(model.mtp.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    with torch.no_grad():
        _, hidden = model(seqs, return_hidden=True)
    model.train()
    for _ in range(steps):
        logits = model.mtp_logits(hidden[:, :-2], seqs[:, 1:-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), seqs[:, 2:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new", type=int, default=128, help="new tokens per row")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spec-batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--mtp-checkpoint",
        help="an r1kit/HF checkpoint with a trained MTP block for (c) (default: self-distilled)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument("--dtype", default="float32", help="weights of both sides: float32 or bfloat16")
    parser.add_argument(
        "--shape",
        choices=["tiny", "qwen2.5-0.5b"],
        default="tiny",
        help="row (a)'s model: the ~1M Qwen2, or the Qwen2.5-0.5B shape (--layers of its 24 blocks)",
    )
    parser.add_argument("--layers", type=int, default=24, help="blocks of the qwen2.5-0.5b shape")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["a", "b", "c"],
        default=["a", "b", "c"],
        help="rows to run (default all)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.new, args.repeats, args.spec_batch = 8, 16, 1, [2]
    torch.set_num_threads(args.threads)
    import transformers

    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    peak = lookup_device_peak(device, "bf16" if dtype == torch.bfloat16 else "fp32")
    prompts = make_prompts(args.batch)
    ids, mask = left_pad(prompts)
    ids, mask = ids.to(device), mask.to(device)
    configs = hf_configs()
    if args.shape == "qwen2.5-0.5b":
        configs[f"(a) Qwen2.5-0.5B shape, {args.layers} layers"] = qwen05b_config(args.layers)
        del configs["(a) Qwen2 ~1M"]
        configs = dict(sorted(configs.items()))
    context = sum(len(p) for p in prompts) / len(prompts) + args.new / 2
    rows = []
    loaded = {}
    for name, config in configs.items():
        if name[1] not in args.only and not (name[1] == "b" and "c" in args.only and not args.mtp_checkpoint):
            continue
        hf = transformers.AutoModelForCausalLM.from_config(config).eval()
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            ours = Transformer.from_pretrained(tmp, device=device, dtype=dtype).eval()
        hf = hf.to(device=device, dtype=dtype)
        loaded[name] = ours
        tokens = args.batch * args.new

        def run_hf(hf=hf):
            with torch.no_grad():
                out = hf.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=args.new,
                    min_new_tokens=args.new,
                    pad_token_id=0,
                )
            assert out.shape[1] == ids.shape[1] + args.new

        engine = Engine(ours)
        params = SamplingParams(temperature=1.0, max_new_tokens=args.new, seed=0)

        def run_ours(engine=engine, params=params):
            outs = engine.generate(prompts, params)
            assert all(len(o.token_ids) == args.new for o in outs)

        if name[1] not in args.only:
            continue  # model (b) loaded only as the base of (c)
        t_hf, t_ours = timed(run_hf, run_ours, repeats=args.repeats)
        n_params = param_count(ours)
        for who, t in (("transformers generate", t_hf), ("r1kit Engine", t_ours)):
            tps = tokens / t
            rows.append(
                (
                    name,
                    f"{n_params / 1e6:.1f}M",
                    who,
                    f"{tps:,.0f}",
                    f"{t_hf / t:.2f}x",
                    roofline(ours.config, context, tps, peak.flops),
                )
            )

    # (c) MTP speculative decoding, greedy, model (b) + a self-distilled MTP block
    if "c" not in args.only:
        args.spec_batch = []
    elif args.mtp_checkpoint:
        mtp_model = Transformer.from_pretrained(args.mtp_checkpoint, device=device, dtype=dtype).eval()
        cfg = mtp_model.config
    else:
        base = loaded["(b) DeepSeek-V3 MLA+MoE ~20M"]
        cfg = ModelConfig(**{**base.config.__dict__, "num_mtp_layers": 1})
        mtp_model = Transformer(cfg, device=device, dtype=dtype).eval()
        mtp_model.load_state_dict(base.state_dict(), strict=False)
        torch.manual_seed(1)
        self_distill_mtp(mtp_model, make_prompts(32, seed=5), args.new, steps=60 if not args.quick else 5)
    for batch in args.spec_batch:
        spec_prompts = make_prompts(batch, seed=7)
        engine = Engine(mtp_model)
        plain_params = SamplingParams(temperature=0, max_new_tokens=args.new)
        spec_params = SamplingParams(temperature=0, max_new_tokens=args.new, speculative=True)
        t_plain, t_spec = timed(
            lambda: engine.generate(spec_prompts, plain_params),  # noqa: B023
            lambda: engine.generate(spec_prompts, spec_params),  # noqa: B023
            repeats=args.repeats,
        )
        plain_out = engine.generate(spec_prompts, plain_params)
        spec_out = engine.generate(spec_prompts, spec_params)
        same = [o.token_ids for o in spec_out] == [o.token_ids for o in plain_out]
        acc = engine.last_stats.get("acceptance_rate", 0.0)
        tokens = batch * args.new
        ctx = sum(len(p) for p in spec_prompts) / batch + args.new / 2
        name = f"(c) MTP speculative, batch {batch}, acceptance {acc:.0%}, identical={same}"
        for who, t in (("r1kit plain greedy", t_plain), ("r1kit MTP speculative", t_spec)):
            tps = tokens / t
            rows.append(
                (
                    name,
                    f"{param_count(mtp_model) / 1e6:.1f}M",
                    who,
                    f"{tps:,.0f}",
                    f"{t_plain / t:.2f}x",
                    roofline(cfg, ctx, tps, peak.flops),
                )
            )

    print(
        f"\nbatch {args.batch} x {args.new} new tokens, sampling T=1, KV cache, {args.dtype} weights; {peak.name}: "
        f"peak {peak.flops / 1e9:.0f} GFLOP/s ({peak.source})\n"
    )
    print("| model | params | engine | tokens/s | vs baseline | roofline |")
    print("|---|---|---|---|---|---|")
    for name, n, who, tps, ratio, frac in rows:
        print(f"| {name} | {n} | {who} | {tps} | {ratio} | {frac:.1%} |")
    print(
        f"\ncommand: python {shlex.join(sys.argv)}  (torch {torch.__version__}, transformers {transformers.__version__})"
    )


if __name__ == "__main__":
    main()
