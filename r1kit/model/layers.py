"""Building blocks shared by every family: RMSNorm, rotary position embedding (with scaling), SwiGLU MLP.

Numerics follow transformers exactly (norm in fp32, rope tables in fp32 then cast) so logits match to 1e-5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from r1kit.model.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm: ``weight * x / sqrt(mean(x^2) + eps)``, computed in fp32.

    Input and output (..., dim); the output has the input's dtype (as in transformers' LlamaRMSNorm).
    """

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (..., dim)."""
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32 and hasattr(F, "rms_norm"):
            return F.rms_norm(
                x, self.weight.shape, self.weight, self.eps
            )  # one fused kernel, same math in fp32
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (rope_dim // 2,) fp32 on CPU and the cos/sin multiplier for ``cfg``'s rope type.

    Formulas are transformers' ``modeling_rope_utils`` (default, linear, llama3, yarn).
    """
    dim = cfg.rope_dim
    base = cfg.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = cfg.rope_scaling
    if rs is None:
        return inv_freq, 1.0
    rope_type = rs["rope_type"]
    if rope_type == "linear":
        return inv_freq / rs["factor"], 1.0
    if rope_type == "llama3":
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old_len = rs["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        # long wavelengths are interpolated by `factor`, short ones kept, the band between blended smoothly
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled), 1.0
    if rope_type == "yarn":
        return _yarn_frequencies(cfg, dim, base)
    raise ValueError(f"unsupported rope_type {rope_type!r}")


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_frequencies(cfg: ModelConfig, dim: int, base: float) -> tuple[torch.Tensor, float]:
    """YaRN (arXiv 2309.00071) as in transformers ``_compute_yarn_parameters``."""
    rs = cfg.rope_scaling
    factor = rs.get("factor")
    orig_len = rs["original_max_position_embeddings"]
    if factor is None:
        factor = cfg.max_position_embeddings / orig_len
    attention_factor = rs.get("attention_factor")
    mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim))
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast = rs.get("beta_fast") or 32
    beta_slow = rs.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(orig_len / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions: ``forward(positions (B, T), dtype) -> (cos, sin)`` each (B, T, rope_dim).

    The frequencies are a plain tensor rebuilt on the positions' device on each call (rope_dim/2 numbers),
    not a buffer, so ``model.to(bfloat16)`` cannot round them.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inv_freq, self.attention_scaling = rope_frequencies(cfg)
        self._inv_freq = inv_freq

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: (B, T) long -> (cos, sin), each (B, T, rope_dim) in ``dtype``."""
        if self._inv_freq.device != positions.device:
            self._inv_freq = self._inv_freq.to(positions.device)  # move once, not every step
        inv_freq = self._inv_freq
        freqs = positions[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool = False
) -> torch.Tensor:
    """Rotate x (B, heads, T, rope_dim) by cos/sin (B, T, rope_dim).

    ``interleave``: DeepSeek layout, pairs (x0, x1), (x2, x3), ... rotate together and the result is
    written de-interleaved (evens then odds), exactly as transformers' ``apply_rotary_pos_emb_interleave``.
    """
    cos, sin = cos[:, None], sin[:, None]
    if not interleave:
        return x * cos + _rotate_half(x) * sin
    half = cos.shape[-1] // 2
    cos, sin = cos[..., :half], sin[..., :half]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class MLP(nn.Module):
    """SwiGLU feed-forward: ``down_proj(silu(gate_proj(x)) * up_proj(x))``; (..., D) -> (..., D)."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias, **kw)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias, **kw)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def decode_step(self, x: torch.Tensor, gate_up: tuple | None = None) -> torch.Tensor:
        """``forward`` with an optional fused (weight (2F, D), bias) of gate/up (a decode-time copy)."""
        if gate_up is None:
            return self(x)
        gate, up = F.linear(x, gate_up[0], gate_up[1]).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
