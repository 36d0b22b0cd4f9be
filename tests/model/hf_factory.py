"""Tiny random transformers models (no download) for parity tests, one per feature combination we must match."""

from __future__ import annotations

import torch

# name -> (transformers config class, kwargs). Each case turns on features the others leave off.
CASES: dict[str, tuple[str, dict]] = {
    # GQA 4:2, untied head, llama3 rope with a short original context so the scaling bends real frequencies.
    "llama_gqa_llama3": (
        "LlamaConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=10000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    # MQA (4:1), tied head, linear rope scaling, every optional Llama bias.
    "llama_tied_linear_bias": (
        "LlamaConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters=dict(rope_type="linear", rope_theta=500.0, factor=2.0),
        ),
    ),
    # q/k/v biases, tied head (as Qwen2.5-0.5B).
    "qwen2": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    # per-head q/k norm and an explicit head_dim != hidden / heads.
    "qwen3": (
        "Qwen3Config",
        dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24, tie_word_embeddings=False),
    ),
    # MLA with plain q_proj (q_lora_rank None), non-interleaved rope, one group, un-normalised top-k weights.
    "deepseek_plain_q": (
        "DeepseekV3Config",
        dict(
            num_attention_heads=4,
            num_key_value_heads=4,
            q_lora_rank=None,
            kv_lora_rank=16,
            qk_nope_head_dim=8,
            qk_rope_head_dim=8,
            v_head_dim=12,
            rope_interleave=False,
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            norm_topk_prob=False,
            routed_scaling_factor=1.5,
            num_mtp_layers=0,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
    ),
    # MLA with q latent, interleaved yarn rope (mscale on the softmax scale), group-limited routing 4 -> 2,
    # two dense layers first, two shared experts.
    "deepseek_lora_yarn_groups": (
        "DeepseekV3Config",
        dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            q_lora_rank=24,
            kv_lora_rank=16,
            qk_nope_head_dim=8,
            qk_rope_head_dim=8,
            v_head_dim=8,
            rope_interleave=True,
            n_routed_experts=8,
            n_shared_experts=2,
            num_experts_per_tok=3,
            moe_intermediate_size=16,
            first_k_dense_replace=2,
            n_group=4,
            topk_group=2,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            num_mtp_layers=0,
            max_position_embeddings=128,
            rope_parameters=dict(
                rope_type="yarn",
                rope_theta=10000.0,
                factor=4.0,
                mscale=0.9,
                mscale_all_dim=1.0,
                beta_fast=32,
                beta_slow=1,
                original_max_position_embeddings=32,
            ),
        ),
    ),
}

COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    max_position_embeddings=64,
    initializer_range=0.1,  # larger than 0.02 so logits and routing are far from uniform
    rms_norm_eps=1e-6,
)


def make_hf_model(name: str):
    """A random transformers CausalLM for case ``name`` in eval mode, fp32, with non-trivial norms and biases."""
    import transformers

    cls_name, kwargs = CASES[name]
    config = getattr(transformers, cls_name)(**{**COMMON, **kwargs})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    randomise(model)
    return model


@torch.no_grad()
def randomise(model, seed: int = 0) -> None:
    """Perturb norms (around 1), biases and routing biases so a wrong formula cannot hide behind 1s and 0s."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.is_floating_point() or "inv_freq" in name:
            continue
        noise = torch.randn(tensor.shape, generator=gen).to(tensor.dtype)
        if name.endswith("e_score_correction_bias"):
            tensor.copy_(0.05 * noise)
        elif "norm" in name:
            tensor.copy_(1.0 + 0.2 * noise)
        elif name.endswith("bias"):
            tensor.copy_(0.1 * noise)
        elif name.endswith("mlp.gate.weight"):
            tensor.copy_(0.3 * noise)  # routing scores spread over (0, 1)


def padded_batch(vocab_size: int, lengths: list[int], total: int, seed: int = 1):
    """Left-padded batch like the engine's: ids (B, T), attention_mask (B, T) (1 = real), positions (B, T)
    counting from 0 at each row's first real token (0 on padding)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (len(lengths), total), generator=gen)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, total - n :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def small_config(family: str, **overrides):
    """A tiny r1kit ModelConfig per family (no transformers needed), with the features that family has."""
    from r1kit.model import ModelConfig

    base = dict(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, initializer_range=0.1
    )
    per_family = {
        "llama": dict(num_attention_heads=4, num_key_value_heads=2),
        "qwen2": dict(num_attention_heads=4, num_key_value_heads=2, qkv_bias=True, tie_word_embeddings=True),
        "qwen3": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24, qk_norm=True),
        "deepseek_v3": dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_nope_head_dim=8,
            qk_rope_head_dim=8,
            v_head_dim=8,
            rope_interleave=True,
            n_routed_experts=8,
            n_shared_experts=1,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            first_k_dense_replace=1,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            num_mtp_layers=1,
            rope_scaling=dict(
                rope_type="yarn",
                factor=4.0,
                mscale=1.0,
                mscale_all_dim=1.0,
                original_max_position_embeddings=32,
            ),
        ),
    }
    return ModelConfig(family=family, **{**base, **per_family[family], **overrides})


def small_model(family: str, **overrides):
    """Random ``Transformer`` for ``small_config(family)`` with perturbed norms/biases, eval mode."""
    from r1kit.model import Transformer

    torch.manual_seed(0)
    model = Transformer(small_config(family, **overrides)).eval()
    randomise(model)
    return model
