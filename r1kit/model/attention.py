"""Attention: grouped-query attention (Llama/Qwen) and multi-head latent attention (DeepSeek-V3), KV cache.

Both modules take a boolean mask (B, 1, T, S) built once per forward by ``attention_mask_4d`` and run
``F.scaled_dot_product_attention``. MLA has two paths: the naive one expands the latent into per-head keys and
values (training, prefill without cache); the absorbed one folds W_UK into the query and W_UV after the
attention so it attends straight over the cached latent (DeepSeek-V3 ``inference/model.py`` "absorb" mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from r1kit.model.config import ModelConfig
from r1kit.model.layers import RMSNorm, apply_rope


def attention_mask_4d(
    attention_mask: torch.Tensor | None, batch: int, q_len: int, start: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean mask (B, 1, T, S), True = may attend, for queries at slots [start, start+T) over S = start+T keys.

    Causal by slot index, combined with the padding mask ``attention_mask`` (B, S) (1 = real token). The
    diagonal is always allowed so a padding query (left padding) attends to itself and stays finite; its
    output is garbage but never read. Returns None when plain causal attention suffices.
    """
    total = start + q_len
    if attention_mask is None and (start == 0 or q_len == 1):
        return None  # start == 0: is_causal; one query with a full cache: every key is visible
    if q_len == 1:  # decoding: every cached key is causally visible; only padding is masked
        if tuple(attention_mask.shape) != (batch, total):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, cache length + T) "
                f"= {(batch, total)}"
            )
        allowed = attention_mask.to(device=device) != 0
        allowed[:, start] = True
        return allowed[:, None, None, :]
    q_idx = torch.arange(start, total, device=device)[:, None]
    k_idx = torch.arange(total, device=device)[None, :]
    allowed = (k_idx <= q_idx)[None].expand(batch, -1, -1)
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (batch, total):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, cache length + T) "
                f"= {(batch, total)}"
            )
        allowed = (allowed & attention_mask.to(device=device, dtype=torch.bool)[:, None, :]) | (
            k_idx == q_idx
        )
    return allowed[:, None]


def _sdpa(q, k, v, mask, scale):
    """SDPA with our mask convention: mask None means causal when there is more than one query.

    q (B, H, T, d), k/v (B, Hkv, S, d) with H a multiple of Hkv: grouped-query attention runs in the kernel
    (``enable_gqa``), so K/V are never copied per query head.
    """
    is_causal = mask is None and q.shape[-2] > 1 and q.shape[-2] == k.shape[-2]
    gqa = q.shape[1] != k.shape[1]
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu"):
        # CPU bf16 autocast keeps attention in fp32: its bf16 backward is ~6x slower (r1kit.precision)
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q.float(),
                k.float(),
                v.float(),
                attn_mask=mask,
                is_causal=is_causal,
                scale=scale,
                enable_gqa=gqa,
            )
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=gqa
    )


def _decode_attend(q, k, v, mask, scale):
    """Attention of a few packed queries q (B, Hkv, R, d) over k/v (B, Hkv, S, d); mask (B, 1, 1, S) bool or None.

    On a CPU it is two batched matmuls around an fp32 softmax: for these shapes (R = the query heads per kv
    head, one token each) the flash SDPA kernel measured 1.3-2.5x slower on 2 cores (its blocking is built for
    long queries; benchmarks/bench_engine.py). Elsewhere SDPA (a fused decode kernel on a GPU).
    """
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


class Attention(nn.Module):
    """Grouped-query attention with rope; Qwen2 q/k/v biases and Qwen3 per-head q/k RMSNorm as options.

    forward(x (B, T, D), cos/sin (B, T, head_dim), mask, cache slot, start) -> (B, T, D).
    Cache slot: ``{"k": (B, Hkv, L, Dh), "v": (B, Hkv, L, Dh)}``.
    """

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.n_heads, self.n_kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.attn_head_dim,
        )
        qkv_bias = cfg.attention_bias or cfg.qkv_bias
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=qkv_bias, **kw)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=qkv_bias, **kw)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=qkv_bias, **kw)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=cfg.attention_bias, **kw)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, **kw)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, **kw)
        else:
            self.q_norm = self.k_norm = None
        self.scale = self.head_dim**-0.5

    def cache_shapes(self, batch: int, max_len: int) -> dict[str, tuple[int, ...]]:
        """Shapes of this layer's cache tensors."""
        return {k: (batch, self.n_kv_heads, max_len, self.head_dim) for k in ("k", "v")}

    def forward(self, x, cos, sin, mask=None, cache_slot=None, start=0):
        """x (B, T, D) -> (B, T, D); writes K/V at [start, start+T) of ``cache_slot`` when given."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        if cache_slot is not None:
            cache_slot["k"][:, :, start : start + t] = k
            cache_slot["v"][:, :, start : start + t] = v
            k, v = cache_slot["k"][:, :, : start + t], cache_slot["v"][:, :, : start + t]
            if k.dtype != q.dtype and not torch.is_autocast_enabled(q.device.type):
                k, v = k.to(q.dtype), v.to(q.dtype)  # an fp32 cache of a bf16 model (the CPU engine's)
        # kv head j serves query heads j*rep .. j*rep+rep-1 (transformers' repeat_kv), inside the kernel
        out = _sdpa(q, k, v, mask, self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def decode_step(self, x, cos, sin, slot, index, mask, end=None, qkv=None):
        """One-token decode: x (B, 1, D) -> (B, 1, D), K/V written at cache slot ``index`` ((1,) long tensor).

        The step ``torch.compile`` captures: the slot is a tensor (``index_put_``, no Python-int shapes), the
        keys are the whole preallocated cache (``end`` None; ``mask`` (B, 1, 1, L) hides unwritten slots and
        padding) or its first ``end`` slots (eager). Packed GQA: the ``rep`` query heads that share a kv head
        are folded into the query axis, so one (B, Hkv, rep, Dh) x (B, Hkv, S, Dh) attention runs with no
        ``enable_gqa`` broadcast. ``qkv``: an optional fused (weight, bias) of q/k/v (decode-time copy).
        """
        b = x.shape[0]
        h, hk, dh = self.n_heads, self.n_kv_heads, self.head_dim
        if qkv is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = F.linear(x, qkv[0], qkv[1]).split([h * dh, hk * dh, hk * dh], dim=-1)
        q, k = q.view(b, 1, h, dh), k.view(b, 1, hk, dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)  # (B, H, 1, Dh)
        k = apply_rope(k.transpose(1, 2), cos, sin)  # (B, Hkv, 1, Dh)
        # the cache keeps its dtype (fp32 under autocast, and for a bf16 model on a CPU: `r1kit.engine.batch`):
        # new keys are cast to it, and the query too, so attention runs in the cache's dtype
        slot["k"][:, :, index] = k.to(slot["k"].dtype)
        slot["v"][:, :, index] = v.view(b, 1, hk, dh).transpose(1, 2).to(slot["v"].dtype)
        keys, values = slot["k"], slot["v"]
        q = q.to(keys.dtype)
        if end is not None:
            keys, values = keys[:, :, :end], values[:, :, :end]
        # query head j*rep + r uses kv head j: (B, H, 1, Dh) -> (B, Hkv, rep, Dh), the rep heads as queries
        out = _decode_attend(q.reshape(b, hk, h // hk, dh), keys, values, mask, self.scale)
        return self.o_proj(out.reshape(b, 1, h * dh).to(x.dtype))


class MLAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3), HF parameter names.

    q: ``q_proj`` or ``q_b_proj(q_a_layernorm(q_a_proj(x)))`` -> H heads of (nope + rope) dims.
    kv: ``kv_a_proj_with_mqa(x)`` -> latent c (kv_lora_rank, normed by ``kv_a_layernorm``) and one shared rope
    key k_pe; ``kv_b_proj`` (W_UK; W_UV stacked per head) expands c to per-head k_nope and v.
    Cache slot: ``{"c_kv": (B, L, kv_lora_rank), "k_pe": (B, L, qk_rope_head_dim)}`` (roped key).
    """

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        d, h = cfg.hidden_size, cfg.num_attention_heads
        self.n_heads = h
        self.nope, self.rope, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_rank = cfg.kv_lora_rank
        self.interleave = cfg.rope_interleave
        qk = self.nope + self.rope
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(d, h * qk, bias=False, **kw)
        else:
            self.q_a_proj = nn.Linear(d, cfg.q_lora_rank, bias=cfg.attention_bias, **kw)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, 1e-6, **kw)  # HF uses its default eps here
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, h * qk, bias=False, **kw)
        self.kv_a_proj_with_mqa = nn.Linear(d, self.kv_rank + self.rope, bias=cfg.attention_bias, **kw)
        self.kv_a_layernorm = RMSNorm(self.kv_rank, 1e-6, **kw)
        self.kv_b_proj = nn.Linear(self.kv_rank, h * (self.nope + self.v_dim), bias=False, **kw)
        self.o_proj = nn.Linear(h * self.v_dim, d, bias=cfg.attention_bias, **kw)
        self.scale = cfg.softmax_scale()

    def cache_shapes(self, batch: int, max_len: int) -> dict[str, tuple[int, ...]]:
        """Shapes of this layer's cache tensors: the normalised latent and the roped key only."""
        return {"c_kv": (batch, max_len, self.kv_rank), "k_pe": (batch, max_len, self.rope)}

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "q_proj"):
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))

    def forward(self, x, cos, sin, mask=None, cache_slot=None, start=0):
        """x (B, T, D) -> (B, T, D).

        Without a cache, or filling an empty one (``start == 0``): naive path. Decoding (``start > 0``): absorbed
        path over the latent cache.
        """
        b, t, _ = x.shape
        h = self.n_heads
        q = self._query(x).view(b, t, h, self.nope + self.rope).transpose(1, 2)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_rank, self.rope], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)
        q_pe = apply_rope(q_pe, cos, sin, self.interleave)
        k_pe = apply_rope(
            k_pe[:, None], cos, sin, self.interleave
        )  # (B, 1, T, R): one key shared by all heads
        if cache_slot is None or start == 0:
            # naive path: expand the latent into per-head keys/values (training; prefill into an empty cache,
            # where it is cheaper than attending over the (kv_lora_rank + rope)-wide latent)
            kv = self.kv_b_proj(c_kv).view(b, t, h, self.nope + self.v_dim).transpose(1, 2)
            k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
            k = torch.cat([k_nope, k_pe.expand(-1, h, -1, -1)], dim=-1)
            out = _sdpa(torch.cat([q_nope, q_pe], dim=-1), k, v, mask, self.scale)
            if cache_slot is not None:
                cache_slot["c_kv"][:, :t] = c_kv
                cache_slot["k_pe"][:, :t] = k_pe[:, 0]
        else:
            out = self._absorbed(q_nope, q_pe, c_kv, k_pe[:, 0], mask, cache_slot, start)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, h * self.v_dim))

    def _absorbed(self, q_nope, q_pe, c_kv, k_pe, mask, cache_slot, start):
        """Attention against the latent cache. q_nope (B, H, T, nope), q_pe (B, H, T, R) -> (B, H, T, v_dim).

        score = q_nope . (W_UK c) + q_pe . k_pe = (W_UK^T q_nope) . c + q_pe . k_pe, so the query moves into
        latent space once and the keys never expand; likewise out = W_UV (sum_s p_s c_s). The heads share one
        latent key per position (multi-query), so the H*T queries of a row attend with two batched matmuls
        straight over the cache: (B, H*T, C) @ (B, C, S), never materialising per-head keys or values.
        """
        b, h, t, _ = q_nope.shape
        end = start + t
        cache_slot["c_kv"][:, start:end] = c_kv
        cache_slot["k_pe"][:, start:end] = k_pe
        c_all, pe_all = cache_slot["c_kv"][:, :end], cache_slot["k_pe"][:, :end]
        if mask is None and t > 1:  # causal over slots: query i (slot start+i) sees keys <= start+i
            q_idx = torch.arange(start, end, device=q_nope.device)[:, None]
            mask = torch.arange(end, device=q_nope.device)[None, :] <= q_idx
        return self._latent_attend(q_nope, q_pe, c_all, pe_all, mask)

    def _latent_attend(self, q_nope, q_pe, c_all, pe_all, mask):
        """q_nope (B, H, T, nope), q_pe (B, H, T, R) over the latent keys c_all (B, S, C), pe_all (B, S, R);
        mask broadcastable to (B, H, T, S) or None -> (B, H, T, v_dim)."""
        b, h, t, _ = q_nope.shape
        end = c_all.shape[1]
        w_kv = self.kv_b_proj.weight.view(h, self.nope + self.v_dim, self.kv_rank)
        w_uk, w_uv = w_kv[:, : self.nope], w_kv[:, self.nope :]
        q_latent = torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)
        scores = torch.baddbmm(
            torch.bmm(q_pe.reshape(b, h * t, self.rope), pe_all.transpose(1, 2)),
            q_latent.reshape(b, h * t, self.kv_rank),
            c_all.transpose(1, 2),
        ).view(b, h, t, end)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = (scores * self.scale).softmax(dim=-1, dtype=torch.float32).to(c_all.dtype)
        out_latent = torch.bmm(probs.view(b, h * t, end), c_all).view(b, h, t, self.kv_rank)
        return torch.einsum("bhtc,hdc->bhtd", out_latent, w_uv)

    def decode_step(self, x, cos, sin, slot, index, mask, end=None, qkv=None):
        """One-token decode over the latent cache (absorbed path): x (B, 1, D) -> (B, 1, D).

        Same contract as ``Attention.decode_step``: the latent and roped key are written at slot ``index``
        ((1,) long tensor) with ``index_put_``; attention runs over the whole cache (``end`` None, ``mask``
        (B, 1, 1, L)) or its first ``end`` slots. ``qkv`` is unused (MLA has no fused projection).
        """
        b, h = x.shape[0], self.n_heads
        q = self._query(x).view(b, 1, h, self.nope + self.rope).transpose(1, 2)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_rank, self.rope], dim=-1)
        q_pe = apply_rope(q_pe, cos, sin, self.interleave)
        k_pe = apply_rope(k_pe[:, None], cos, sin, self.interleave)[:, 0]  # (B, 1, R)
        slot["c_kv"][:, index] = self.kv_a_layernorm(c_kv).to(
            slot["c_kv"].dtype
        )  # autocast: cache dtype kept
        slot["k_pe"][:, index] = k_pe.to(slot["k_pe"].dtype)
        c_all, pe_all = slot["c_kv"], slot["k_pe"]
        if end is not None:
            c_all, pe_all = c_all[:, :end], pe_all[:, :end]
        out = self._latent_attend(q_nope, q_pe, c_all, pe_all, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, 1, h * self.v_dim))


class KVCache:
    """Preallocated per-layer cache for incremental decoding (see docs/INTERFACES.md).

    ``layers[i]`` is the dict of tensors of main block i (shapes from its attention's ``cache_shapes``),
    ``mtp_layers[j]`` the slot of MTP block j. ``length`` counts positions written by the main model,
    ``mtp_length`` those written by the MTP block (it lags or matches the main model during drafting).
    """

    def __init__(
        self, layers: list[dict[str, torch.Tensor]], mtp_layers: list[dict[str, torch.Tensor]], max_len: int
    ):
        self.layers = layers
        self.mtp_layers = mtp_layers
        self.max_len = max_len
        self.length = 0
        self.mtp_length = 0

    @property
    def batch_size(self) -> int:
        """Rows currently held."""
        return next(iter(self.layers[0].values())).shape[0]

    def check_room(self, start: int, new: int) -> None:
        """Raise if writing ``new`` positions at ``start`` would overflow ``max_len``."""
        if start + new > self.max_len:
            raise ValueError(f"KV cache full: {start} + {new} positions > max_len {self.max_len}")

    def reorder(self, index: torch.Tensor) -> None:
        """Keep/repeat rows: ``index`` (B',) long selects rows of every cached tensor (fan-out, dropping rows)."""
        for slot in (*self.layers, *self.mtp_layers):
            for name, tensor in slot.items():
                slot[name] = tensor.index_select(0, index.to(tensor.device))

    # dimension of the slot (position) axis of each cached tensor
    SLOT_DIMS = {"k": 2, "v": 2, "c_kv": 1, "k_pe": 1}

    @classmethod
    def concat_aligned(cls, parts: list[tuple[KVCache, int]], length: int, max_len: int) -> KVCache:
        """Stack the rows of several caches into a new one whose positions end together (continuous batching).

        Args:
            parts: ``(cache, first)`` or ``(cache, first, rows)`` tuples; slots ``[first, cache.length)`` of the
                rows ``rows`` ((n,) long index; default all) of ``cache`` are copied so that they end at slot
                ``length`` of the new cache (slots before them are zero: the caller masks them as padding).
                Rows come in the order of ``parts``.
            length: the new cache's ``length``; must be >= ``cache.length - first`` for every part.
            max_len: the new cache's capacity.
        Returns:
            a new ``KVCache`` (batch = sum of the parts' rows). MTP slots are not carried over
            (``mtp_length`` = 0): speculative decoding does not mix with admitting rows.
        """
        if not parts:
            raise ValueError("concat_aligned needs at least one cache")
        parts = [(p[0], p[1], p[2] if len(p) > 2 else None) for p in parts]
        for cache, first, _ in parts:
            if not 0 <= first <= cache.length or cache.length - first > length:
                raise ValueError(
                    f"cannot place slots [{first}, {cache.length}) to end at {length} (max_len {max_len})"
                )
        if length > max_len:
            raise ValueError(f"length {length} > max_len {max_len}")
        ref = parts[0][0]
        counts = [cache.batch_size if idx is None else len(idx) for cache, _, idx in parts]

        def merged(slots: list[dict[str, torch.Tensor]], copy: bool) -> dict[str, torch.Tensor]:
            out = {}
            for name, tensor in slots[0].items():
                dim = cls.SLOT_DIMS[name]
                shape = list(tensor.shape)
                shape[0], shape[dim] = sum(counts), max_len
                dest = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
                if copy:
                    row = 0
                    for (cache, first, idx), n, slot in zip(parts, counts, slots):
                        span = cache.length - first
                        src = slot[name].narrow(dim, first, span)
                        if idx is not None:
                            src = src.index_select(0, idx.to(src.device))
                        dest[row : row + n].narrow(dim, length - span, span).copy_(src)
                        row += n
                out[name] = dest
            return out

        layers = [merged([p[0].layers[i] for p in parts], True) for i in range(len(ref.layers))]
        mtp = [merged([p[0].mtp_layers[i] for p in parts], False) for i in range(len(ref.mtp_layers))]
        new = cls(layers, mtp, max_len)
        new.length = length
        return new

    def truncate(self, length: int) -> None:
        """Roll back to ``length`` positions (speculative-decoding rejects); later writes overwrite the rest."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length
        self.mtp_length = min(self.mtp_length, length)
