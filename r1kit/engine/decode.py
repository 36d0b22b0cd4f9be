"""The engine's one-token decode step: decode-time fused weights, the static-shape step, and when to compile it.

`DecodeStep` runs `Transformer.decode_step` (the gpt-fast recipe: the cache slot and the positions are
tensors, the cache is written with `index_put_`, packed GQA, fused q/k/v and gate/up weights), eagerly or
through `torch.compile`. On CUDA the compiled step attends over the whole preallocated cache with a mask,
so its shapes never change (what CUDA graphs need); on CPU it is compiled with dynamic shapes and attends
over the slots written so far (whole-cache attention measured ~2x slower there), one graph for every batch
size, cache length and slot. The eager step attends over the slots written so far.

Fused weights (on CUDA by default) are copies made for decoding, keyed by the version counters of the weights they come from
(`Tensor._version`, bumped by every in-place update: an optimizer step, `load_state_dict`), so a GRPO
policy update is seen at the next call and an unchanged model is not copied again. A projection that is
not a plain `nn.Linear` (a LoRA wrapper, a quantised layer) is left unfused: that block runs its own
modules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from r1kit.config import ConfigError

COMPILE_CHOICES = ("auto", "on", "off")
HEAD_DTYPES = ("model", "bf16")


def _plain(*modules) -> bool:
    """Whether every module is exactly `nn.Linear` (not a subclass such as a LoRA wrapper)."""
    return all(type(m) is nn.Linear for m in modules)


def _fuse(*linears: nn.Linear) -> tuple[Tensor, Tensor | None] | None:
    """(weight, bias) of the output-concatenation of `linears`, or None when their biases do not agree."""
    biases = [m.bias for m in linears]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return None
    weight = torch.cat([m.weight.detach() for m in linears])
    bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    return weight, bias


class DecodeWeights:
    """Decode-time copies of a `Transformer`'s weights: fused q/k/v and gate/up per block, optional head copy.

    `get()` returns `(fused, head)` for `Transformer.decode_step`, rebuilt only when a source weight changed
    (identity, storage or version counter) since the last call.

    Args:
        model: the `Transformer`.
        head_dtype: "model" (use `lm_head` as it is) or "bf16" (a bf16 copy of the head matrix: on CPUs with
            AMX-BF16 a (B, D) x (D, V) bf16 matmul runs ~3.6x faster than fp32; logits are rounded to bf16
            precision, so near-ties may pick another greedy token: opt-in).
        fuse: build the fused q/k/v and gate/up copies (False: `get()` returns no fused weights).
    """

    def __init__(self, model, head_dtype: str = "model", fuse: bool = True):
        if head_dtype not in HEAD_DTYPES:
            raise ConfigError(f"head_dtype must be one of {', '.join(HEAD_DTYPES)}; got {head_dtype!r}")
        self.model, self.head_dtype, self.fuse = model, head_dtype, fuse
        self._key = None
        self._value: tuple[list[dict], Tensor | None] = ([], None)
        self.builds = 0  # how many times the copies were (re)built

    def _sources(self) -> list[Tensor]:
        out = []
        for block in self.model.model.layers if self.fuse else ():
            for m in (*self._attn_parts(block), *self._mlp_parts(block)):
                out.append(m.weight)
                if m.bias is not None:
                    out.append(m.bias)
        if self.head_dtype != "model":
            out.append(self.model.lm_head.weight)
        return out

    @staticmethod
    def _attn_parts(block) -> tuple:
        a = block.self_attn
        parts = tuple(getattr(a, n, None) for n in ("q_proj", "k_proj", "v_proj"))
        return parts if hasattr(a, "n_kv_heads") and _plain(*parts) else ()

    @staticmethod
    def _mlp_parts(block) -> tuple:
        m = block.mlp
        parts = tuple(getattr(m, n, None) for n in ("gate_proj", "up_proj"))
        return parts if hasattr(m, "decode_step") and _plain(*parts) else ()

    def get(self) -> tuple[list[dict], Tensor | None]:
        """(per-block fused weights, head copy or None), current with the model's weights."""
        key = tuple((id(t), t.data_ptr(), t._version) for t in self._sources())
        if key != self._key:
            with torch.no_grad():
                fused = []
                for block in self.model.model.layers if self.fuse else ():
                    f = {}
                    attn, mlp = self._attn_parts(block), self._mlp_parts(block)
                    if attn and (qkv := _fuse(*attn)) is not None:
                        f["qkv"] = qkv
                    if mlp and (gate_up := _fuse(*mlp)) is not None:
                        f["gate_up"] = gate_up
                    fused.append(f)
                head = None
                if self.head_dtype == "bf16" and self.model.lm_head.weight.dtype != torch.bfloat16:
                    head = self.model.lm_head.weight.detach().to(torch.bfloat16)
            self._key, self._value = key, (fused, head)
            self.builds += 1
        return self._value


class DecodeStep:
    """The one-token decode step of an `Engine` over r1kit's `Transformer` and `KVCache`.

    Args:
        model: a `Transformer` (anything else keeps the engine on `model.forward`; see `supports`).
        compile: "off" (eager), "on" (always `torch.compile` the step) or "auto" (compile once this
            engine has decoded `compile_after` row-steps, i.e. once it is clearly a repeated workload
            such as GRPO or an evaluation: compiling costs seconds, a one-off call does not earn it back).
            MoE models stay eager under "auto" (their token dispatch is data-dependent).
        head_dtype: see `DecodeWeights`.
        fuse_weights: decode with fused q/k/v and gate/up copies. None = on CUDA only: on this CPU they
            measured within 1% of the separate matmuls (eager and compiled) while costing a copy of those
            weights (~0.9 GB fp32 for a 24-layer 0.5B model); on a GPU one wider matmul per block is the
            gpt-fast layout.
        compile_after: row-steps (rows x steps) decoded eagerly before "auto" compiles.

    Attributes:
        weights: the `DecodeWeights`.
        eager_row_steps: row-steps decoded so far (what "auto" counts).
        compiled_calls: steps that ran the compiled graph.
    """

    def __init__(
        self,
        model,
        compile: str = "auto",
        head_dtype: str = "model",
        compile_after: int = 2_000_000,
        fuse_weights: bool | None = None,
    ):
        if compile not in COMPILE_CHOICES:
            raise ConfigError(f"compile must be one of {', '.join(COMPILE_CHOICES)}; got {compile!r}")
        self.model, self.compile, self.compile_after = model, compile, compile_after
        if fuse_weights is None:
            fuse_weights = next(model.parameters()).device.type == "cuda"
        self.weights = DecodeWeights(model, head_dtype, fuse_weights)
        self.eager_row_steps = 0
        self.compiled_calls = 0
        self._compiled = None
        self._cuda = False
        self._fused: tuple[list[dict], Tensor | None] = ([], None)

    @staticmethod
    def supports(model) -> bool:
        """Whether `model` is r1kit's `Transformer` (the one that has `decode_step`)."""
        from r1kit.model.transformer import Transformer

        return isinstance(model, Transformer)

    def begin(self) -> None:
        """Pick up the model's current weights (call once per generation call, before its steps)."""
        self._fused = self.weights.get()

    def use_compiled(self) -> bool:
        """Whether the next step runs compiled (policy of `compile`)."""
        if self.compile == "off":
            return False
        if self.compile == "on" or self._compiled is not None:
            return True
        if self.model.moe_layers():
            return False
        return self.eager_row_steps >= self.compile_after

    def __call__(self, tokens: Tensor, positions: Tensor, attn: Tensor | None, cache) -> Tensor:
        """Logits (B, V) of `tokens` (B,) at `positions` (B,), written at slot `cache.length` (then advanced).

        `attn` (B, cache.max_len) is the padding mask (1 = real token) or None when no row is padded.
        """
        length = cache.length
        cache.check_room(length, 1)
        index = torch.full((1,), length, dtype=torch.long, device=tokens.device)
        fused, head = self._fused
        if self.use_compiled():
            if self._compiled is None:
                self._compiled = self._build_compiled()
            if attn is None:  # one graph whether or not the call has padding
                attn = torch.ones((tokens.shape[0], cache.max_len), dtype=torch.long, device=tokens.device)
            if tokens._base is not None:  # one graph whether the sampler's tokens are a view or not: dynamo
                tokens = tokens.clone()  # guards a view's base, so greedy after sampling would recompile
            args = (tokens, positions, index, attn, cache.layers, fused or None, head)
            # CPU: the slots written so far (a dynamic size); CUDA: the whole cache (no int argument at all)
            logits = self._compiled(*args) if self._cuda else self._compiled(*args, length + 1)
            self.compiled_calls += 1
        else:
            end = length + 1
            key_mask = None if attn is None else attn[:, :end] != 0
            logits = self.model.decode_step(
                tokens, positions, index, key_mask, cache.layers, end, fused or None, head
            )
            self.eager_row_steps += tokens.shape[0]
        cache.length = length + 1
        return logits

    def _build_compiled(self):
        """`torch.compile` of the step: one graph for every batch size, cache length and slot.

        CPU: dynamic shapes, attention over the slots written so far (attention is a large part of a small
        model's step; attending over the whole cache measured ~2x slower there). CUDA: static shapes,
        attention over the whole cache with a mask, captured in CUDA graphs (`reduce-overhead`). Not yet run
        on a GPU: where inductor declines the capture (the cache is an input mutated in place; it then logs
        "skipping cudagraphs"), the step still runs compiled, without graphs.
        """
        model = self.model
        self._cuda = cuda = next(model.parameters()).device.type == "cuda"

        def step(tokens, positions, index, attn, layers, fused, head, end=None):
            if end is None:  # static shapes: the whole cache, unwritten slots and padding masked
                first = next(iter(layers[0].values()))
                slots = first.shape[2] if "k" in layers[0] else first.shape[1]
                key_mask = (torch.arange(slots, device=tokens.device)[None, :] <= index) & (attn != 0)
                return model.decode_step(
                    tokens, positions, index, key_mask, layers, None, fused, head
                ).clone()
            key_mask = attn[:, :end] != 0
            return model.decode_step(tokens, positions, index, key_mask, layers, end, fused, head)

        if cuda:
            return torch.compile(step, mode="reduce-overhead", dynamic=False)
        return torch.compile(step, dynamic=True)
