"""Extra peak memory of per-token log-probs + backward at a real vocabulary: the full-logits path
against the fused, chunked head (`r1kit.rl.losses.head_logprobs`), next to the backbone's own.

    python benchmarks/bench_logprob_memory.py                       # Qwen2.5-0.5B shape, 2 layers, 8 x 512
    python benchmarks/bench_logprob_memory.py --device cuda --layers 24

The model is the Qwen2.5-0.5B shape (hidden 896, MLP 4864, 14 heads, 2 KV heads, vocabulary 151,936,
tied embeddings; `--layers` of its 24 blocks), randomly initialised in fp32. Each variant runs in a
fresh subprocess, so its peak is its own: the model is built, then one forward + backward of the
GRPO log-prob path on B x L tokens (prompt `--prompt-len`, every completion token counted), and the
extra peak (peak RSS on CPU, or peak allocated on CUDA, minus what the process held before the step)
is reported:

- backbone: the hidden states only (`Transformer.hidden_states`), a scalar of them backpropagated;
- full: (B, L, V) logits from the model's head, log-probs over every position, gathered (the old path);
- chunked: `r1kit.rl.rollout.completion_logprobs` (head over counted completion tokens, in chunks).

Log-probs of the two paths are compared (max abs difference) in the same run. Target (issue 16):
chunked extra <= 2x the backbone's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = ("backbone", "full", "chunked")


def _config(layers: int, vocab: int):
    from r1kit.model.config import ModelConfig

    return ModelConfig(
        family="qwen2",
        vocab_size=vocab,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        qkv_bias=True,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        max_position_embeddings=32768,
    )


def _peak_bytes(device) -> float:
    import torch

    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Linux: KiB


def _held_bytes(device) -> float:
    import torch

    if device.type == "cuda":
        return float(torch.cuda.memory_allocated(device))
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args: argparse.Namespace) -> dict:
    """One variant in this process; returns its numbers."""
    import torch

    from r1kit.model import Transformer
    from r1kit.rl.losses import token_logprobs
    from r1kit.rl.rollout import Batch, completion_logprobs

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = Transformer(_config(args.layers, args.vocab), device=device).train()
    B, L, P = args.batch, args.length, args.prompt_len
    T = L - P
    ids = torch.randint(0, args.vocab, (B, L), device=device)
    index = (P - 1 + torch.arange(T, device=device)).expand(B, T).clamp(max=L - 2)
    targets = ids.gather(1, (index + 1).clamp(max=L - 1))
    mask = torch.ones(B, T, device=device)
    mask[:, -1] = 0  # the last position has no next token inside the batch
    batch = Batch(ids, index, targets, mask, torch.zeros(B, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = _held_bytes(device)
    peak_before = _peak_bytes(device)
    t0 = time.perf_counter()
    if args.variant == "backbone":
        hidden = model.hidden_states(ids)
        hidden.float().square().mean().backward()
        logp = None
    elif args.variant == "full":
        logits = model(ids)
        logp = token_logprobs(logits, torch.roll(ids, -1, 1)).gather(1, index) * mask
        logp.sum().backward()
    else:
        logp, _ = completion_logprobs(model, batch, chunk_size=args.chunk)
        logp.sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = _peak_bytes(device)
    out = {
        "variant": args.variant,
        "extra_bytes": peak - max(before, 0.0)
        if device.type == "cuda"
        else max(peak - before, peak - peak_before),
        "seconds": seconds,
        "held_before_bytes": before,
    }
    if logp is not None:
        out["logp_head"] = logp.detach()[mask.bool()][:256].cpu().tolist()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=512, help="positions per head chunk")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", default="", help="also write the results to this file")
    ap.add_argument("--variant", default="", help=argparse.SUPPRESS)  # worker mode
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return
    results = {}
    for v in args.variants.split(","):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", v]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"variant {v} failed")
        results[v] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{v}: +{results[v]['extra_bytes'] / 2**30:.2f} GiB, {results[v]['seconds']:.2f} s",
            file=sys.stderr,
        )
    gib = {k: r["extra_bytes"] / 2**30 for k, r in results.items()}
    kind = "peak allocated (CUDA)" if args.device.startswith("cuda") else "peak RSS"
    print(
        f"\nper-token log-probs + backward, Qwen2.5-0.5B shape ({args.layers} layers, vocab {args.vocab}), "
        f"{args.batch} x {args.length} tokens (prompt {args.prompt_len}), fp32, {args.device}, chunk {args.chunk}, "
        f"{args.threads} threads; extra {kind} over the built model\n"
    )
    print("| path | extra peak | x backbone | seconds |")
    print("|---|---|---|---|")
    base = gib.get("backbone")
    for k, r in results.items():
        ratio = f"{gib[k] / base:.2f}" if base else "–"
        print(f"| {k} | {gib[k]:.2f} GiB | {ratio} | {r['seconds']:.2f} |")
    if "full" in results and "chunked" in results:
        import torch

        a, b = torch.tensor(results["full"]["logp_head"]), torch.tensor(results["chunked"]["logp_head"])
        print(
            f"\nmax |logp full - logp chunked| over the first {a.numel()} counted tokens: {(a - b).abs().max():.2e}"
        )
    if base and "chunked" in gib:
        verdict = "met" if gib["chunked"] <= 2 * base else "missed"
        print(f"target chunked extra <= 2x backbone: {verdict} ({gib['chunked'] / base:.2f}x)")
    print("command: python " + " ".join(sys.argv))
    if args.json:
        for r in results.values():
            r.pop("logp_head", None)
        with open(args.json, "w") as fh:
            json.dump(
                {"args": {k: v for k, v in vars(args).items() if k != "variant"}, "results": results},
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
