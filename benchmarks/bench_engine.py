"""r1kit's Engine against transformers' `generate`, side by side in one process, same weights, same batch.

Run: `python benchmarks/bench_engine.py` (or `./run.sh bench bench_engine`); `--quick` for a smoke run;
`--device cuda --dtype bfloat16` puts both sides' weights on that device in that precision (the peak is
looked up for it); `--only e --layers 24 --batch 16` is the full 24-layer Qwen2.5-0.5B shape at batch 16.

Rows, each built by transformers with random weights, saved, and loaded into r1kit:
(a) a ~1M-parameter Qwen2, batch 64 x 128; (b) a ~20M-parameter DeepSeek-V3-style model (MLA + MoE),
same batch; (d) a Llama of width 256 and 3 layers, batch 48 x 96; (e) the Qwen2.5-0.5B shape cut to
`--layers` of its 24 blocks (default 2; width 896, 14/2 heads, vocabulary 151,936, tied head), batch
16 x 32; (f) a held-out Qwen3 shape (per-head q/k norm, head_dim 64 != width / heads, untied head),
batch 32 x 64. `--batch` / `--new` override every row's batch / new tokens.
Both sides sample (temperature 1, no top-k/top-p), use their KV cache, and produce exactly the
requested tokens per row (no EOS). r1kit runs in each of its decode modes: eager (`compile="off"`),
compiled (`compile="on"`: `torch.compile` of the decode step; the first call's extra time is printed
as the compile time, apart from the steady-state tokens/s) and, for (e), with a bf16 head copy
(`head_dtype="bf16"`). "greedy =" says whether each mode's greedy tokens equal transformers'
(16 new tokens per row). Then (c) MTP speculative decoding against plain greedy decoding on model
(b) with an MTP block briefly self-distilled on the model's own greedy outputs (acceptance stays ~5%
on random weights), or on a checkpoint with a trained MTP block (`--mtp-checkpoint DIR`).
Roofline fraction = forward FLOPs per token (r1kit.model.counting, at the mean context length) x
tokens/s / the device's peak for `--dtype` (r1kit.train.cost: datasheet for known GPUs, else a
measured matmul).
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


def hf_configs(layers_05b: int = 2):
    """name -> (transformers config, batch, new tokens); `layers_05b` blocks of row (e)'s 0.5B shape."""
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
    llama = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    qwen05 = transformers.Qwen2Config(
        vocab_size=151_936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers_05b,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    qwen3 = transformers.Qwen3Config(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=False,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    # name -> (config, batch, new tokens); None = the defaults of (a) and (b), 64 x 128
    return {
        "(a) Qwen2 ~1M": (qwen, None, None),
        "(b) DeepSeek-V3 MLA+MoE ~20M": (v3, None, None),
        "(d) Llama 256x3": (llama, 48, 96),
        f"(e) Qwen2.5-0.5B shape, {layers_05b} layers, vocab 151,936": (qwen05, 16, 32),
        "(f) held-out Qwen3 256x4, head_dim 64, vocab 4096": (qwen3, 32, 64),
    }


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
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def sync() -> None:
    """Wait for queued CUDA work, so wall-clock times cover it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def roofline(cfg: ModelConfig, context: float, tokens_per_s: float, peak: float) -> float:
    forward_flops = flops_per_token(cfg, int(context), include_mtp=False) / 3  # training = 3 x forward
    return forward_flops * tokens_per_s / peak


def self_distill_mtp(model: Transformer, prompts, new: int, steps: int) -> None:
    """Train only the MTP block on the model's own greedy continuations (next-next-token loss)."""
    outs = Engine(model).generate(prompts, SamplingParams(temperature=0, max_new_tokens=new))
    device = next(model.parameters()).device
    seqs = torch.tensor([p[-8:] + o.token_ids for p, o in zip(prompts, outs)], device=device)
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


def gemm_share(fn) -> float:
    """Share of `fn`'s profiled CPU time spent in GEMMs (`_gemm.GEMM_OPS`): the Amdahl bound of a faster engine
    is 1 / share, assuming it runs the same GEMMs no faster (slightly generous: see `_gemm.gemm_profile`)."""
    from _gemm import gemm_profile
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return gemm_profile(prof)["gemm_share"]


def first_call_and_steady(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, best seconds of `repeats` later calls): compile time shows in the first."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - start
    return first, timed(fn, repeats=repeats)[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch", type=int, help="batch of every engine row (default: each row's own; 64 for (a) and (b))"
    )
    parser.add_argument(
        "--new", type=int, help="new tokens per row of every row, (c) included (default: each row's own; 128)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spec-batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--mtp-checkpoint",
        help="an r1kit/HF checkpoint with a trained MTP block for (c) (default: self-distilled)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--bound", action="store_true",
                        help="profile transformers once per row: its GEMM share and the speed-up bound it implies")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="weights of both sides (the roofline's peak is that precision's)",
    )
    parser.add_argument(
        "--layers", type=int, default=2, help="blocks of row (e)'s Qwen2.5-0.5B shape (24 = the full model)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["a", "b", "c", "d", "e", "f"],
        default=["a", "b", "c", "d", "e", "f"],
        help="rows to run (default all)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["eager", "compiled", "bf16-head"],
        default=["eager", "compiled", "bf16-head"],
        help="r1kit decode modes to time (bf16-head only on row (e))",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.spec_batch = 1, [2]
    torch.set_num_threads(args.threads)
    import transformers

    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    peak = lookup_device_peak(device, "bf16" if dtype == torch.bfloat16 else "fp32")
    # (c)'s new tokens: --new, else 128 (16 under --quick)
    spec_new = args.new or (16 if args.quick else 128)
    rows, notes = [], []
    loaded = {}
    for name, (config, batch, new) in hf_configs(args.layers).items():
        if name[1] not in args.only and not (name[1] == "b" and "c" in args.only and not args.mtp_checkpoint):
            continue
        batch, new = batch or 64, new or 128
        if args.quick:  # smoke sizes, unless given
            batch, new = min(batch, 8), min(new, 16)
        batch, new = args.batch or batch, args.new or new
        prompts = make_prompts(batch)
        ids, mask = left_pad(prompts)
        ids, mask = ids.to(device), mask.to(device)
        context = sum(len(p) for p in prompts) / len(prompts) + new / 2
        hf = transformers.AutoModelForCausalLM.from_config(config).eval()
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            ours = Transformer.from_pretrained(tmp, device=device, dtype=dtype).eval()
        hf = hf.to(device=device, dtype=dtype)
        loaded[name] = ours
        if name[1] not in args.only:
            continue  # model (b) loaded only as the base of (c)
        tokens = batch * new

        def run_hf(hf=hf, ids=ids, mask=mask, new=new, sample=True):
            with torch.no_grad():
                kw = (
                    dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
                    if sample
                    else dict(do_sample=False)
                )
                out = hf.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    pad_token_id=0,
                    **kw,
                )
            assert out.shape[1] == ids.shape[1] + new
            return out[:, ids.shape[1] :].tolist()

        modes = [m for m in args.modes if m != "bf16-head" or name[1] == "e"]
        engines = {
            "eager": Engine(ours, compile="off"),
            "compiled": Engine(ours, compile="on"),
            "bf16-head": Engine(ours, compile="off", head_dtype="bf16"),
        }
        params = SamplingParams(temperature=1.0, max_new_tokens=new, seed=0, ignore_eos=True)

        def run_ours(engine, prompts=prompts, params=params, new=new):
            outs = engine.generate(prompts, params)
            assert all(len(o.token_ids) == new for o in outs)

        # greedy parity (16 new tokens), and the compile of the compiled mode, before any timing
        greedy_new = min(new, 16)
        want = run_hf(new=greedy_new, sample=False)
        greedy = SamplingParams(temperature=0, max_new_tokens=greedy_new, ignore_eos=True)
        same = {}
        compile_s = None
        for mode in modes:
            if mode == "compiled":
                first, steady = first_call_and_steady(lambda: run_ours(engines["compiled"]), 1)  # noqa: B023
                compile_s = first - steady
            got = [o.token_ids for o in engines[mode].generate(prompts, greedy)]
            same[mode] = got == want
        fns = [run_hf] + [lambda m=m: run_ours(engines[m]) for m in modes]  # noqa: B023
        times = timed(*fns, repeats=args.repeats)
        t_hf = times[0]
        n_params = param_count(ours)
        for who, t in zip(["transformers generate", *modes], times):
            tps = tokens / t
            label = who if who.startswith("transformers") else f"r1kit Engine, {who}"
            if who == "compiled" and compile_s is not None:
                label += f" (compile {compile_s:.1f} s, not in tok/s)"
            if who in same:
                label += f", greedy = transformers: {same[who]}"
            rows.append(
                (
                    f"{name}, batch {batch} x {new}",
                    f"{n_params / 1e6:.1f}M",
                    label,
                    f"{tps:,.0f}",
                    f"{t_hf / t:.2f}x",
                    roofline(ours.config, context, tps, peak.flops),
                )
            )
        if args.bound:
            share = gemm_share(run_hf)
            notes.append(
                f"{name}: transformers spends {share:.0%} of its generate in GEMMs (aten mm/addmm/bmm, "
                f"profiled once): an engine with zero non-GEMM time would be at most {1 / share:.2f}x"
            )
        w = engines["eager"].decoder.weights
        notes.append(
            f"{name}: decode weight copies (fused q/k/v, gate/up: {w.fuse}; bf16 head only in bf16-head) "
            f"built {w.builds} time(s) over the eager engine's calls"
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
        self_distill_mtp(mtp_model, make_prompts(32, seed=5), spec_new, steps=60 if not args.quick else 5)
    for batch in args.spec_batch:
        spec_prompts = make_prompts(batch, seed=7)
        engine = Engine(mtp_model)
        plain_params = SamplingParams(temperature=0, max_new_tokens=spec_new)
        spec_params = SamplingParams(temperature=0, max_new_tokens=spec_new, speculative=True)
        t_plain, t_spec = timed(
            lambda: engine.generate(spec_prompts, plain_params),  # noqa: B023
            lambda: engine.generate(spec_prompts, spec_params),  # noqa: B023
            repeats=args.repeats,
        )
        plain_out = engine.generate(spec_prompts, plain_params)
        spec_out = engine.generate(spec_prompts, spec_params)
        same = [o.token_ids for o in spec_out] == [o.token_ids for o in plain_out]
        acc = engine.last_stats.get("acceptance_rate", 0.0)
        tokens = batch * spec_new
        ctx = sum(len(p) for p in spec_prompts) / batch + spec_new / 2
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
        f"\nsampling T=1, KV cache, {args.dtype} weights on {device}; {peak.name}: "
        f"peak {peak.flops / 1e9:.0f} GFLOP/s ({peak.source})\n"
    )
    print("| model | params | engine | tokens/s | vs baseline | roofline |")
    print("|---|---|---|---|---|---|")
    for name, n, who, tps, ratio, frac in rows:
        print(f"| {name} | {n} | {who} | {tps} | {ratio} | {frac:.1%} |")
    for note in notes:
        print(note)
    print(
        f"\ncommand: python {shlex.join(sys.argv)}  (torch {torch.__version__}, transformers {transformers.__version__})"
    )


if __name__ == "__main__":
    main()
