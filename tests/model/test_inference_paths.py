"""Inference-only fast paths agree with the reference computations they replace."""

import pytest
import torch
from hf_factory import padded_batch, small_model

from r1kit.model.attention import attention_mask_4d


@pytest.mark.parametrize("family", ["qwen3", "deepseek_v3"])
def test_logits_to_keep_returns_the_last_positions_only(family):
    model = small_model(family)
    ids, mask, positions = padded_batch(96, [7, 4], 7)
    with torch.no_grad():
        full, hidden = model(ids, attention_mask=mask, positions=positions, return_hidden=True)
        last, hidden_last = model(
            ids, attention_mask=mask, positions=positions, return_hidden=True, logits_to_keep=2
        )
    assert last.shape == (2, 2, model.config.vocab_size)
    assert torch.equal(last, full[:, -2:])
    assert torch.equal(hidden_last, hidden)  # hidden states stay complete
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, logits_to_keep=-1)


def test_gqa_attention_equals_explicit_repeat_of_kv_heads():
    model = small_model("llama")
    attn = model.model.layers[0].self_attn
    assert attn.n_heads > attn.n_kv_heads
    b, t = 2, 5
    x = torch.randn(b, t, model.config.hidden_size)
    cos, sin = model.rotary(torch.arange(t).expand(b, t), x.dtype)
    with torch.no_grad():
        out = attn(x, cos, sin)
        # reference: transformers' repeat_kv then plain causal softmax attention
        from r1kit.model.layers import apply_rope

        q = apply_rope(attn.q_proj(x).view(b, t, attn.n_heads, -1).transpose(1, 2), cos, sin)
        k = apply_rope(attn.k_proj(x).view(b, t, attn.n_kv_heads, -1).transpose(1, 2), cos, sin)
        v = attn.v_proj(x).view(b, t, attn.n_kv_heads, -1).transpose(1, 2)
        rep = attn.n_heads // attn.n_kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scores = (q @ k.transpose(-1, -2)) * attn.scale
        scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        ref = attn.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1))
    assert (out - ref).abs().max() <= 1e-5


def test_mla_absorbed_multi_token_step_without_mask_is_causal():
    """Two-plus new tokens over a non-empty latent cache (speculative verification) with mask=None."""
    model = small_model("deepseek_v3")
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 6, model.config.hidden_size)
    cos, sin = model.rotary(torch.arange(6).expand(2, 6), x.dtype)
    with torch.no_grad():
        naive = attn(x, cos, sin)
        slot = model.new_cache(2, 8).layers[0]
        first = attn(x[:, :3], cos[:, :3], sin[:, :3], None, slot, 0)
        rest = attn(x[:, 3:], cos[:, 3:], sin[:, 3:], None, slot, 3)  # absorbed, T=3, internal causal mask
    assert (torch.cat([first, rest], dim=1) - naive).abs().max() <= 1e-5


def test_decode_mask_equals_general_mask():
    mask = torch.tensor([[0, 0, 1, 1, 0], [1, 1, 1, 1, 0]])
    fast = attention_mask_4d(mask, 2, 1, 4, torch.device("cpu"))
    q_idx = torch.tensor([[4]])
    general = ((torch.arange(5)[None] <= q_idx) & mask.bool()[:, None, :]) | (torch.arange(5)[None] == q_idx)
    assert torch.equal(fast, general[:, None])
    assert mask[0, 4] == 0  # the caller's mask is not modified


def test_moe_inference_experts_follow_weight_updates():
    model = small_model("deepseek_v3")
    moe = next(m for m in model.modules() if type(m).__name__ == "MoE")
    x = torch.randn(3, 4, model.config.hidden_size)

    def reference():
        with torch.enable_grad():
            moe.dispatch = "loop"  # the training path: x @ W^T per expert
            try:
                return moe(x).detach()
            finally:
                moe.dispatch = "auto"

    with torch.no_grad():
        fast = moe(x)
        assert (fast - reference()).abs().max() <= 1e-5
        moe.experts.gate_up_proj.mul_(1.5)  # an in-place update (optimizer step, load_state_dict)
        moe.experts.down_proj.add_(0.01)
        updated = moe(x)
    assert (updated - fast).abs().max() > 1e-3
    assert (updated - reference()).abs().max() <= 1e-5


def test_prefill_skips_unused_logits_in_flops():
    """The lm_head runs on one position per row when logits_to_keep=1 (checked via its input shape)."""
    model = small_model("llama")
    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    with torch.no_grad():
        model(torch.randint(0, 96, (3, 9)), logits_to_keep=1)
    handle.remove()
    assert seen == [(3, 1, model.config.hidden_size)]


def test_rmsnorm_fused_fp32_path_equals_the_formula():
    from r1kit.model.layers import RMSNorm

    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 16) * 3
    ref = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert (norm(x) - ref).abs().max() <= 1e-6
    bf = norm.to(torch.bfloat16)(x.bfloat16())  # bf16: the fp32-internal reference path
    assert bf.dtype == torch.bfloat16 and (bf.float() - ref).abs().max() <= 0.05 * ref.abs().max()


def test_moe_inference_copies_follow_fused_optimizer_steps():
    """A validation between training steps must see the current expert weights: fused AdamW updates them
    in place without moving their version counters (the demo's SFT validation once read stale copies)."""
    from r1kit.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny-v3", num_hidden_layers=2)
    model = Transformer(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    model.eval()
    with torch.no_grad():
        before = model(ids)  # builds the transposed inference copies
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    for _ in range(2):
        opt.zero_grad()
        model(ids).float().logsumexp(-1).mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        got = model(ids)
    fresh = Transformer(cfg)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        want = fresh(ids)
    assert not torch.allclose(before, want, atol=1e-4)  # the steps changed the model
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
