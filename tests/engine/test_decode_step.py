"""The one-token decode step (`Transformer.decode_step`, `r1kit.engine.decode`) against the full forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from r1kit.config import UserError
from r1kit.engine import Engine, SamplingParams
from r1kit.engine.decode import DecodeStep, DecodeWeights
from r1kit.model import ModelConfig, Transformer

BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, initializer_range=0.1)
FAMILIES = {
    "llama": dict(family="llama", num_attention_heads=4, num_key_value_heads=2),
    "llama_mqa_bias": dict(
        family="llama", num_attention_heads=4, num_key_value_heads=1, attention_bias=True, mlp_bias=True
    ),
    "qwen2": dict(
        family="qwen2", num_attention_heads=4, num_key_value_heads=2, qkv_bias=True, tie_word_embeddings=True
    ),
    "qwen3": dict(family="qwen3", num_attention_heads=4, num_key_value_heads=2, head_dim=24, qk_norm=True),
    "deepseek_v3": dict(
        family="deepseek_v3",
        num_attention_heads=4,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=8,
        rope_interleave=True,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
    ),
}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]


def make_model(name: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**BASE, **FAMILIES[name]})).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong formula cannot hide behind 1s and 0s
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def padded(prompts, width):
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


@pytest.mark.parametrize("name", sorted(FAMILIES))
@torch.no_grad()
def test_decode_step_matches_forward_on_a_padded_batch(name):
    """Eager (first `end` slots) and whole-cache (mask, the CUDA graph's form) steps give forward's logits,
    with and without fused weights, and write the same cache."""
    model = make_model(name)
    width, steps, max_len = 7, 5, 16
    ids, mask = padded(PROMPTS, width)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    fused, _ = DecodeWeights(model, fuse=True).get()
    if name != "deepseek_v3":
        assert all("qkv" in f and "gate_up" in f for f in fused)
    caches = [model.new_cache(3, max_len) for _ in range(4)]
    for c in caches:
        model(ids, attention_mask=mask, positions=positions, cache=c)
    full_mask = torch.cat([mask, torch.ones(3, max_len - width, dtype=torch.long)], dim=1)
    tok = torch.tensor([3, 4, 5])
    pos = positions[:, -1] + 1
    for _ in range(steps):
        length = caches[0].length
        ref = model(
            tok[:, None], attention_mask=full_mask[:, : length + 1], positions=pos[:, None], cache=caches[0]
        )
        index = torch.tensor([length])
        end = length + 1
        eager = model.decode_step(tok, pos, index, full_mask[:, :end] != 0, caches[1].layers, end)
        eager_fused = model.decode_step(
            tok, pos, index, full_mask[:, :end] != 0, caches[2].layers, end, fused
        )
        whole = (torch.arange(max_len)[None] <= index) & (full_mask != 0)
        static = model.decode_step(tok, pos, index, whole, caches[3].layers, None, fused)
        for c in caches[1:]:
            c.length += 1
        for out in (eager, eager_fused, static):
            torch.testing.assert_close(out, ref[:, -1], rtol=1e-5, atol=1e-5)
        tok, pos = ref[:, -1].argmax(-1), pos + 1
    for c in caches[1:]:
        for slot, ref_slot in zip(c.layers, caches[0].layers):
            for key in slot:
                torch.testing.assert_close(slot[key], ref_slot[key], rtol=1e-5, atol=1e-6)


def reference_greedy(model, prompts, new):
    """Greedy continuation by full forwards without a cache (one prompt at a time)."""
    outs = []
    for p in prompts:
        seq = list(p)
        for _ in range(new):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        outs.append(seq[len(p) :])
    return outs


@pytest.mark.parametrize("name", ["qwen2", "deepseek_v3"])
def test_engine_greedy_equals_full_forward_and_the_old_path(name):
    model = make_model(name)
    params = SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True)
    fast = Engine(model, compile="off", fuse_weights=True)
    assert fast.decoder is not None
    old = Engine(model, compile="off")
    old.decoder = None  # the model's forward, as before the decode step existed
    got = [c.token_ids for c in fast.generate(PROMPTS, params)]
    assert got == [c.token_ids for c in old.generate(PROMPTS, params)]
    assert got == reference_greedy(model, PROMPTS, 10)


def test_sampled_logprobs_equal_the_old_path():
    model = make_model("qwen3")
    params = SamplingParams(n=2, temperature=0.8, top_k=20, max_new_tokens=8, seed=3, ignore_eos=True)
    fast, old = Engine(model, compile="off"), Engine(model)
    old.decoder = None
    a, b = fast.generate(PROMPTS, params), old.generate(PROMPTS, params)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    for x, y in zip(a, b):
        assert x.logprobs == pytest.approx(y.logprobs, abs=1e-5)


def test_fused_weights_follow_an_in_place_update():
    """A GRPO-style in-place update (optimizer step) is picked up at the next call; no change, no rebuild."""
    model = make_model("llama")
    engine = Engine(model, compile="off", fuse_weights=True)
    params = SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    engine.generate(PROMPTS, params)
    engine.generate(PROMPTS, params)
    assert engine.decoder.weights.builds == 1
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    got = [c.token_ids for c in engine.generate(PROMPTS, params)]
    assert engine.decoder.weights.builds == 2
    assert got == reference_greedy(model, PROMPTS, 6)


class WrappedLinear(nn.Linear):
    """A stand-in for a LoRA wrapper: a Linear subclass whose output differs from its weight's."""

    def forward(self, x):
        return super().forward(x) + 0.5 * x[..., : self.out_features].flip(-1)


def test_wrapped_projection_is_not_fused():
    model = make_model("llama")
    attn = model.model.layers[0].self_attn
    wrapped = WrappedLinear(attn.q_proj.in_features, attn.q_proj.out_features, bias=False)
    with torch.no_grad():
        wrapped.weight.copy_(attn.q_proj.weight)
    attn.q_proj = wrapped
    fused, _ = DecodeWeights(model, fuse=True).get()
    assert "qkv" not in fused[0] and "gate_up" in fused[0] and "qkv" in fused[1]
    params = SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    got = [c.token_ids for c in Engine(model, compile="off", fuse_weights=True).generate(PROMPTS, params)]
    assert got == reference_greedy(model, PROMPTS, 6)


@torch.no_grad()
def test_bf16_head_copy_is_close():
    model = make_model("qwen2")
    step = DecodeStep(model, compile="off", head_dtype="bf16")
    step.begin()
    assert step.weights.get()[1].dtype == torch.bfloat16
    ids, mask = padded(PROMPTS, 7)
    cache_a, cache_b = model.new_cache(3, 10), model.new_cache(3, 10)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    for c in (cache_a, cache_b):
        model(ids, attention_mask=mask, positions=positions, cache=c)
    attn = torch.cat([mask, torch.ones(3, 3, dtype=torch.long)], dim=1)
    tok, pos = torch.tensor([1, 2, 3]), positions[:, -1] + 1
    ref = model(tok[:, None], attention_mask=attn[:, :8], positions=pos[:, None], cache=cache_a)[:, -1]
    got = step(tok, pos, attn, cache_b)
    assert got.dtype == ref.dtype and cache_b.length == 8
    torch.testing.assert_close(got, ref, rtol=0, atol=0.05)


def test_fusion_is_off_by_default_on_cpu():
    step = Engine(make_model("llama"), compile="off").decoder
    step.begin()
    assert step.weights.get()[0] == [] and not step.weights.fuse


def test_compile_choice_is_checked(monkeypatch):
    model = make_model("llama")
    with pytest.raises(UserError, match="R1KIT_ENGINE_COMPILE must be one of auto, on, off"):
        monkeypatch.setenv("R1KIT_ENGINE_COMPILE", "yes")
        Engine(model)
    monkeypatch.setenv("R1KIT_ENGINE_COMPILE", "off")
    assert Engine(model).decoder.compile == "off"
    with pytest.raises(UserError, match=r"Engine\(compile=...\)"):
        Engine(model, compile="fast")
    with pytest.raises(ValueError, match="head_dtype"):
        Engine(model, head_dtype="fp8")


def test_auto_compiles_only_after_enough_work():
    model = make_model("llama")
    step = Engine(model, compile="auto").decoder
    assert not step.use_compiled()
    step.eager_row_steps = step.compile_after
    assert step.use_compiled()
    moe = Engine(make_model("deepseek_v3"), compile="auto").decoder
    moe.eager_row_steps = moe.compile_after
    assert not moe.use_compiled()  # MoE dispatch is data-dependent: stays eager


# one compile of a 2-layer, width-32 model: 7-8 s on 2 Zen 5 cores (2026-12-08). In CI because the graph
# count is what a recompile bug changes (one did: greedy after sampled recompiled, 5-25 s on a real model)
def test_compiled_step_gives_the_eager_tokens_in_one_graph():
    """`torch.compile` of the step: identical greedy and sampled tokens, one graph across calls of different
    batch sizes and lengths (dynamic shapes) and across sampled and greedy calls, no recompiles."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = make_model("qwen2")
    eager = Engine(model, compile="off")
    compiled = Engine(model, compile="on", fuse_weights=True)
    # sampled first (the compile sees the sampler's tokens, views of the inverse CDF's output), then greedy
    # (argmax's tokens are not views), 3 rows, then 4 rows (a prompt sampled twice) with a longer prompt:
    # other batch size and cache length
    sampled = SamplingParams(temperature=1.0, max_new_tokens=6, ignore_eos=True, seed=1)
    want = [c.token_ids for c in eager.generate(PROMPTS, sampled)]
    assert [c.token_ids for c in compiled.generate(PROMPTS, sampled)] == want
    for prompts, n in ((PROMPTS, 1), (PROMPTS[:1] + [[1, 2, 3, 4, 5, 6, 7, 8, 9]], 2)):
        p = [SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True, n=n)] * len(prompts)
        want = [c.token_ids for c in eager.generate(prompts, p)]
        assert [c.token_ids for c in compiled.generate(prompts, p)] == want
    assert compiled.decoder.compiled_calls == 3 * 5
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["recompiles"]


@pytest.mark.parametrize("name", ["llama", "deepseek_v3"])
def test_engine_decodes_under_bf16_autocast(name):
    # GRPO and on-policy distillation sample under the training autocast: the fp32 cache takes bf16 keys
    model = make_model(name)
    engine = Engine(model)
    params = SamplingParams(temperature=0.0, max_new_tokens=6, ignore_eos=True)
    plain = engine.generate(PROMPTS, params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = engine.generate(PROMPTS, params)
    assert [len(c.token_ids) for c in mixed] == [6, 6, 6]
    # bf16 matmuls change the logits a little; the first greedy token of most rows survives
    assert sum(a.token_ids[0] == b.token_ids[0] for a, b in zip(plain, mixed)) >= 2


# eager on three families, compiled on one (compiling costs seconds)
@pytest.mark.parametrize(
    ("name", "compile"), [("llama", "off"), ("qwen3", "off"), ("deepseek_v3", "off"), ("llama", "on")]
)
def test_bf16_model_on_cpu_decodes_over_an_fp32_cache_with_the_forwards_logprobs(name, compile):
    """A bf16 model with grouped-query attention decodes over an fp32 cache on a CPU (MLA keeps its own
    dtype); the sampled tokens' log-probs equal a bf16 full forward's over prompt + completion."""
    from r1kit.engine.batch import DecodeBatch

    model = make_model(name).to(torch.bfloat16)
    engine = Engine(model, compile=compile)
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3, ignore_eos=True)
    batch = DecodeBatch(engine, PROMPTS, params)
    batch.prefill()
    want = torch.bfloat16 if name == "deepseek_v3" else torch.float32
    assert {t.dtype for slot in batch.cache.layers for t in slot.values()} == {want}
    for prompt, out in zip(PROMPTS, engine.generate(PROMPTS, params)):
        ids = torch.tensor([prompt + out.token_ids])
        with torch.no_grad():
            logp = model(ids).float().log_softmax(-1)[0, len(prompt) - 1 : -1]
        full = logp.gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
        # bf16 matmuls on both sides, attention in fp32 (engine) or bf16 (forward): ~0.01 apart (a wrong context: ~1)
        assert torch.allclose(torch.tensor(out.logprobs), full, atol=0.03), (out.logprobs, full.tolist())
