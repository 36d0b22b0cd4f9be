"""KV cache: prefill + step-by-step decode equals the full forward (GQA and MLA's absorbed path)."""

import pytest
import torch
from hf_factory import padded_batch, small_model

TOL = 1e-4
FAMILIES = ["llama", "qwen3", "deepseek_v3"]


def _decode(model, ids, mask, positions, prefill: int, cache=None):
    """Logits (B, T, V) from a prefill of ``prefill`` columns, then one column at a time through the cache."""
    b, t = ids.shape
    cache = cache or model.new_cache(b, t + 4)
    outs = [
        model(
            ids[:, :prefill], attention_mask=mask[:, :prefill], positions=positions[:, :prefill], cache=cache
        )
    ]
    for i in range(prefill, t):
        outs.append(
            model(
                ids[:, i : i + 1],
                attention_mask=mask[:, : i + 1],
                positions=positions[:, i : i + 1],
                cache=cache,
            )
        )
    return torch.cat(outs, dim=1), cache


def _diff(a, b, mask):
    real = mask.bool()
    return (a[real] - b[real]).abs().max().item()


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_decode_matches_full_forward(family):
    model = small_model(family)
    ids, mask, positions = padded_batch(96, [10, 7, 3], 10)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, positions=positions)
        stepped, cache = _decode(model, ids, mask, positions, prefill=4)  # row 3's prefill is all padding
    assert cache.length == 10
    assert torch.isfinite(stepped).all()
    assert _diff(stepped, full, mask) <= TOL


def test_mla_cache_holds_only_latent_and_rope_key():
    model = small_model("deepseek_v3")
    cfg = model.config
    cache = model.new_cache(2, 16)
    for slot in (*cache.layers, *cache.mtp_layers):
        assert {k: tuple(v.shape) for k, v in slot.items()} == {
            "c_kv": (2, 16, cfg.kv_lora_rank),
            "k_pe": (2, 16, cfg.qk_rope_head_dim),
        }


def test_mla_absorbed_attention_equals_naive():
    """One MLA layer: the absorbed path over the latent cache equals the expanded path (prefill and decode)."""
    model = small_model("deepseek_v3")
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 6, model.config.hidden_size)
    pos = torch.arange(6).expand(2, 6)
    cos, sin = model.rotary(pos, x.dtype)
    with torch.no_grad():
        naive = attn(x, cos, sin)
        slot = model.new_cache(2, 8).layers[0]
        absorbed_prefill = attn(x[:, :4], cos[:, :4], sin[:, :4], None, slot, 0)
        absorbed_rest = attn(x[:, 4:], cos[:, 4:], sin[:, 4:], _causal_mask(2, 2, 4), slot, 4)
    absorbed = torch.cat([absorbed_prefill, absorbed_rest], dim=1)
    assert (absorbed - naive).abs().max() <= 1e-5


def _causal_mask(b, t, start):
    from r1kit.model.attention import attention_mask_4d

    return attention_mask_4d(torch.ones(b, start + t, dtype=torch.long), b, t, start, torch.device("cpu"))


@pytest.mark.parametrize("family", ["llama", "deepseek_v3"])
def test_reorder_fans_out_prefill_rows(family):
    model = small_model(family)
    ids, mask, positions = padded_batch(96, [8, 5, 2], 8)
    index = torch.tensor([2, 0, 0, 1])
    with torch.no_grad():
        cache = model.new_cache(3, 12)
        model(ids[:, :5], attention_mask=mask[:, :5], positions=positions[:, :5], cache=cache)
        cache.reorder(index)
        assert cache.batch_size == 4
        ids2, mask2, pos2 = ids[index], mask[index], positions[index]
        steps = [model(ids2[:, i : i + 1], attention_mask=mask2[:, : i + 1], positions=pos2[:, i : i + 1], cache=cache)
                 for i in range(5, 8)]  # fmt: skip
        full = model(ids2, attention_mask=mask2, positions=pos2)
    assert _diff(torch.cat(steps, dim=1), full[:, 5:], mask2[:, 5:]) <= TOL


@pytest.mark.parametrize("family", ["llama", "deepseek_v3"])
def test_truncate_rolls_back_rejected_tokens(family):
    model = small_model(family)
    ids, mask, positions = padded_batch(96, [9, 6], 9)
    with torch.no_grad():
        _, cache = _decode(model, ids, mask, positions, prefill=5)
        cache.truncate(6)
        assert cache.length == 6
        other = ids.clone()
        other[:, 6:] = (ids[:, 6:] + 1) % 96  # the "accepted" continuation differs from the rejected draft
        redo = [model(other[:, i : i + 1], attention_mask=mask[:, : i + 1], positions=positions[:, i : i + 1], cache=cache)
                for i in range(6, 9)]  # fmt: skip
        full = model(other, attention_mask=mask, positions=positions)
    assert _diff(torch.cat(redo, dim=1), full[:, 6:], mask[:, 6:]) <= TOL


def test_cache_overflow_and_bad_mask_are_clear_errors():
    model = small_model("llama")
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache full"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(
            torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 2), cache=model.new_cache(1, 4)
        )


def test_cpu_decode_attention_equals_sdpa():
    """The CPU decode attention (two matmuls around an fp32 softmax) is SDPA's, padding masked, GQA packed."""
    import torch.nn.functional as F

    from r1kit.model.attention import _decode_attend

    gen = torch.Generator().manual_seed(0)
    b, hk, rep, d, s = 5, 2, 3, 16, 11
    q, k, v = (torch.randn(b, hk, n, d, generator=gen) for n in (rep, s, s))
    mask = torch.ones(b, 1, 1, s, dtype=torch.bool)
    mask[1, ..., :4] = False  # a left-padded row
    mask[3, ..., 7:] = False  # unwritten slots
    for m in (mask, None):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=d**-0.5)
        got = _decode_attend(q, k, v, m, d**-0.5)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the masked keys carry no weight: changing them changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[1, :, :4], v2[3, :, 7:] = 1e3, -1e3
    torch.testing.assert_close(
        _decode_attend(q, k2, v2, mask, d**-0.5), _decode_attend(q, k, v, mask, d**-0.5)
    )
