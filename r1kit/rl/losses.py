"""Policy-gradient losses for RL with verifiable rewards (DeepSeekMath, arXiv 2402.03300), as pure tensor
functions.

Everything here maps tensors to tensors: no model, no optimiser, no state. The GRPO stage
(`r1kit/rl/grpo.py`) computes per-token log-probs with `token_logprobs`, advantages with
`group_advantages`, and hands both to `policy_loss`.

Shapes: B sequences (B = n_groups x group_size, consecutive rows form one group), T completion
positions, V vocabulary. Suffixes name them (`logp_BT`, `adv_B`).

| loss_type | ratio        | sum of masked token losses divided by            | source                  |
|-----------|--------------|--------------------------------------------------|-------------------------|
| grpo      | per token    | each sequence's token count, then B (seq-mean)   | DeepSeekMath 2402.03300 |
| dr_grpo   | per token    | B x max_completion_length (a constant)           | Dr. GRPO 2503.20783     |
| dapo      | per token    | the batch's total masked token count             | DAPO 2503.14476         |
| gspo      | per sequence | B (one term per sequence, ratio = token mean)    | GSPO 2507.18071         |

Published clip ranges: GRPO 0.2 / 0.2, DAPO clip-higher 0.2 / 0.28, GSPO 3e-4 / 4e-4.
The KL term is the "k3" estimator exp(ref - logp) - (ref - logp) - 1, added to the loss with
weight beta (DeepSeekMath beta 0.04, R1-Zero 0.001, Dr. GRPO / DAPO / GSPO 0).
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "gspo")
ADVANTAGE_SCALES = ("group", "batch", "none")

# Rows of (B*T, V) logits processed at once by token_logprobs / entropy_from_logits: bounds the
# float32 temporaries to ~chunk x V instead of B x T x V.
_LOGIT_ROWS_PER_CHUNK = 1024


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Outcome-supervision advantages, one per completion (GRPO, arXiv 2402.03300;
    Dr. GRPO, arXiv 2503.20783).

    Args:
        rewards: (B,) float, B = n_groups * group_size; rows [g*G, (g+1)*G) are group g.
        group_size: G, completions sampled per prompt.
        scale: how the centred reward r_i - mean(group) is scaled:
            "group": divided by (std of its group + eps)   (GRPO, DeepSeekMath);
            "batch": divided by (std of all B rewards + eps) (REINFORCE++-style batch scaling);
            "none":  not divided at all                     (Dr. GRPO).
        eps: added to the std, not inside a square root.

    Returns:
        adv_B: (B,) float32 advantages, detached from `rewards`.

    Numerical conventions follow TRL's GRPOTrainer: the std is Bessel-corrected (torch.std's
    default, divides by G - 1) and eps = 1e-4 is added to it. A group whose rewards are all equal
    (including G == 1) gets A = 0 exactly, whatever the scale, so it gives no policy gradient.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: {', '.join(ADVANTAGE_SCALES)}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"batch of {rewards.numel()} rewards is not a whole number of groups of {group_size}"
        )
    r_NG = rewards.detach().float().reshape(-1, group_size)
    adv_NG = r_NG - r_NG.mean(dim=1, keepdim=True)
    if scale == "group" and group_size > 1:
        adv_NG = adv_NG / (r_NG.std(dim=1, keepdim=True) + eps)
    elif scale == "batch" and r_NG.numel() > 1:
        adv_NG = adv_NG / (r_NG.std() + eps)
    # The mean of equal floats need not round back to them exactly; force the documented zero.
    constant_N1 = (r_NG.amax(dim=1, keepdim=True) == r_NG.amin(dim=1, keepdim=True)).expand_as(adv_NG)
    adv_NG = torch.where(constant_N1, torch.zeros_like(adv_NG), adv_NG)
    return adv_NG.reshape(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token "k3" KL estimate of KL(policy || reference) (Schulman; DeepSeekMath eq. 4).

    Args:
        logp, ref_logp: same shape, log-probs of the sampled tokens under policy and reference.

    Returns:
        Same shape: exp(ref - logp) - (ref - logp) - 1, which is >= 0 and exactly 0 where equal.
    """
    d = ref_logp - logp
    # expm1(d) - d instead of exp(d) - d - 1: no cancellation for small |d|, still exact 0 at d = 0.
    return torch.expm1(d) - d


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str = "grpo",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss for one batch of completions (DeepSeekMath, arXiv 2402.03300; table in
    module doc).

    Args:
        logp: (B, T) log-probs of the sampled tokens under the current policy (with grad).
        old_logp: (B, T) the same under the policy that sampled the rollout. With one optimiser
            step per rollout pass `logp.detach()`: ratio is 1 in value but still carries gradient.
        ref_logp: (B, T) under the frozen reference, or None (allowed only when beta == 0).
        advantages: (B,) one advantage per completion (see `group_advantages`).
        mask: (B, T) 1 (or True) for completion tokens that count, 0 for padding and forced
            tokens. Positions with mask 0 never reach the loss, its gradient or the metrics,
            whatever values (even inf / NaN) the other inputs hold there.
        loss_type: "grpo", "dr_grpo", "dapo" or "gspo".
        eps_low, eps_high: the ratio is clipped to [1 - eps_low, 1 + eps_high].
        beta: weight of the k3 KL term; ref_logp is not read when beta == 0.
        max_completion_length: the constant of Dr. GRPO's normaliser; required for "dr_grpo"
            (not defaulted to T, which would make the loss depend on how much padding a batch has).

    Returns:
        loss: scalar tensor to minimise.
        metrics: python floats, detached: "loss", "ratio_mean" (mean ratio over counted tokens; over
            non-empty sequences for gspo), "clip_frac_low" (share where ratio < 1 - eps_low and A < 0,
            so the clipped branch is active), "clip_frac_high" (ratio > 1 + eps_high and A > 0),
            "clip_frac" (their sum), and "kl" (mean k3 over counted tokens) when beta > 0.
            Shares are over counted tokens, or over non-empty sequences for gspo.

    Sequences with no counted token add nothing to the numerator; grpo, dr_grpo and gspo still
    divide by B (the (1/G) sum_i of DeepSeekMath, arXiv 2402.03300), dapo by the token count (clamped to at
    least 1).
    """
    _check_policy_loss_args(
        logp, old_logp, ref_logp, advantages, mask, loss_type, eps_low, eps_high, beta, max_completion_length
    )
    mask_BT = mask.bool()
    mask_f_BT = mask_BT.to(logp.dtype)
    adv_B = advantages.detach().to(logp.dtype)
    zeros_BT = torch.zeros_like(logp)
    # Select before any nonlinearity: masked positions become exact zeros and receive zero gradient,
    # so garbage there (even inf / NaN) cannot leak into the loss or through 0 * NaN in backward.
    log_ratio_BT = torch.where(mask_BT, logp - old_logp.detach(), zeros_BT)

    kl_BT = None
    if beta > 0:
        # Both inputs zeroed at masked positions, so d = 0 there and no NaN reaches expm1's backward.
        kl_BT = k3_kl(torch.where(mask_BT, logp, zeros_BT), torch.where(mask_BT, ref_logp.detach(), zeros_BT))

    if loss_type == "gspo":
        loss, ratio_mean, low, high = _gspo_loss(
            log_ratio_BT, adv_B, mask_f_BT, kl_BT, eps_low=eps_low, eps_high=eps_high, beta=beta
        )
    else:
        loss, ratio_mean, low, high = _token_level_loss(
            log_ratio_BT,
            adv_B,
            mask_BT,
            mask_f_BT,
            kl_BT,
            loss_type=loss_type,
            eps_low=eps_low,
            eps_high=eps_high,
            beta=beta,
            max_completion_length=max_completion_length,
        )

    return loss, _loss_metrics(loss, ratio_mean, low, high, kl_BT, mask_f_BT.sum())


def _check_policy_loss_args(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    eps_low: float,
    eps_high: float,
    beta: float,
    max_completion_length: int | None,
) -> None:
    """Raise ValueError for `policy_loss` arguments that do not fit together (shapes, loss_type, eps)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(
            f"logp, old_logp and mask must share one (B, T) shape, got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )
    B = logp.shape[0]
    if advantages.shape != (B,):
        raise ValueError(f"advantages must have shape ({B},), got {tuple(advantages.shape)}")
    if beta > 0 and (ref_logp is None or ref_logp.shape != logp.shape):
        raise ValueError("beta > 0 needs ref_logp of the same (B, T) shape as logp")
    if loss_type == "dr_grpo" and (max_completion_length is None or max_completion_length <= 0):
        raise ValueError("loss_type 'dr_grpo' needs max_completion_length (the constant normaliser)")
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"eps_low and eps_high must be >= 0, got {eps_low}, {eps_high}")


def _gspo_loss(
    log_ratio_BT: torch.Tensor,
    adv_B: torch.Tensor,
    mask_f_BT: torch.Tensor,
    kl_BT: torch.Tensor | None,
    *,
    eps_low: float,
    eps_high: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequence-level part of `policy_loss` for loss_type "gspo".

    Args:
        log_ratio_BT: (B, T) logp - old_logp, exact 0 at masked positions.
        adv_B: (B,) detached advantages in logp's dtype.
        mask_f_BT: (B, T) the mask as floats in logp's dtype.
        kl_BT: (B, T) k3 KL, 0 at masked positions, or None when beta == 0.

    Returns:
        (loss, ratio_mean, clip_frac_low, clip_frac_high) as 0-d tensors; the last three are
        detached shares over non-empty sequences.

    GSPO (arXiv 2507.18071, eq. 5-7): s_i = (pi(y_i)/pi_old(y_i))^(1/|y_i|), the exp of the mean
    token log-ratio, clipped per sequence. Autograd through exp(mean) gives the paper's gradient
    (eq. 10): s_i * A_i * (1/|y_i|) * sum_t grad log pi(y_i,t), zero when the clip is active.
    The paper has no KL term, ours is optional (beta = 0 default).
    """
    B = log_ratio_BT.shape[0]
    ntok_B = mask_f_BT.sum(dim=1)
    has_tok_B = ntok_B > 0
    seq_log_ratio_B = log_ratio_BT.sum(dim=1) / ntok_B.clamp(min=1)
    ratio_B = torch.exp(seq_log_ratio_B)
    clipped_B = torch.clamp(ratio_B, 1 - eps_low, 1 + eps_high)
    seq_loss_B = -torch.minimum(ratio_B * adv_B, clipped_B * adv_B)
    if kl_BT is not None:
        seq_loss_B = seq_loss_B + beta * kl_BT.sum(dim=1) / ntok_B.clamp(min=1)
    seq_loss_B = torch.where(has_tok_B, seq_loss_B, torch.zeros_like(seq_loss_B))
    loss = seq_loss_B.sum() / B
    with torch.no_grad():
        n_seq = has_tok_B.sum().clamp(min=1).to(mask_f_BT.dtype)
        low = ((ratio_B < 1 - eps_low) & (adv_B < 0) & has_tok_B).sum() / n_seq
        high = ((ratio_B > 1 + eps_high) & (adv_B > 0) & has_tok_B).sum() / n_seq
        ratio_mean = torch.where(has_tok_B, ratio_B, torch.zeros_like(ratio_B)).sum() / n_seq
    return loss, ratio_mean, low, high


def _token_level_loss(
    log_ratio_BT: torch.Tensor,
    adv_B: torch.Tensor,
    mask_BT: torch.Tensor,
    mask_f_BT: torch.Tensor,
    kl_BT: torch.Tensor | None,
    *,
    loss_type: str,
    eps_low: float,
    eps_high: float,
    beta: float,
    max_completion_length: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token part of `policy_loss` for loss_type "grpo", "dr_grpo" and "dapo".

    Args:
        log_ratio_BT: (B, T) logp - old_logp, exact 0 at masked positions.
        adv_B: (B,) detached advantages in logp's dtype.
        mask_BT: (B, T) bool mask of counted tokens; mask_f_BT: the same as floats in logp's dtype.
        kl_BT: (B, T) k3 KL, 0 at masked positions, or None when beta == 0.

    Returns:
        (loss, ratio_mean, clip_frac_low, clip_frac_high) as 0-d tensors; the last three are
        detached shares over counted tokens. The normaliser of the loss is the module table's.
    """
    B = log_ratio_BT.shape[0]
    ntok_B = mask_f_BT.sum(dim=1)
    ntok_total = mask_f_BT.sum()
    ratio_BT = torch.exp(log_ratio_BT)
    clipped_BT = torch.clamp(ratio_BT, 1 - eps_low, 1 + eps_high)
    adv_B1 = adv_B[:, None]
    tok_loss_BT = -torch.minimum(ratio_BT * adv_B1, clipped_BT * adv_B1)
    if kl_BT is not None:
        tok_loss_BT = tok_loss_BT + beta * kl_BT
    tok_loss_BT = torch.where(mask_BT, tok_loss_BT, torch.zeros_like(tok_loss_BT))
    if loss_type == "grpo":
        loss = (tok_loss_BT.sum(dim=1) / ntok_B.clamp(min=1)).sum() / B
    elif loss_type == "dr_grpo":
        loss = tok_loss_BT.sum() / (B * max_completion_length)
    else:  # dapo
        loss = tok_loss_BT.sum() / ntok_total.clamp(min=1)
    with torch.no_grad():
        n = ntok_total.clamp(min=1)
        low = ((ratio_BT < 1 - eps_low) & (adv_B1 < 0) & mask_BT).sum() / n
        high = ((ratio_BT > 1 + eps_high) & (adv_B1 > 0) & mask_BT).sum() / n
        ratio_mean = (ratio_BT * mask_f_BT).sum() / n
    return loss, ratio_mean, low, high


def _loss_metrics(
    loss: torch.Tensor,
    ratio_mean: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    kl_BT: torch.Tensor | None,
    ntok_total: torch.Tensor,
) -> dict[str, float]:
    """`policy_loss`'s metrics as python floats ("kl" = mean k3 over the ntok_total counted tokens)."""
    metrics = {
        "loss": loss.item(),
        "ratio_mean": ratio_mean.item(),
        "clip_frac_low": low.item(),
        "clip_frac_high": high.item(),
        "clip_frac": (low + high).item(),
    }
    if kl_BT is not None:
        metrics["kl"] = (kl_BT.detach().sum() / ntok_total.clamp(min=1)).item()
    return metrics


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token: log_softmax(logits)[..., target], without a (B, T, V) copy.

    Args:
        logits: (B, T, V) any float dtype; logits[:, t] scores targets[:, t] (shift beforehand).
            Apply the sampling temperature first if the rollout used one.
        targets: (B, T) long token ids.

    Returns:
        logp_BT: (B, T) float32 (float64 for float64 logits), differentiable w.r.t. logits. Computed as
        logit[target] - logsumexp(logits) in that precision (bf16 logits are upcast), over chunks of rows so the temporaries stay
        ~chunk x V (a full log_softmax would materialise another B x T x V tensor).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits_NV = logits.reshape(-1, logits.shape[-1])
    targets_N = targets.reshape(-1)
    out = []
    for start in range(0, logits_NV.shape[0], _LOGIT_ROWS_PER_CHUNK):
        chunk_nV = logits_NV[start : start + _LOGIT_ROWS_PER_CHUNK].to(dtype)
        picked_n = chunk_nV.gather(1, targets_N[start : start + _LOGIT_ROWS_PER_CHUNK, None]).squeeze(1)
        out.append(picked_n - torch.logsumexp(chunk_nV, dim=-1))
    if not out:
        return logits.new_zeros(targets.shape, dtype=dtype)
    return torch.cat(out).reshape(targets.shape)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position, for the entropy metric.

    Args:
        logits: (B, T, V) any float dtype (temperature already applied, if any).

    Returns:
        entropy_BT: (B, T) float32 (float64 for float64 logits) in nats: logsumexp(x) - sum softmax(x) * x,
        computed over chunks of rows in that precision. Differentiable; wrap in torch.no_grad() when only logging it.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits_NV = logits.reshape(-1, logits.shape[-1])
    out = []
    for start in range(0, logits_NV.shape[0], _LOGIT_ROWS_PER_CHUNK):
        chunk_nV = logits_NV[start : start + _LOGIT_ROWS_PER_CHUNK].to(dtype)
        probs_nV = torch.softmax(chunk_nV, dim=-1)
        out.append(torch.logsumexp(chunk_nV, dim=-1) - (probs_nV * chunk_nV).sum(dim=-1))
    if not out:
        return logits.new_zeros(logits.shape[:-1], dtype=dtype)
    return torch.cat(out).reshape(logits.shape[:-1])


# ----------------------------------------------------------------------------------------------
# the fused, chunked head: log-probs, entropy and cross-entropy without (N, V) logits in memory

# Positions whose logits are alive at once in `head_logprobs` (forward and backward): at the
# Qwen2.5 vocabulary (151,936) a chunk of 512 positions is 311 MB of fp32 logits, and three such
# temporaries (logits, softmax, their gradient) are the whole extra memory of the loss.
HEAD_CHUNK = 512


def _head_compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype the plain ``lm_head(hidden)`` would use: autocast's when it is on, else promoted."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_logits(h_nD: torch.Tensor, w_VD: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """(n, V) logits of one chunk in the matmul dtype, upcast to `dtype` (>= float32) and scaled."""
    z_nV = (h_nD @ w_VD.t()).to(dtype)
    return z_nV * scale if scale != 1.0 else z_nV


class _HeadLogprobFn(torch.autograd.Function):
    """logp_N = log softmax(h W^T / temperature)[target], optionally entropy_N, chunk by chunk.

    Forward keeps only (N,) per-position statistics (the log-normaliser, and E[z] for the entropy);
    backward recomputes each chunk's logits from the saved hidden states and head weight, so at no
    point do more than `chunk` positions' logits exist. d logp / dz = onehot(target) - p;
    d H / dz = -p (z - E_p[z]); both divided by the temperature on the way back to h and W.
    """

    @staticmethod
    def forward(ctx, h_ND, w_VD, targets_N, scale, chunk, compute_dtype, want_entropy):
        ctx.set_materialize_grads(False)
        out_dtype = torch.promote_types(compute_dtype, torch.float32)
        N = h_ND.shape[0]
        logp_N = h_ND.new_empty(N, dtype=out_dtype)
        lse_N = h_ND.new_empty(N, dtype=out_dtype)
        ent_N = h_ND.new_empty(N if want_entropy else 0, dtype=out_dtype)
        ez_N = h_ND.new_empty(N if want_entropy else 0, dtype=out_dtype)
        with torch.autocast(h_ND.device.type, enabled=False):
            hc_ND, wc_VD = h_ND.to(compute_dtype), w_VD.to(compute_dtype)
            for s in range(0, N, chunk):
                z_nV = _chunk_logits(hc_ND[s : s + chunk], wc_VD, scale, out_dtype)
                lse_n = torch.logsumexp(z_nV, dim=-1)
                lse_N[s : s + chunk] = lse_n
                logp_N[s : s + chunk] = z_nV.gather(1, targets_N[s : s + chunk, None]).squeeze(1) - lse_n
                if want_entropy:
                    ez_n = (torch.softmax(z_nV, dim=-1) * z_nV).sum(dim=-1)
                    ez_N[s : s + chunk] = ez_n
                    ent_N[s : s + chunk] = lse_n - ez_n
        ctx.save_for_backward(h_ND, w_VD, targets_N, lse_N, ez_N)
        ctx.scale, ctx.chunk, ctx.compute_dtype = scale, chunk, compute_dtype
        if not want_entropy:
            ctx.mark_non_differentiable(ent_N)
        return logp_N, ent_N

    @staticmethod
    def backward(ctx, g_logp_N, g_ent_N):
        h_ND, w_VD, targets_N, lse_N, ez_N = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if g_ent_N is not None and g_ent_N.numel() == 0:
            g_ent_N = None
        if (g_logp_N is None and g_ent_N is None) or not (need_h or need_w):
            return None, None, None, None, None, None, None
        scale, chunk, cd = ctx.scale, ctx.chunk, ctx.compute_dtype
        out_dtype = lse_N.dtype
        N = h_ND.shape[0]
        grad_h = torch.empty_like(h_ND) if need_h else None
        grad_w = (
            torch.zeros_like(w_VD, dtype=torch.promote_types(w_VD.dtype, torch.float32)) if need_w else None
        )
        with torch.autocast(h_ND.device.type, enabled=False):
            hc_ND, wc_VD = h_ND.to(cd), w_VD.to(cd)
            for s in range(0, N, chunk):
                z_nV = _chunk_logits(hc_ND[s : s + chunk], wc_VD, scale, out_dtype)
                # in place where possible: one (chunk, V) float buffer carries z -> p -> dL/dz
                if g_ent_N is not None:
                    # dH/dz = -p (z - E[z]): needs z and p at once
                    g_n1 = g_ent_N[s : s + chunk, None].to(out_dtype)
                    p_nV = torch.exp(z_nV - lse_N[s : s + chunk, None])
                    gz_nV = z_nV.sub_(ez_N[s : s + chunk, None]).mul_(p_nV).mul_(-g_n1)
                else:
                    p_nV = z_nV.sub_(lse_N[s : s + chunk, None]).exp_()
                    gz_nV = None
                if g_logp_N is not None:
                    g_n1 = g_logp_N[s : s + chunk, None].to(out_dtype)
                    if gz_nV is None:
                        gz_nV = p_nV.mul_(-g_n1)
                    else:
                        gz_nV.sub_(p_nV.mul_(g_n1))
                    gz_nV.scatter_add_(1, targets_N[s : s + chunk, None], g_n1)
                del z_nV, p_nV
                if scale != 1.0:
                    gz_nV.mul_(scale)
                gz_nV = gz_nV.to(cd)
                if need_h:
                    grad_h[s : s + chunk] = (gz_nV @ wc_VD).to(h_ND.dtype)
                if need_w:
                    grad_w += (gz_nV.t() @ hc_ND[s : s + chunk]).to(grad_w.dtype)
        if grad_w is not None:
            grad_w = grad_w.to(w_VD.dtype)
        return grad_h, grad_w, None, None, None, None, None


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
    chunk_size: int = HEAD_CHUNK,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target under softmax(hidden @ weight.T / temperature), never holding more than
    `chunk_size` positions' logits, in the forward or in the backward.

    Args:
        hidden: (..., D) final hidden states (after the final norm) at the positions to score; select
            the positions that count first (completion tokens only, labelled tokens only).
        weight: (V, D) the head matrix (``lm_head.weight``); gets its gradient like ``F.linear`` would.
        targets: (...) long token ids, same leading shape as hidden.
        temperature: the logits are divided by it (the sampling temperature of a rollout).
        entropy: also return the entropy (nats) of each position's distribution, differentiable.
        chunk_size: positions per chunk (the memory bound: ~3 x chunk_size x V floats).

    Returns:
        logp (...) float32 (float64 for float64 inputs), or (logp, entropy) with ``entropy=True``.
        Equal to ``token_logprobs(hidden @ weight.T / temperature, targets)`` up to rounding; the
        matmuls run in autocast's dtype when autocast is on (as ``lm_head`` would), the softmax in fp32.
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead = targets.shape
    h_ND = hidden.reshape(-1, hidden.shape[-1])
    targets_N = targets.reshape(-1).long()
    cd = _head_compute_dtype(hidden, weight)
    logp_N, ent_N = _HeadLogprobFn.apply(h_ND, weight, targets_N, 1.0 / temperature, chunk_size, cd, entropy)
    if entropy:
        return logp_N.reshape(lead), ent_N.reshape(lead)
    return logp_N.reshape(lead)


def head_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    chunk_size: int = HEAD_CHUNK,
) -> torch.Tensor:
    """Summed next-token cross-entropy of ``hidden @ weight.T`` over the labelled positions only.

    Args:
        hidden: (..., D) final hidden states; targets: (...) long, `ignore_index` where no loss is taken.

    Returns:
        0-d float32: sum over labelled positions of -log softmax(logits)[target], i.e.
        ``F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")`` without the
        (N, V) logits (unlabelled positions are dropped before the head, so cost nothing).
    """
    keep = targets != ignore_index
    h_nD = hidden[keep]
    if h_nD.shape[0] == 0:
        return (hidden.sum() + weight.sum()) * 0.0  # keeps the graph (DDP wants every rank to run a backward)
    return -head_logprobs(h_nD, weight, targets[keep], chunk_size=chunk_size).sum()
