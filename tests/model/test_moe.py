"""DeepSeekMoE: routing rules, dispatch kernels, load counting and the aux-loss-free bias update."""

import torch
from hf_factory import small_config, small_model

from r1kit.model.moe import MoE, grouped_linear


def _moe(**overrides):
    torch.manual_seed(0)
    moe = MoE(small_config("deepseek_v3", **overrides))
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.2)
    return moe


def test_bias_selects_but_never_weights():
    moe = _moe(n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0)
    x = torch.randn(64, 32)
    with torch.no_grad():
        weights, idx = moe.gate(x)
        scores = torch.sigmoid(x @ moe.gate.weight.T)
        assert torch.allclose(weights, scores.gather(1, idx))
        moe.gate.e_score_correction_bias[3] = 10.0  # expert 3 now always chosen ...
        weights2, idx2 = moe.gate(x)
    assert (idx2 == 3).any(dim=1).all()
    assert torch.allclose(weights2, scores.gather(1, idx2))  # ... with its raw score as weight


def test_group_limited_routing_keeps_top_groups():
    moe = _moe(n_group=4, topk_group=2, num_experts_per_tok=3)
    x = torch.randn(128, 32)
    with torch.no_grad():
        _, idx = moe.gate(x)
        scores = torch.sigmoid(x @ moe.gate.weight.T)
    group_score = scores.view(128, 4, 2).topk(2, dim=-1).values.sum(-1)
    kept = group_score.topk(2, dim=-1).indices
    assert ((idx // 2)[..., None] == kept[:, None, :]).any(-1).all()  # every chosen expert is in a kept group


def test_grouped_mm_dispatch_matches_expert_loop_with_grads():
    x = torch.randn(20, 32, requires_grad=True)
    w = torch.randn(4, 16, 32, requires_grad=True)
    counts = torch.tensor([5, 0, 9, 6])
    outs, grads = [], []
    for dispatch in ("loop", "grouped_mm"):
        y = grouped_linear(x, w, counts, dispatch)
        grads.append(torch.autograd.grad(y.sum(), (x, w)))  # sum(): an expanded, stride-0 gradient
        outs.append(y)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))


def test_moe_forward_equals_dense_reference():
    """Sorted grouped dispatch == a per-token loop over the chosen experts (the definition)."""
    moe = _moe()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out = moe(x)
        weights, idx = moe.gate(x.view(-1, 32))
        ref = moe.shared_experts(x).view(-1, 32).clone()
        f = moe.experts.down_proj.shape[-1]
        for n, token in enumerate(x.view(-1, 32)):
            for w, e in zip(weights[n], idx[n]):
                gate, up = (moe.experts.gate_up_proj[e] @ token).split(f)
                ref[n] += w * (moe.experts.down_proj[e] @ (torch.nn.functional.silu(gate) * up))
    assert torch.allclose(out.view(-1, 32), ref, atol=1e-5)


def test_bias_update_moves_load_toward_balance():
    moe = _moe(n_group=1, topk_group=1).train()
    direction = moe.gate.weight[:2].sum(0).detach()
    x = 0.3 * torch.randn(256, 32) + 2.0 * direction / direction.norm()  # skewed toward experts 0 and 1

    def imbalance():
        load = moe.tokens_per_expert.float()
        return (load.max() / load.mean()).item()

    with torch.no_grad():
        moe(x[None])
    first = imbalance()
    moe.update_bias(gamma=0.02)
    for _ in range(40):
        with torch.no_grad():
            moe(x[None])
        last = imbalance()
        moe.update_bias(gamma=0.02)
    assert first > 2.5 and last < 0.6 * first
    assert moe.tokens_per_expert.sum() == 0  # counters reset by the update
    assert not moe.gate.e_score_correction_bias.requires_grad


def test_model_level_load_api_and_fp32_bias():
    model = small_model("deepseek_v3").train()
    n_moe = len(model.moe_layers())
    assert n_moe == 3  # layers 1, 2 and the MTP block
    ids = torch.randint(0, 96, (2, 6))
    model(ids, return_mtp=True)
    load = model.expert_load()
    assert load.shape == (n_moe, 8)
    assert load[0].sum() == 2 * 6 * 2 and load[2].sum() == 2 * 5 * 2  # tokens x top-k (MTP sees T-1)
    model.eval()
    model(ids)
    assert torch.equal(model.expert_load(), load)  # eval forwards are not counted
    model.update_moe_bias(1e-3)
    assert model.expert_load().sum() == 0
    model.to(torch.bfloat16)
    assert all(m.gate.e_score_correction_bias.dtype == torch.float32 for m in model.moe_layers())
    assert model.model.layers[1].mlp.gate.weight.dtype == torch.bfloat16
