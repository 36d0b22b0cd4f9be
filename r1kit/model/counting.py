"""Parameter counts and training FLOPs per token, the way DeepSeek-V3 and PaLM report them.

- ``param_count``: every parameter tensor once (a tied embedding/head counts once), MTP included.
- ``active_param_count``: what one token touches: everything except the routed experts it is not sent to,
  i.e. total - sum over MoE layers of (E - k) * 3 * D * F. Shared experts, router and dense parts all count.
- ``flops_per_token(cfg, seq_len)``: training (forward + backward) FLOPs for one token of a ``seq_len``
  sequence:

      6 * N_matmul + 6 * n_attn_layers * H * (d_qk + d_v) * seq_len

  N_matmul = active parameters - the embedding table (a lookup, not a matmul) + V * D for every output-head
  matmul whose matrix the table already counted (tied head, and the MTP block's shared head). The second
  term is the attention score and value matmuls (2 FLOPs per multiply-add, x3 for backward), PaLM's
  12 * L * H * Q * T generalised to d_qk != d_v (MLA: d_qk = nope + rope, d_v = v_head_dim, the naive
  training path). Like PaLM it counts the full T x T score matrix; a causal kernel does about half.
"""

from __future__ import annotations

from torch import nn

from r1kit.model.config import ModelConfig


def _as_model_and_config(model_or_cfg) -> tuple[nn.Module, ModelConfig]:
    if isinstance(model_or_cfg, ModelConfig):
        from r1kit.model.transformer import Transformer

        return Transformer(model_or_cfg, device="meta"), model_or_cfg  # meta: shapes only, no memory
    return model_or_cfg, model_or_cfg.config


def param_count(model_or_cfg, include_mtp: bool = True) -> int:
    """Number of parameters of a ``Transformer`` or of the model a ``ModelConfig`` describes (tied weights once)."""
    model, _ = _as_model_and_config(model_or_cfg)
    total = sum(p.numel() for p in model.parameters())
    if not include_mtp:
        total -= sum(p.numel() for p in model.mtp.parameters())
    return total


def _inactive_expert_params(cfg: ModelConfig, include_mtp: bool) -> int:
    if not cfg.is_moe:
        return 0
    layers = cfg.num_hidden_layers + (cfg.num_mtp_layers if include_mtp else 0)
    n_moe = sum(cfg.is_moe_layer(i) for i in range(layers))
    per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    return n_moe * (cfg.n_routed_experts - cfg.num_experts_per_tok) * per_expert


def active_param_count(model_or_cfg, include_mtp: bool = True) -> int:
    """Parameters one token uses: total minus the (E - k) routed experts per MoE layer it skips."""
    model, cfg = _as_model_and_config(model_or_cfg)
    return param_count(model, include_mtp) - _inactive_expert_params(cfg, include_mtp)


def flops_per_token(cfg: ModelConfig, seq_len: int, include_mtp: bool = True) -> float:
    """Training FLOPs per token (forward + backward) at sequence length ``seq_len``; formula in the module doc."""
    if isinstance(cfg, nn.Module):
        cfg = cfg.config
    v, d = cfg.vocab_size, cfg.hidden_size
    use_mtp = include_mtp and cfg.num_mtp_layers > 0
    matmul_params = active_param_count(cfg, include_mtp) - v * d
    if cfg.tie_word_embeddings:
        matmul_params += v * d  # the head matmul uses the table counted once as the embedding
    if use_mtp:
        matmul_params += v * d  # the MTP block reuses the head: one more V x D matmul per token
    attn_layers = cfg.num_hidden_layers + (cfg.num_mtp_layers if use_mtp else 0)
    attn = 6 * attn_layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.value_head_dim) * seq_len
    return float(6 * matmul_params + attn)
