"""Policy-gradient losses (DeepSeekMath, arXiv 2402.03300): hand-computed values, gradients, masking and
clipping."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r1kit.rl.losses import (
    LOSS_TYPES,
    entropy_from_logits,
    group_advantages,
    k3_kl,
    policy_loss,
    token_logprobs,
)

LN = math.log


def _loss(logp, old, adv, mask, loss_type, **kw):
    kw.setdefault("max_completion_length", 5)
    return policy_loss(logp, old, kw.pop("ref", None), adv, mask, loss_type=loss_type, **kw)


# ---------------------------------------------------------------- group_advantages


def test_group_advantages_group_scale_by_hand():
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    # group 1: mean 0.25, Bessel var (0.75^2 + 3 * 0.25^2) / 3 = 0.25, std 0.5
    # group 2: mean 0.5, Bessel var 4 * 0.25 / 3 = 1/3
    s2 = math.sqrt(1 / 3) + 1e-4
    want = [
        0.75 / 0.5001,
        -0.25 / 0.5001,
        -0.25 / 0.5001,
        -0.25 / 0.5001,
        0.5 / s2,
        0.5 / s2,
        -0.5 / s2,
        -0.5 / s2,
    ]
    torch.testing.assert_close(group_advantages(r, 4), torch.tensor(want))


def test_group_advantages_none_and_batch_by_hand():
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    centred = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5])
    torch.testing.assert_close(group_advantages(r, 4, scale="none"), centred)
    # batch: mean 3/8, sum of squares 3 * 0.625^2 + 5 * 0.375^2 = 1.875, Bessel over 8 -> / 7
    batch_std = math.sqrt(1.875 / 7) + 1e-4
    torch.testing.assert_close(group_advantages(r, 4, scale="batch"), centred / batch_std)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_constant_group_is_exactly_zero(scale):
    r = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.2, 0.9])
    adv = group_advantages(r, 3, scale=scale)
    assert torch.equal(adv[:3], torch.zeros(3))
    assert (adv[3:] != 0).all()
    assert torch.equal(group_advantages(torch.tensor([0.3, 2.0]), 1, scale=scale), torch.zeros(2))


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="valid: group, batch, none"):
        group_advantages(torch.zeros(4), 2, scale="std")


# ---------------------------------------------------------------- normalisers on a 2 x 3 case


def _two_by_three():
    """Row 0: 3 tokens, log-ratios ln 1.1, ln 0.9, 0, A = 1. Row 1: 1 token, ratio 1.1, A = -2.

    Padded positions of row 1 hold garbage. All ratios lie inside [0.8, 1.2]: nothing is clipped.
    """
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, 7.0, float("nan")]])
    logp = old + torch.tensor([[LN(1.1), LN(0.9), 0.0], [LN(1.1), 123.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    return logp, old, torch.tensor([1.0, -2.0]), mask


# token losses: row 0: -1.1, -0.9, -1.0 (sum -3.0, mean -1.0); row 1: -(1.1 * -2) = 2.2
@pytest.mark.parametrize(
    "loss_type, want",
    [
        ("grpo", (-1.0 + 2.2) / 2),  # mean per sequence, then over B = 2
        ("dr_grpo", (-3.0 + 2.2) / (2 * 5)),  # sum / (B * max_completion_length = 5)
        ("dapo", (-3.0 + 2.2) / 4),  # sum / 4 counted tokens
        ("gspo", (-(0.99 ** (1 / 3)) + 2.2) / 2),  # s_0 = (1.1 * 0.9 * 1)^(1/3), s_1 = 1.1
    ],
)
def test_normaliser_by_hand(loss_type, want):
    logp, old, adv, mask = _two_by_three()
    loss, metrics = _loss(logp, old, adv, mask, loss_type)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert metrics["loss"] == pytest.approx(want, rel=1e-5)
    assert metrics["clip_frac"] == 0.0


def test_ratio_mean_metric_by_hand():
    logp, old, adv, mask = _two_by_three()
    assert _loss(logp, old, adv, mask, "dapo")[1]["ratio_mean"] == pytest.approx((1.1 + 0.9 + 1 + 1.1) / 4)
    gspo = _loss(logp, old, adv, mask, "gspo")[1]["ratio_mean"]
    assert gspo == pytest.approx((0.99 ** (1 / 3) + 1.1) / 2, rel=1e-5)


def test_dr_grpo_needs_max_completion_length():
    logp, old, adv, mask = _two_by_three()
    with pytest.raises(ValueError, match="max_completion_length"):
        policy_loss(logp, old, None, adv, mask, loss_type="dr_grpo")


def test_unknown_loss_type_and_missing_ref():
    logp, old, adv, mask = _two_by_three()
    with pytest.raises(ValueError, match="valid: grpo, dr_grpo, dapo, gspo"):
        policy_loss(logp, old, None, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, old, None, adv, mask, beta=0.1)


# ---------------------------------------------------------------- gradients


def _linear_policy_batch(B=8, T=5, D=6, V=7):
    W = torch.randn(D, V, requires_grad=True)
    x = torch.randn(B, T, D)
    targets = torch.randint(0, V, (B, T))
    lengths = torch.tensor([5, 3, 1, 4, 2, 5, 0, 3])[:B]
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.2])[:B]
    return W, x, targets, mask, rewards


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_ratio_one_gradient_equals_reinforce(loss_type):
    W, x, targets, mask, rewards = _linear_policy_batch()
    adv = group_advantages(rewards, 4)
    logp = token_logprobs(x @ W, targets)
    loss, _ = policy_loss(logp, logp.detach(), None, adv, mask, loss_type=loss_type, max_completion_length=5)
    (grad,) = torch.autograd.grad(loss, W)

    # Hand-written REINFORCE with the same normaliser: -sum_i A_i * sum_t m_it log pi(o_it) / norm_i.
    logp_ref = torch.log_softmax(x @ W, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    m = mask.float()
    if loss_type == "grpo":
        per_seq = (logp_ref * m).sum(1) / m.sum(1).clamp(min=1)
        objective = (adv * per_seq).sum() / len(adv)
    elif loss_type == "dapo":
        objective = (adv[:, None] * logp_ref * m).sum() / m.sum()
    else:
        objective = (adv[:, None] * logp_ref * m).sum() / (len(adv) * 5)
    (want,) = torch.autograd.grad(-objective, W)
    torch.testing.assert_close(grad, want)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_identical_rewards_give_zero_policy_gradient(loss_type):
    logp = torch.randn(6, 4, requires_grad=True)
    old = logp.detach() + 0.05 * torch.randn(6, 4)
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0]), 3)
    loss, _ = policy_loss(
        logp, old, None, adv, torch.ones(6, 4), loss_type=loss_type, max_completion_length=4
    )
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.equal(grad[:3], torch.zeros(3, 4))
    assert grad[3:].abs().sum() > 0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_padding_side_and_garbage_never_matter(loss_type, beta):
    lengths = [3, 1, 0, 4]
    B, T = len(lengths), 5
    real = [torch.randn(3, n) for n in lengths]  # (logp, old, ref) values of the real tokens
    adv = torch.tensor([0.5, -1.0, 2.0, -0.3])

    def build(left):
        tensors = torch.randn(3, B, T) * 50
        tensors[:, 0, -1] = float("nan")
        tensors[:, 3, 0] = float("inf")
        mask = torch.zeros(B, T, dtype=torch.long)
        for i, n in enumerate(lengths):
            sl = slice(T - n, T) if left else slice(0, n)
            tensors[:, i, sl] = real[i]
            mask[i, sl] = 1
        logp = tensors[0].clone().requires_grad_(True)
        kw = dict(loss_type=loss_type, beta=beta, max_completion_length=T)
        loss, metrics = policy_loss(logp, tensors[1], tensors[2], adv, mask, **kw)
        (grad,) = torch.autograd.grad(loss, logp)
        return loss, metrics, grad, mask.bool()

    loss_r, met_r, grad_r, mask_r = build(left=False)
    loss_l, met_l, grad_l, mask_l = build(left=True)
    assert torch.isfinite(loss_r) and torch.isfinite(grad_r).all() and torch.isfinite(grad_l).all()
    torch.testing.assert_close(loss_l, loss_r)
    assert met_l == pytest.approx(met_r)
    torch.testing.assert_close(grad_l[mask_l], grad_r[mask_r])
    assert torch.equal(grad_r[~mask_r], torch.zeros_like(grad_r[~mask_r]))
    assert torch.equal(grad_l[~mask_l], torch.zeros_like(grad_l[~mask_l]))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_all_empty_batch_is_finite_zero(loss_type):
    logp = torch.randn(2, 3, requires_grad=True)
    kw = dict(loss_type=loss_type, beta=0.1, max_completion_length=3)
    loss, metrics = policy_loss(logp, logp.detach(), logp.detach(), torch.ones(2), torch.zeros(2, 3), **kw)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(2, 3))
    assert all(math.isfinite(v) for v in metrics.values())


# ---------------------------------------------------------------- clipping


def _one_token(ratio, adv, **kw):
    old = torch.tensor([[-1.0]])
    logp = (old + LN(ratio)).requires_grad_(True)
    loss, metrics = policy_loss(logp, old, None, torch.tensor([adv]), torch.ones(1, 1), **kw)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.item(), grad.item(), metrics


def test_clip_higher_is_asymmetric():
    # ratio 1.25, A = +1: inside [0.8, 1.28] with eps_high 0.28, so the loss is -1.25 and it has gradient
    loss, grad, m = _one_token(1.25, 1.0, eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx(-1.25) and grad == pytest.approx(-1.25) and m["clip_frac_high"] == 0.0
    # ... but clipped at eps_high 0.2: loss -1.2, zero gradient
    loss, grad, m = _one_token(1.25, 1.0, eps_low=0.2, eps_high=0.2)
    assert loss == pytest.approx(-1.2) and grad == 0.0
    assert m["clip_frac_high"] == 1.0 and m["clip_frac_low"] == 0.0 and m["clip_frac"] == 1.0
    # ratio 0.75, A = -1: clipped at eps_low 0.2 (min(-0.75, -0.8) = -0.8), whatever eps_high
    loss, grad, m = _one_token(0.75, -1.0, eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx(0.8) and grad == 0.0
    assert m["clip_frac_low"] == 1.0 and m["clip_frac_high"] == 0.0
    # ratio 0.75, A = +1: the unclipped branch is the smaller one, so it is not clipped
    loss, grad, m = _one_token(0.75, 1.0, eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx(-0.75) and grad == pytest.approx(-0.75) and m["clip_frac"] == 0.0


def test_gspo_sequence_ratio_and_clip_by_hand():
    old = torch.zeros(3, 2)
    # row 0: mean log-ratio 0.2, s = e^0.2 > 1.0004, A > 0 -> clipped: loss term -1.0004, no gradient
    # row 1: mean log-ratio 1e-4, s = e^1e-4 inside [0.9997, 1.0004] -> term -2 s, gradient -2 s / 2 per token
    # row 2: one counted token, log-ratio -0.01, s = e^-0.01 < 0.9997, A < 0 -> clipped: term +0.9997
    delta = torch.tensor([[0.1, 0.3], [2e-4, 0.0], [-0.01, 55.0]])
    logp = (old + delta).requires_grad_(True)
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    adv = torch.tensor([1.0, 2.0, -1.0])
    loss, m = policy_loss(logp, old, None, adv, mask, loss_type="gspo", eps_low=3e-4, eps_high=4e-4)
    s1 = math.exp(1e-4)
    assert loss.item() == pytest.approx((-1.0004 - 2 * s1 + 0.9997) / 3, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, logp)
    want = torch.tensor([[0.0, 0.0], [-2 * s1 / 2 / 3, -2 * s1 / 2 / 3], [0.0, 0.0]])
    torch.testing.assert_close(grad, want)
    assert m["clip_frac_high"] == pytest.approx(1 / 3) and m["clip_frac_low"] == pytest.approx(1 / 3)
    assert m["ratio_mean"] == pytest.approx((math.exp(0.2) + s1 + math.exp(-0.01)) / 3, rel=1e-6)


def test_gspo_gradient_matches_paper():
    # GSPO eq. (10): grad = -(1/B) sum_i s_i A_i (1/|y_i|) sum_t grad log pi(y_it), when unclipped.
    logp = torch.randn(4, 6, requires_grad=True)
    old = logp.detach() + 0.01 * torch.randn(4, 6)
    mask = (torch.arange(6)[None, :] < torch.tensor([6, 2, 4, 1])[:, None]).float()
    adv = torch.tensor([1.0, -0.5, 0.3, -2.0])
    loss, _ = policy_loss(logp, old, None, adv, mask, loss_type="gspo", eps_low=10.0, eps_high=10.0)
    (grad,) = torch.autograd.grad(loss, logp)
    n = mask.sum(1)
    s = torch.exp(((logp.detach() - old) * mask).sum(1) / n)
    torch.testing.assert_close(grad, -(s * adv / n)[:, None] * mask / 4)


# ---------------------------------------------------------------- KL


logprob = st.floats(-30.0, 0.0, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(logprob, logprob), min_size=1, max_size=20))
def test_k3_is_nonnegative_and_zero_on_equal(pairs):
    logp = torch.tensor([p for p, _ in pairs])
    ref = torch.tensor([r for _, r in pairs])
    assert (k3_kl(logp, ref) >= 0).all()
    assert torch.equal(k3_kl(logp, logp.clone()), torch.zeros_like(logp))


def test_kl_term_by_hand():
    # one token, ratio 1, A = 0: the loss is beta * k3 with d = ref - logp = ln 2: 2 - ln 2 - 1
    logp = torch.tensor([[-1.0, 5.0]], requires_grad=True)
    ref = torch.tensor([[-1.0 + LN(2.0), float("nan")]])
    loss, m = policy_loss(
        logp, logp.detach(), ref, torch.zeros(1), torch.tensor([[1, 0]]), beta=0.04, loss_type="grpo"
    )
    assert loss.item() == pytest.approx(0.04 * (1 - LN(2.0)), rel=1e-5)
    assert m["kl"] == pytest.approx(1 - LN(2.0), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, logp)
    # d/dlogp [e^(ref - logp) - (ref - logp) - 1] = 1 - e^(ref - logp) = 1 - 2
    torch.testing.assert_close(grad, torch.tensor([[-0.04, 0.0]]))
    assert "kl" not in policy_loss(logp, logp.detach(), None, torch.zeros(1), torch.ones(1, 2))[1]


# ---------------------------------------------------------------- log-probs and entropy


def test_token_logprobs_matches_log_softmax_across_chunks():
    logits = torch.randn(3, 700, 5, dtype=torch.float64, requires_grad=True)  # 2100 rows: three chunks
    targets = torch.randint(0, 5, (3, 700))
    got = token_logprobs(logits, targets)
    want = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert got.shape == (3, 700) and got.dtype == torch.float64
    torch.testing.assert_close(got, want)
    (g1,) = torch.autograd.grad(got.sum(), logits)
    (g2,) = torch.autograd.grad(want.sum(), logits)
    torch.testing.assert_close(g1, g2)


def test_token_logprobs_upcasts_bf16():
    logits = torch.randn(2, 3, 11).bfloat16()
    targets = torch.randint(0, 11, (2, 3))
    got = token_logprobs(logits, targets)
    assert got.dtype == torch.float32
    want = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(got, want)


def test_entropy_from_logits():
    logits = torch.randn(2, 600, 9)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1))
    assert entropy_from_logits(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([[[0.0, -1e4]]])).item() == pytest.approx(0.0, abs=1e-6)
