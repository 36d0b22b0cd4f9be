"""DeepSeekMoE: sigmoid gate with a selection-only balancing bias, grouped expert dispatch, shared experts.

Shapes are suffixed in names where they are tricky: N tokens, K experts per token, E routed experts,
D model width, F expert width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from r1kit.model.config import ModelConfig
from r1kit.model.layers import MLP


class Gate(nn.Module):
    """Router (DeepSeek-V3 ``Gate`` / HF ``DeepseekV3TopkRouter``).

    scores s = sigmoid(x . e_i) in fp32; the top-k experts are chosen on s + b (``e_score_correction_bias``,
    restricted to the ``topk_group`` best groups by their top-2 sum), but the weights gather the raw s,
    optionally normalised over the k chosen, times ``routed_scaling_factor``. The bias never weights and gets
    no gradient: it is a buffer moved by ``MoE.update_bias``.
    """

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_routed_experts, cfg.num_experts_per_tok
        self.n_group, self.topk_group = cfg.n_group, cfg.topk_group
        self.norm_topk_prob, self.route_scale = cfg.norm_topk_prob, cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(self.n_experts, cfg.hidden_size, device=device, dtype=dtype))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.n_experts, device=device))

    def _apply(self, fn, recurse=True):
        # Keep the bias in fp32 whatever .to(dtype) asks: +-1e-3 balancing steps vanish in bf16
        # (transformers pins it the same way with _keep_in_fp32_modules_strict).
        super()._apply(fn, recurse)
        bias = self.e_score_correction_bias
        if bias.is_floating_point() and bias.dtype != torch.float32:
            self.e_score_correction_bias = bias.float()
        return self

    def forward(self, x_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, D) -> (weights (N, K) fp32, expert indices (N, K) long)."""
        scores_NE = F.linear(x_ND.float(), self.weight.float()).sigmoid()
        choice_NE = scores_NE.detach() + self.e_score_correction_bias
        if self.n_group > 1 and self.topk_group < self.n_group:
            n = choice_NE.shape[0]
            grouped = choice_NE.view(n, self.n_group, -1)
            group_score_NG = grouped.topk(2, dim=-1).values.sum(dim=-1)
            keep_NG = torch.zeros_like(group_score_NG, dtype=torch.bool)
            keep_NG.scatter_(1, group_score_NG.topk(self.topk_group, dim=-1).indices, True)
            choice_NE = grouped.masked_fill(~keep_NG[..., None], float("-inf")).view(n, -1)
        idx_NK = choice_NE.topk(self.top_k, dim=-1).indices
        weights_NK = scores_NE.gather(1, idx_NK)
        if self.norm_topk_prob:
            weights_NK = weights_NK / (weights_NK.sum(dim=-1, keepdim=True) + 1e-20)
        return weights_NK * self.route_scale, idx_NK


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (``_grouped_mm``'s backward needs it)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def grouped_linear(
    x_MI: torch.Tensor, weight_EOI: torch.Tensor, counts_E: torch.Tensor, dispatch: str = "auto"
):
    """Per-expert ``x @ W_e^T`` over rows sorted by expert: x (M, I), W (E, O, I), counts (E,) -> (M, O).

    Rows [sum(counts[:e]), sum(counts[:e+1])) belong to expert e. ``dispatch``: "grouped_mm" runs one
    ``torch._grouped_mm`` kernel; "loop" runs one matmul per expert (a loop over experts, never tokens);
    "auto" picks grouped_mm where it is fast (CUDA, bf16, Hopper or newer) -- on CPU torch's grouped_mm is a
    reference implementation about 2x slower than the loop.
    """
    if dispatch == "auto":
        dispatch = "grouped_mm" if _grouped_mm_is_fast(x_MI, weight_EOI) else "loop"
    if dispatch == "grouped_mm":
        offs = counts_E.cumsum(0).to(torch.int32)
        return _ContiguousGrad.apply(torch._grouped_mm(x_MI, weight_EOI.transpose(1, 2), offs=offs))
    if dispatch != "loop":
        raise ValueError(f"unknown dispatch {dispatch!r}; use 'auto', 'grouped_mm' or 'loop'")
    chunks = x_MI.split(counts_E.tolist())
    return torch.cat([F.linear(chunk, weight_EOI[e]) for e, chunk in enumerate(chunks)], dim=0)


def _grouped_mm_is_fast(x: torch.Tensor, w: torch.Tensor) -> bool:
    if not (hasattr(torch, "_grouped_mm") and x.is_cuda and x.dtype == torch.bfloat16 == w.dtype):
        return False
    aligned = x.shape[-1] % 8 == 0 and w.shape[1] % 8 == 0  # 16-byte row strides
    return aligned and torch.cuda.get_device_capability(x.device)[0] >= 9


class Experts(nn.Module):
    """Routed experts as stacked tensors (transformers-v5 in-memory layout).

    ``gate_up_proj`` (E, 2F, D): rows [:F] are gate_proj, [F:] up_proj; ``down_proj`` (E, D, F).
    """

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        e, d, f = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * f, d, device=device, dtype=dtype))
        self.down_proj = nn.Parameter(torch.empty(e, d, f, device=device, dtype=dtype))
        self._inference_weights: tuple | None = None  # (key, gate_up (E, D, 2F), down (E, F, D))

    def forward(self, x_MD: torch.Tensor, counts_E: torch.Tensor, dispatch: str = "auto") -> torch.Tensor:
        """x (M, D) rows sorted by expert, counts (E,) -> (M, D) unweighted expert outputs."""
        if (
            dispatch == "auto"
            and not self.training
            and not torch.is_grad_enabled()
            and not x_MD.is_cuda
            and self._small()
        ):
            return self._forward_inference(x_MD, counts_E)
        gate_MF, up_MF = grouped_linear(x_MD, self.gate_up_proj, counts_E, dispatch).chunk(2, dim=-1)
        return grouped_linear(F.silu(gate_MF) * up_MF, self.down_proj, counts_E, dispatch)

    def train(self, mode: bool = True) -> Experts:
        """Switching mode drops the transposed inference copies: fused optimizers (``AdamW(fused=True)``)
        update the weights in place without moving their version counters, so a copy made at one
        validation would otherwise outlive the training steps after it."""
        self._inference_weights = None
        return super().train(mode)

    def _forward_inference(self, x_MD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """CPU inference (eval mode only): the per-expert loop over weights stored input-major (K, N), ~30%
        faster than x @ W^T at the few rows per expert of a decode step. The transposed copies are rebuilt
        when the weights' version counters move (load_state_dict, plain in-place updates) and whenever the
        module switches between train and eval mode (fused optimizer steps move no counter)."""
        if x_MD.shape[0] == 0:
            return x_MD.new_zeros(0, self.down_proj.shape[1])
        gate_up_EDF, down_EFD = self._transposed()
        counts = counts_E.tolist()
        chunks = x_MD.split(counts)
        h = torch.cat([chunk @ gate_up_EDF[e] for e, chunk in enumerate(chunks) if counts[e]], dim=0)
        gate_MF, up_MF = h.chunk(2, dim=-1)
        chunks = (F.silu(gate_MF) * up_MF).split([c for c in counts if c])
        experts = [e for e, c in enumerate(counts) if c]
        return torch.cat([chunk @ down_EFD[e] for e, chunk in zip(experts, chunks)], dim=0)

    def _small(self) -> bool:
        """Whether a transposed inference copy of the expert weights is cheap (<= 64 MiB per layer)."""
        n = self.gate_up_proj.numel() * self.gate_up_proj.element_size()
        return n + self.down_proj.numel() * self.down_proj.element_size() <= 64 * 2**20

    def _transposed(self) -> tuple[torch.Tensor, torch.Tensor]:
        gu, dn = self.gate_up_proj, self.down_proj
        key = (gu._version, gu.data_ptr(), gu.dtype, dn._version, dn.data_ptr(), dn.dtype)
        if self._inference_weights is None or self._inference_weights[0] != key:
            self._inference_weights = (
                key,
                gu.detach().transpose(1, 2).contiguous(),
                dn.detach().transpose(1, 2).contiguous(),
            )
        return self._inference_weights[1], self._inference_weights[2]


class MoE(nn.Module):
    """Shared experts plus top-k routed experts; (B, T, D) -> (B, T, D).

    Dispatch sorts the N*K (token, expert) pairs by expert, runs the experts as grouped matmuls over
    contiguous row blocks, un-sorts and sums the K weighted outputs of each token. In training mode the
    number of tokens routed to each expert accumulates in ``tokens_per_expert`` for the balancing update.
    """

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.gate = Gate(cfg, device, dtype)
        self.experts = Experts(cfg, device, dtype)
        self.shared_experts = (
            MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts, device=device, dtype=dtype)
            if cfg.n_shared_experts
            else None
        )
        self.register_buffer(
            "tokens_per_expert",
            torch.zeros(cfg.n_routed_experts, dtype=torch.long, device=device),
            persistent=False,
        )
        self.dispatch = "auto"

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        x_ND = x_BTD.reshape(-1, x_BTD.shape[-1])
        n = x_ND.shape[0]
        weights_NK, idx_NK = self.gate(x_ND)
        flat_idx = idx_NK.reshape(-1)
        order = flat_idx.argsort(stable=True)
        counts_E = torch.bincount(flat_idx, minlength=self.gate.n_experts)
        if self.training:
            with torch.no_grad():
                self.tokens_per_expert += counts_E
        y_sorted = self.experts(x_ND[order // self.top_k], counts_E, self.dispatch)
        unsort = torch.empty_like(order)
        unsort[order] = torch.arange(
            order.numel(), device=order.device
        )  # inverse permutation, no second sort
        y_NKD = y_sorted[unsort].view(n, self.top_k, -1)
        routed_ND = (y_NKD * weights_NK[..., None]).sum(dim=1).to(x_BTD.dtype)
        out = routed_ND.view_as(x_BTD)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x_BTD)
        return out

    @torch.no_grad()
    def update_bias(self, gamma: float, load: torch.Tensor | None = None) -> None:
        """Aux-loss-free balancing (DeepSeek-V3, arXiv 2412.19437): b_i -= gamma * sign(load_i - mean(load));
        resets the counter.

        ``load`` (E,) overrides the local counter, e.g. after an all-reduce across data-parallel ranks.
        """
        load = (self.tokens_per_expert if load is None else load).float().to(self.tokens_per_expert.device)
        if load.sum() > 0:
            bias = self.gate.e_score_correction_bias
            bias -= gamma * torch.sign(load - load.mean()).to(bias.device)
        self.tokens_per_expert.zero_()
