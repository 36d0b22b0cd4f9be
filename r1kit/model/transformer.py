"""Block, MTP block and the one Transformer class used by every family (Llama, Qwen2, Qwen3, DeepSeek-V3).

Parameter names are Hugging Face's (``model.embed_tokens``, ``model.layers.N.self_attn.q_proj``, ...), so a
checkpoint maps by name. Two exceptions, translated in ``hf.py``: routed experts are stacked tensors
(``mlp.experts.gate_up_proj`` (E, 2F, D), ``mlp.experts.down_proj`` (E, D, F)) and the MTP block lives at
``mtp.0.*`` instead of ``model.layers.{num_hidden_layers}.*``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from r1kit.model.attention import Attention, KVCache, MLAttention, attention_mask_4d
from r1kit.model.config import ModelConfig
from r1kit.model.layers import MLP, RMSNorm, RotaryEmbedding
from r1kit.model.moe import Experts, Gate, MoE


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(.)); (B, T, D) -> (B, T, D)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.self_attn = MLAttention(cfg, **kw) if cfg.is_mla else Attention(cfg, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        if cfg.is_moe_layer(layer_idx):
            self.mlp = MoE(cfg, **kw)
        else:
            self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias, **kw)

    def forward(self, x, cos, sin, mask=None, cache_slot=None, start=0):
        """x (B, T, D), cos/sin (B, T, rope_dim), mask (B, 1, T, S) bool or None -> (B, T, D)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_slot, start)
        return x + self.mlp(self.post_attention_layernorm(x))

    def decode_step(self, x, cos, sin, slot, index, mask, end=None, fused=None):
        """One-token decode (B, 1, D) -> (B, 1, D), cache written at slot ``index`` (see
        ``Attention.decode_step``). ``fused``: optional decode-time ``{"qkv": (w, b), "gate_up": (w, b)}``."""
        fused = fused or {}
        x = x + self.self_attn.decode_step(
            self.input_layernorm(x), cos, sin, slot, index, mask, end, fused.get("qkv")
        )
        h = self.post_attention_layernorm(x)
        mlp = self.mlp.decode_step(h, fused["gate_up"]) if "gate_up" in fused else self.mlp(h)
        return x + mlp


class SharedHead(nn.Module):
    """The MTP block's output norm (DeepSeek-V3 ``shared_head.norm``); the head matrix is the model's lm_head."""

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)


class MTPBlock(Block):
    """Multi-token prediction block, depth 1 (DeepSeek-V3 §2.2).

    h' = eh_proj([enorm(Emb(t_{i+1})); hnorm(h_i)]) (2D -> D), then one transformer block, then
    ``shared_head.norm``; the caller applies the shared lm_head. The concatenation order (embedding first)
    is the released checkpoint's (vLLM and transformers' MtpLayer read it that way).
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int, device=None, dtype=None):
        super().__init__(cfg, layer_idx, device, dtype)
        kw = dict(device=device, dtype=dtype)
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False, **kw)
        self.shared_head = SharedHead(cfg, **kw)

    def forward(self, hidden, emb, cos, sin, mask=None, cache_slot=None, start=0):
        """hidden (B, T, D) main-model state at i, emb (B, T, D) embedding of token i+1 -> normed (B, T, D)."""
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(hidden)], dim=-1))
        return self.shared_head.norm(super().forward(x, cos, sin, mask, cache_slot, start))


class Decoder(nn.Module):
    """Embedding, blocks and final norm (HF's ``model.`` prefix)."""

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, device=device, dtype=dtype)
        self.layers = nn.ModuleList(Block(cfg, i, device, dtype) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)


class Transformer(nn.Module):
    """Decoder-only language model for every supported family; training and inference share it.

    ``Transformer(cfg, device=None, dtype=None)`` builds a randomly initialised model (normal(0,
    initializer_range) matrices, unit norms, zero biases). See ``forward`` for the call contract
    (docs/INTERFACES.md).
    """

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg, device, dtype)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device=device, dtype=dtype)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.mtp = nn.ModuleList(
            MTPBlock(cfg, cfg.num_hidden_layers + j, device, dtype) for j in range(cfg.num_mtp_layers)
        )
        self.rotary = RotaryEmbedding(cfg)
        if torch.device(device or "cpu").type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random init: matrices ~ N(0, initializer_range), biases 0, norms 1, routing bias 0."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, Experts):
                module.gate_up_proj.normal_(0.0, std)
                module.down_proj.normal_(0.0, std)
            elif isinstance(module, Gate):
                module.weight.normal_(0.0, std)
                module.e_score_correction_bias.zero_()

    # --- forward ---
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
        return_mtp: bool = False,
        logits_to_keep: int = 0,
    ):
        """Next-token logits.

        Args:
            input_ids: (B, T) long.
            attention_mask: (B, S) with 1 = real token, 0 = padding; S = cache.length + T with a cache, else T.
                Left or right padding both work.
            positions: (B, T) long rope positions; default ``arange(cache.length, cache.length + T)`` per row.
                With left padding pass positions starting at 0 on each row's first real token.
            cache: a ``KVCache`` from ``new_cache``; the T new positions are written at
                [cache.length, cache.length + T) and ``cache.length`` advances by T.
            return_hidden: also return the hidden states after the final norm, (B, T, D).
            return_mtp: also return MTP logits (B, T-1, V): position i predicts token i+2 from h_i and token
                i+1 (needs ``num_mtp_layers == 1``, no cache).
            logits_to_keep: > 0 computes the logits of the last ``logits_to_keep`` positions only (prefill for
                generation needs just the last one); 0 = all T. ``hidden`` is always returned in full.

        Returns:
            logits (B, T, V) in the model dtype, (B, logits_to_keep, V) when ``logits_to_keep > 0``; with flags,
            a tuple ``(logits, hidden?, mtp_logits?)`` in that order.
        """
        b, t = input_ids.shape
        start = 0
        if cache is not None:
            if return_mtp:
                raise ValueError(
                    "return_mtp is for training without a cache; call mtp_logits(..., cache=cache)"
                )
            start = cache.length
            cache.check_room(start, t)
        x, positions, mask, cos, sin = self._embed(input_ids, positions, attention_mask, start)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, None if cache is None else cache.layers[i], start)
        hidden = self.model.norm(x)
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0 (0 = all positions), got {logits_to_keep}")
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        if cache is not None:
            cache.length += t
        outputs = [logits]
        if return_hidden:
            outputs.append(hidden)
        if return_mtp:
            mtp_mask = None if attention_mask is None else attention_mask[:, :-1]
            outputs.append(self.mtp_logits(hidden[:, :-1], input_ids[:, 1:], positions[:, :-1], mtp_mask))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm, (B, T, D), without the head: what the chunked losses
        (``r1kit.rl.losses.head_logprobs``) apply the head to. Arguments as in ``forward``, without a cache."""
        x, positions, mask, cos, sin = self._embed(input_ids, positions, attention_mask, 0)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.model.norm(x)

    def decode_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        index: torch.Tensor,
        key_mask: torch.Tensor | None,
        cache_layers: list[dict[str, torch.Tensor]],
        end: int | None = None,
        fused: list[dict] | None = None,
        head: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits of one new token per row, the static-shape step ``torch.compile`` captures.

        Args:
            tokens: (B,) long, the token of each row at cache slot ``index``.
            positions: (B,) long rope positions.
            index: (1,) long tensor, the cache slot written (every row at the same slot).
            key_mask: (B, S) bool, the keys each row may attend to (S = the cache's ``max_len`` when ``end`` is
                None, else ``end``); None = all of the first ``end`` slots.
            cache_layers: ``KVCache.layers`` (written in place; ``cache.length`` is the caller's to advance).
            end: attend over slots [0, end) only (eager: a Python int is fine there); None = the whole cache.
            fused: per block, optional decode-time fused weights (``Block.decode_step``).
            head: optional decode-time copy of ``lm_head.weight`` (V, D), e.g. in bf16; logits come back in
                the model dtype.
        Returns:
            (B, V) logits. Same numbers as ``forward`` on the same cache up to float rounding.
        """
        x = self.model.embed_tokens(tokens[:, None])
        cos, sin = self.rotary(positions[:, None], x.dtype)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        for i, layer in enumerate(self.model.layers):
            x = layer.decode_step(
                x, cos, sin, cache_layers[i], index, mask, end, None if fused is None else fused[i]
            )
        hidden = self.model.norm(x[:, 0])
        if head is None:
            return self.lm_head(hidden)
        return torch.nn.functional.linear(hidden.to(head.dtype), head).to(hidden.dtype)

    def mtp_logits(
        self,
        hidden: torch.Tensor,
        next_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits for token i+2 from the MTP block: (B, T, V).

        Args:
            hidden: (B, T, D) main-model hidden states h_i as returned by ``return_hidden=True`` (after the final
                norm, the state transformers' MtpModel and vLLM feed to the MTP block).
            next_ids: (B, T) tokens i+1.
            positions: (B, T) rope positions of i; default ``arange(cache.mtp_length, ... + T)``.
            attention_mask: (B, S) padding mask over the MTP block's keys (S = cache.mtp_length + T).
            cache: writes the MTP block's slot at [cache.mtp_length, ... + T) and advances ``cache.mtp_length``.
        """
        if not self.mtp:
            raise ValueError("this model has no MTP block (config.num_mtp_layers == 0)")
        b, t = next_ids.shape
        start = 0 if cache is None else cache.mtp_length
        if cache is not None:
            cache.check_room(start, t)
        emb, positions, mask, cos, sin = self._embed(next_ids, positions, attention_mask, start)
        slot = None if cache is None else cache.mtp_layers[0]
        out = self.mtp[0](hidden, emb, cos, sin, mask, slot, start)
        if cache is not None:
            cache.mtp_length += t
        return self.lm_head(out)

    def _embed(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        start: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """What a block stack needs for ``ids`` (B, T) written at cache slots [start, start + T): the
        embeddings, the rope positions (default ``arange(start, start + T)`` on every row), the 4-D
        attention mask and the rope cos/sin. Shared by :meth:`forward` and :meth:`mtp_logits`."""
        b, t = ids.shape
        if positions is None:
            positions = torch.arange(start, start + t, device=ids.device).expand(b, t)
        mask = attention_mask_4d(attention_mask, b, t, start, ids.device)
        x = self.model.embed_tokens(ids)
        cos, sin = self.rotary(positions, x.dtype)
        return x, positions, mask, cos, sin

    # --- cache ---
    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        """Preallocated KV cache for ``batch_size`` rows of up to ``max_len`` positions (model device/dtype)."""
        ref = self.model.embed_tokens.weight
        device, dtype = device or ref.device, dtype or ref.dtype

        def slot(block: Block) -> dict[str, torch.Tensor]:
            shapes = block.self_attn.cache_shapes(batch_size, max_len)
            return {name: torch.zeros(shape, device=device, dtype=dtype) for name, shape in shapes.items()}

        return KVCache([slot(b) for b in self.model.layers], [slot(b) for b in self.mtp], max_len)

    # --- MoE balancing ---
    def moe_layers(self) -> list[MoE]:
        """MoE modules in order: main blocks, then the MTP block."""
        return [m for m in self.modules() if isinstance(m, MoE)]

    def expert_load(self) -> torch.Tensor:
        """(n_moe_layers, n_routed_experts) long: tokens routed per expert since the last update (training mode).

        Rows follow ``moe_layers()`` (main MoE blocks, then the MTP block's). Empty (0, E) for dense models.
        """
        layers = self.moe_layers()
        if not layers:
            return torch.zeros(0, self.config.n_routed_experts, dtype=torch.long)
        return torch.stack([m.tokens_per_expert.clone() for m in layers])

    def update_moe_bias(self, gamma: float = 1e-3, load: torch.Tensor | None = None) -> None:
        """Aux-loss-free balancing step on every MoE layer (DeepSeek-V3, arXiv 2412.19437); resets the load
        counters.

        b_i -= gamma * sign(load_i - mean(load)). ``load`` (n_moe_layers, E) replaces the local counts, e.g.
        ``expert_load()`` all-reduced across data-parallel ranks.
        """
        for i, moe in enumerate(self.moe_layers()):
            moe.update_bias(gamma, None if load is None else load[i])

    # --- Hugging Face checkpoints ---
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device=None, dtype=None) -> Transformer:
        """Load an HF checkpoint directory (config.json + model.safetensors or a sharded index).

        Supports model_type llama, qwen2, qwen3, deepseek_v3. ``dtype`` None keeps the checkpoint's dtype.
        """
        from r1kit.model.hf import load_pretrained

        return load_pretrained(cls, path, device=device, dtype=dtype)

    def save_pretrained(self, path: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> None:
        """Write config.json + model.safetensors (sharded above ``max_shard_bytes``) that transformers loads."""
        from r1kit.model.hf import save_pretrained

        save_pretrained(self, path, max_shard_bytes=max_shard_bytes)
