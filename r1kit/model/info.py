"""`r1kit info`: parameters, active parameters and training FLOPs of a model, without training it.

The model is a preset name (built on the meta device: shapes only, no memory) or a Hugging Face /
r1kit checkpoint directory (only its config.json is read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from r1kit.model.config import PRESETS, ModelConfig


@dataclass
class Config:
    """Options of `r1kit info`.

    Attributes:
        model: a preset name (tiny-llama, tiny-v3, ...) or a directory with a config.json.
        seq_len: the sequence length at which training FLOPs per token are counted.
    """

    model: str = "tiny-v3"
    seq_len: int = 1024


def load_model_config(model: str) -> ModelConfig:
    """A `ModelConfig` from a preset name or a checkpoint directory's config.json."""
    path = Path(model)
    if (path / "config.json").is_file():
        return ModelConfig.from_hf_dict(json.loads((path / "config.json").read_text()))
    if model in PRESETS:
        return ModelConfig.preset(model)
    raise ValueError(
        f"{model!r} is neither a directory with a config.json nor a preset ({', '.join(PRESETS)})"
    )


def describe(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Counts for one model: total and active parameters, FLOPs per training token, KV-cache bytes per token."""
    from r1kit.model.counting import active_param_count, flops_per_token, param_count

    if cfg.is_mla:
        cached = cfg.kv_lora_rank + cfg.qk_rope_head_dim  # latent + rope key, shared by all heads
    else:
        cached = 2 * cfg.num_key_value_heads * cfg.attn_head_dim
    return {
        "params": param_count(cfg),
        "active_params": active_param_count(cfg),
        "train_flops_per_token": flops_per_token(cfg, seq_len),
        "kv_cache_values_per_token": cached * cfg.num_hidden_layers,
    }


def run(config: Config) -> dict[str, float]:
    """Print the counts of `config.model` as a table and return them."""
    from rich.console import Console
    from rich.table import Table

    from r1kit.report import format_number

    cfg = load_model_config(config.model)
    counts = describe(cfg, config.seq_len)
    table = Table(title=f"{config.model} ({cfg.family})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("parameters", format_number(counts["params"]))
    table.add_row("active parameters per token", format_number(counts["active_params"]))
    table.add_row(
        f"training FLOPs per token (seq {config.seq_len})", format_number(counts["train_flops_per_token"])
    )
    table.add_row(
        "KV-cache values per token (all layers)", format_number(counts["kv_cache_values_per_token"])
    )
    Console().print(table)
    return counts
