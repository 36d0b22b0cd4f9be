"""`r1kit demo`: what the foundation can do today, end to end on a CPU in seconds.

Builds a tiny DeepSeek-V3-style model (MLA + DeepSeekMoE + MTP), prints its parameter and FLOPs
counts, runs a forward pass, saves it in the Hugging Face layout, reloads it, and checks that the
reloaded model's logits are identical. The full R1 recipe demo replaces this as the stages land.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    """Options of `r1kit demo`.

    Attributes:
        out: directory the demo model is written to.
        preset: model preset to build.
        seed: random seed for the weights and the input batch.
    """

    out: str = "runs/demo/model"
    preset: str = "tiny-v3"
    seed: int = 0


def run(config: Config) -> dict[str, float]:
    """Build, count, save, reload and compare; returns the counts and the max logit difference."""
    import torch
    from rich.console import Console

    from r1kit.model import ModelConfig, Transformer
    from r1kit.model.info import describe
    from r1kit.report import format_number

    console = Console()
    console.rule(f"r1kit demo: a tiny {config.preset} model")
    torch.manual_seed(config.seed)
    cfg = ModelConfig.preset(config.preset)
    model = Transformer(cfg).eval()
    counts = describe(cfg, seq_len=128)
    console.print(
        f"parameters {format_number(counts['params'])}, active per token {format_number(counts['active_params'])}, "
        f"training FLOPs per token {format_number(counts['train_flops_per_token'])} at 128 tokens"
    )
    ids = torch.randint(0, cfg.vocab_size, (4, 32), generator=torch.Generator().manual_seed(config.seed))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # a left-padded row: padding must not change the real tokens' logits
    with torch.no_grad():
        logits, mtp = model(ids, attention_mask=mask, return_mtp=True)
        model.save_pretrained(config.out)
        reloaded = Transformer.from_pretrained(config.out).eval()
        logits2, mtp2 = reloaded(ids, attention_mask=mask, return_mtp=True)
    diff = max((logits - logits2).abs().max().item(), (mtp - mtp2).abs().max().item())
    console.print(f"saved to {config.out} (Hugging Face layout: config.json + model.safetensors)")
    console.print(f"reloaded: max |logit difference| = {diff:.2e} (main head and MTP head)")
    if diff > 1e-6:
        raise RuntimeError(f"reloaded model differs from the saved one by {diff}")
    console.print("[green]ok[/green]")
    return {**counts, "max_abs_diff": diff}
