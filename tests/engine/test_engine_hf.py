"""The engine against transformers and against a full forward pass, on tiny random models."""

from __future__ import annotations

import pytest
import torch

from r1kit.engine import Engine, SamplingParams
from r1kit.model import ModelConfig, Transformer
from r1kit.sampling import filter_logits

transformers = pytest.importorskip("transformers")

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]

HF_CONFIGS = {
    "qwen2": (
        "Qwen2Config",
        dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64),
    ),
    "deepseek_v3": (
        "DeepseekV3Config",
        dict(
            num_attention_heads=4,
            num_key_value_heads=4,
            q_lora_rank=24,
            kv_lora_rank=16,
            qk_nope_head_dim=8,
            qk_rope_head_dim=8,
            v_head_dim=8,
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            intermediate_size=64,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            num_mtp_layers=0,
        ),
    ),
}


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def pair(request, tmp_path_factory):
    """(transformers model, the same weights loaded as an r1kit Transformer)."""
    cls_name, kwargs = HF_CONFIGS[request.param]
    config = getattr(transformers, cls_name)(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        max_position_embeddings=128,
        initializer_range=0.1,
        **kwargs,
    )
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, Transformer.from_pretrained(path).eval()


def _left_pad(prompts):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def test_greedy_matches_transformers_generate(pair):
    hf, ours = pair
    ids, mask = _left_pad(PROMPTS)
    with torch.no_grad():
        ref = hf.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16, pad_token_id=0
        )
    outs = Engine(ours).generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=16))
    assert [o.token_ids for o in outs] == ref[:, ids.shape[1] :].tolist()
    assert all(o.finish_reason == "length" and o.mask == [1] * 16 for o in outs)
    assert [o.num_prompt_tokens for o in outs] == [len(p) for p in PROMPTS]


def _reference_logprobs(model, prompt, completion, temperature, top_k, top_p):
    """Log-probs of `completion` from one forward over prompt + completion, with the same transform."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids)[0, len(prompt) - 1 : -1].float()
    target = torch.tensor(completion)
    if temperature == 0:
        return logits.log_softmax(-1).gather(-1, target[:, None]).squeeze(-1)
    n = logits.shape[0]
    sorted_logits, sorted_index = filter_logits(
        logits / temperature, torch.full((n,), top_k), torch.full((n,), float(top_p))
    )
    logp = torch.full_like(logits, float("-inf")).scatter(-1, sorted_index, sorted_logits.log_softmax(-1))
    return logp.gather(-1, target[:, None]).squeeze(-1)


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 20, 1.0), (1.3, 0, 0.8), (0.9, 10, 0.9)]
)
def test_logprobs_match_full_forward(pair, temperature, top_k, top_p):
    _, ours = pair
    params = SamplingParams(n=2, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=12, seed=3)
    outs = Engine(ours).generate(PROMPTS, params)
    assert len(outs) == 6 and [o.prompt_index for o in outs] == [0, 0, 1, 1, 2, 2]
    for o in outs:
        ref = _reference_logprobs(ours, PROMPTS[o.prompt_index], o.token_ids, temperature, top_k, top_p)
        assert torch.isfinite(ref).all()  # every sampled token survives the reference filter
        assert torch.allclose(torch.tensor(o.logprobs), ref, atol=1e-4)


def _mtp_model():
    cfg = ModelConfig.preset(
        "tiny-v3",
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        initializer_range=0.1,
    )
    assert cfg.num_mtp_layers == 1
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def test_speculative_greedy_equals_plain_greedy():
    model = _mtp_model()
    engine = Engine(model)
    plain = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0, max_new_tokens=20))
    spec = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0, max_new_tokens=20, speculative=True))
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    for a, b in zip(spec, plain):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
    assert engine.last_stats["drafts"] > 0


def test_speculative_accepts_and_rejects_like_plain_greedy():
    """An oracle MTP head (right except at every third position) exercises acceptance, holes and truncation."""
    model = _mtp_model()
    engine = Engine(model, compact_fraction=2.0)  # keep rows in place so the oracle knows each row
    plain = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=24))
    futures = [p + o.token_ids for p, o in zip(PROMPTS, plain)]
    real_mtp = model.mtp_logits

    def oracle(hidden, next_ids, positions=None, attention_mask=None, cache=None):
        logits = real_mtp(hidden, next_ids, positions, attention_mask, cache)
        out = torch.zeros_like(logits)
        for b in range(logits.shape[0]):
            for t in range(logits.shape[1]):
                p = int(positions[b, t]) + 2  # the MTP slot at position i predicts token i+2
                right = futures[b][p] if p < len(futures[b]) else 0
                out[b, t, right if p % 3 else (right + 1) % 64] = 1.0
        return out

    model.mtp_logits = oracle
    spec = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=24, speculative=True))
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    stats = engine.last_stats
    assert 0.4 < stats["acceptance_rate"] < 0.9
    assert stats["steps"] < 24


def test_speculative_sampling_is_reproducible_and_scored():
    model = _mtp_model()
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=10, seed=5, speculative=True)
    a = Engine(model).generate(PROMPTS, params)
    b = Engine(model).generate(PROMPTS, params)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    for o in a:
        ref = _reference_logprobs(model, PROMPTS[o.prompt_index], o.token_ids, 1.0, 0, 1.0)
        assert torch.allclose(torch.tensor(o.logprobs), ref, atol=1e-4)
