"""ModelConfig: one documented dataclass for every family r1kit runs, and its Hugging Face mapping.

The HF ``config.json`` is the interchange format (Hugging Face transformers' `DeepseekV3Config`).
``from_hf_dict`` / ``to_hf_dict`` are the only
places that know HF key names; the rest of r1kit reads ``ModelConfig`` fields.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

FAMILIES = ("llama", "qwen2", "qwen3", "deepseek_v3")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}

# HF key -> ModelConfig field, shared by every family. Family-specific keys are listed below.
_HF_COMMON = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "intermediate_size": "intermediate_size",
    "rms_norm_eps": "rms_norm_eps",
    "tie_word_embeddings": "tie_word_embeddings",
    "max_position_embeddings": "max_position_embeddings",
    "initializer_range": "initializer_range",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
}
_HF_FAMILY = {
    "llama": {"head_dim": "head_dim", "attention_bias": "attention_bias", "mlp_bias": "mlp_bias"},
    "qwen2": {"head_dim": "head_dim"},
    "qwen3": {"head_dim": "head_dim", "attention_bias": "attention_bias"},
    "deepseek_v3": {
        "attention_bias": "attention_bias",
        "rope_interleave": "rope_interleave",
        "q_lora_rank": "q_lora_rank",
        "kv_lora_rank": "kv_lora_rank",
        "qk_nope_head_dim": "qk_nope_head_dim",
        "qk_rope_head_dim": "qk_rope_head_dim",
        "v_head_dim": "v_head_dim",
        "n_routed_experts": "n_routed_experts",
        "n_shared_experts": "n_shared_experts",
        "num_experts_per_tok": "num_experts_per_tok",
        "moe_intermediate_size": "moe_intermediate_size",
        "first_k_dense_replace": "first_k_dense_replace",
        "routed_scaling_factor": "routed_scaling_factor",
        "n_group": "n_group",
        "topk_group": "topk_group",
        "norm_topk_prob": "norm_topk_prob",
        "num_nextn_predict_layers": "num_mtp_layers",
        "num_mtp_layers": "num_mtp_layers",
    },
}
# Keys that carry no numerics we model (bookkeeping, training-only, or derived): read and dropped.
_HF_IGNORED = {
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "use_cache",
    "attention_dropout", "pretraining_tp", "output_router_logits", "router_aux_loss_coef", "aux_loss_alpha",
    "seq_aux", "qk_head_dim", "max_window_layers", "sliding_window", "layer_types", "auto_map", "ep_size",
    "moe_layer_freq", "hidden_act", "use_sliding_window", "scoring_func", "topk_method", "rope_theta",
    "rope_scaling", "rope_parameters", "num_experts", "partial_rotary_factor", "generation_config",
    "_name_or_path", "id2label", "label2id", "tokenizer_class", "rope_type", "head_dim",
}  # fmt: skip


@dataclass
class ModelConfig:
    """Architecture of a decoder-only transformer: Llama, Qwen2, Qwen3 or DeepSeek-V3.

    Core:
        family: one of ``FAMILIES``; picks attention (GQA or MLA) and the HF ``model_type``.
        vocab_size: number of token ids V.
        hidden_size: model width D.
        num_hidden_layers: number of transformer blocks L (MTP blocks not included).
        intermediate_size: hidden width of the dense SwiGLU MLP.
        rms_norm_eps: epsilon inside every RMSNorm.
        tie_word_embeddings: share the input embedding and the output head.
        max_position_embeddings: longest context the rope settings are meant for (informative, not enforced).
        initializer_range: std of the normal init of weight matrices.
        bos_token_id / eos_token_id / pad_token_id: carried to and from config.json, unused by the model.
    Attention / GQA (llama, qwen2, qwen3; MLA ignores head_dim and the bias flags):
        num_attention_heads: query heads H.
        num_key_value_heads: key/value heads (H // this = queries per KV head); MLA uses H for both.
        head_dim: per-head width; None means hidden_size // num_attention_heads (filled in at construction).
        attention_bias: bias on q, k, v and o projections (Llama/Qwen3 ``attention_bias``).
        qkv_bias: bias on q, k, v only (Qwen2 always has it).
        mlp_bias: bias in the dense MLP projections (Llama ``mlp_bias``).
        qk_norm: per-head RMSNorm on queries and keys before rope (Qwen3).
    Rope:
        rope_theta: rotary base.
        rope_scaling: None, or the HF ``rope_parameters`` minus ``rope_theta``: ``{"rope_type": "linear" |
            "llama3" | "yarn", "factor": ..., ...}`` with the keys transformers uses for that type.
        rope_interleave: DeepSeek checkpoints store rope dims as interleaved pairs (HF ``rope_interleave``).
    MLA (deepseek_v3):
        q_lora_rank: query latent width d'_c; None (or 0) means a plain ``q_proj``.
        kv_lora_rank: key/value latent width d_c (what the cache holds, with the rope key).
        qk_nope_head_dim / qk_rope_head_dim: per-head query/key width without / with rope.
        v_head_dim: per-head value width.
    MoE (deepseek_v3; ``n_routed_experts == 0`` means dense everywhere):
        n_routed_experts: routed experts per MoE layer E.
        n_shared_experts: always-on experts, fused into one MLP of width n_shared * moe_intermediate_size.
        num_experts_per_tok: routed experts per token k.
        moe_intermediate_size: hidden width of one expert F.
        first_k_dense_replace: the first this-many layers use the dense MLP.
        routed_scaling_factor: multiplies the routed weights (route_scale).
        n_group / topk_group: group-limited routing; keep the topk_group groups with the best top-2 sum.
        norm_topk_prob: normalise the k chosen sigmoid scores to sum 1 before scaling.
    MTP:
        num_mtp_layers: 0, or 1 for one multi-token-prediction block predicting token t+2.
    """

    # --- core ---
    family: str = "llama"
    vocab_size: int = 128
    hidden_size: int = 128
    num_hidden_layers: int = 4
    intermediate_size: int = 512
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    # --- attention / GQA ---
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    attention_bias: bool = False
    qkv_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    # --- rope ---
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rope_interleave: bool = False
    # --- MLA ---
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # --- MoE ---
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    first_k_dense_replace: int = 0
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    # --- MTP ---
    num_mtp_layers: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; supported: {', '.join(FAMILIES)}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and not self.is_mla:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.q_lora_rank == 0:
            self.q_lora_rank = None
        if self.n_group is None:
            self.n_group = 1
        if self.topk_group is None:
            self.topk_group = self.n_group
        if self.rope_scaling is not None:
            self.rope_scaling = dict(self.rope_scaling)
            rope_type = self.rope_scaling.setdefault("rope_type", self.rope_scaling.pop("type", "default"))
            if rope_type not in ROPE_TYPES:
                raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
            if rope_type == "default":
                self.rope_scaling = None
            elif rope_type in ("llama3", "yarn"):
                # transformers' standardize_rope_params default
                self.rope_scaling.setdefault("original_max_position_embeddings", self.max_position_embeddings)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.is_mla and not (self.kv_lora_rank and self.qk_rope_head_dim and self.v_head_dim):
            raise ValueError("deepseek_v3 needs kv_lora_rank, qk_rope_head_dim and v_head_dim > 0")
        if self.is_moe:
            if not 0 < self.num_experts_per_tok <= self.n_routed_experts:
                raise ValueError(f"num_experts_per_tok must be in 1..{self.n_routed_experts}")
            if self.n_routed_experts % self.n_group or not 0 < self.topk_group <= self.n_group:
                raise ValueError(
                    f"n_group={self.n_group} must divide n_routed_experts={self.n_routed_experts} "
                    f"and 0 < topk_group={self.topk_group} <= n_group"
                )
            per_group = self.n_routed_experts // self.n_group
            if self.n_group > 1 and per_group < 2:
                raise ValueError(
                    "group-limited routing scores groups by their top-2: need >= 2 experts per group"
                )
        if self.num_mtp_layers not in (0, 1):
            raise ValueError(f"num_mtp_layers must be 0 or 1, got {self.num_mtp_layers}")

    # --- derived sizes ---
    @property
    def is_mla(self) -> bool:
        """True for DeepSeek-V3 multi-head latent attention."""
        return self.family == "deepseek_v3"

    @property
    def is_moe(self) -> bool:
        """True when some layers route tokens to experts."""
        return self.n_routed_experts > 0

    @property
    def attn_head_dim(self) -> int:
        """GQA per-head width (explicit ``head_dim`` or D / H)."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def qk_head_dim(self) -> int:
        """Width of a query/key head: MLA nope + rope, else the GQA head_dim."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.attn_head_dim

    @property
    def value_head_dim(self) -> int:
        """Width of a value head."""
        return self.v_head_dim if self.is_mla else self.attn_head_dim

    @property
    def rope_dim(self) -> int:
        """How many dims of each query/key head rotate."""
        return self.qk_rope_head_dim if self.is_mla else self.attn_head_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether block ``layer_idx`` (MTP blocks count as index >= num_hidden_layers) uses MoE."""
        return self.is_moe and layer_idx >= self.first_k_dense_replace

    def softmax_scale(self) -> float:
        """Attention logit scale: 1/sqrt(qk_head_dim), times yarn mscale^2 for MLA (HF ``yarn_apply_mscale``)."""
        scale = self.qk_head_dim**-0.5
        rs = self.rope_scaling
        if self.is_mla and rs is not None and rs.get("mscale_all_dim"):
            factor = rs["factor"]
            if factor > 1:
                mscale = 0.1 * rs["mscale_all_dim"] * math.log(factor) + 1.0
                scale = scale * mscale * mscale
        return scale

    # --- presets ---
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named demo-size config, e.g. ``ModelConfig.preset("tiny-v3", vocab_size=512)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict of field values (e.g. a TOML table); unknown keys fail naming the valid ones."""
        unknown = sorted(set(d) - set(config_fields()))
        if unknown:
            raise ValueError(
                f"unknown ModelConfig keys: {', '.join(unknown)}; valid keys: {', '.join(config_fields())}"
            )
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (inverse of ``from_dict``)."""
        return dataclasses.asdict(self)

    # --- Hugging Face config.json ---
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a parsed HF ``config.json``; accepts v5 ``rope_parameters`` and legacy ``rope_scaling``.

        Raises ValueError for an unsupported ``model_type`` or settings r1kit does not implement
        (quantisation, sliding windows, non-SiLU activations, softmax routing). Unknown keys that are not in
        the explicit ignore list produce one warning naming them.
        """
        family = d.get("model_type")
        if family not in FAMILIES:
            raise ValueError(
                f"unsupported model_type {family!r} in config.json; supported: {', '.join(FAMILIES)}"
            )
        _reject_unsupported(d)
        mapping = {**_HF_COMMON, **_HF_FAMILY[family]}
        kwargs: dict[str, Any] = {"family": family}
        for hf_key, ours in mapping.items():
            if hf_key in d and d[hf_key] is not None:
                kwargs[ours] = d[hf_key]
        for hf_key in ("bos_token_id", "eos_token_id", "pad_token_id", "q_lora_rank"):
            if hf_key in mapping and hf_key in d:
                kwargs[mapping[hf_key]] = d[hf_key]  # None is meaningful here
        if family == "qwen2":
            kwargs["qkv_bias"] = True
        if family == "qwen3":
            kwargs["qk_norm"] = True
        if family == "deepseek_v3":
            # HF DeepseekV3Config fields default to V3 values; fill the ones a minimal config.json may omit
            kwargs.setdefault("rope_interleave", True)
            kwargs.setdefault("n_group", 1)
            kwargs.setdefault("topk_group", kwargs["n_group"])
        theta, scaling = _read_rope(d)
        kwargs["rope_theta"] = theta
        kwargs["rope_scaling"] = scaling
        unknown = sorted(set(d) - set(mapping) - _HF_IGNORED)
        if unknown:
            warnings.warn(f"config.json keys ignored by r1kit: {', '.join(unknown)}", stacklevel=2)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` dict (transformers-v5 style ``rope_parameters``) for this config."""
        d: dict[str, Any] = {"architectures": [_ARCHITECTURES[self.family]], "model_type": self.family}
        for hf_key, ours in {**_HF_COMMON, **_HF_FAMILY[self.family]}.items():
            if hf_key == "num_mtp_layers":
                continue  # written once, as num_nextn_predict_layers (the DeepSeek release name)
            d[hf_key] = getattr(self, ours)
        d["hidden_act"] = "silu"
        d["rope_parameters"] = {
            "rope_type": "default",
            **(self.rope_scaling or {}),
            "rope_theta": self.rope_theta,
        }
        if not self.is_mla:
            d["head_dim"] = self.attn_head_dim  # explicit: transformers reads None literally
        if self.family in ("qwen2", "qwen3"):
            d["use_sliding_window"] = False
        if self.family == "deepseek_v3":
            d["scoring_func"] = "sigmoid"
            d["topk_method"] = "noaux_tc"
        return d


def _read_rope(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling dict or None) from v5 ``rope_parameters`` or legacy ``rope_theta``/``rope_scaling``."""
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    params = dict(params)
    if params and all(isinstance(v, dict) for v in params.values()):
        raise ValueError("per-layer-type rope_parameters are not supported")
    theta = params.pop("rope_theta", None) or d.get("rope_theta") or 10000.0
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    params.pop("type", None)
    if params.get("partial_rotary_factor", 1.0) != 1.0 or d.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    params.pop("partial_rotary_factor", None)
    if d.get("original_max_position_embeddings") and params:
        params.setdefault("original_max_position_embeddings", d["original_max_position_embeddings"])
    if params.get("rope_type", "default") == "default":
        return float(theta), None
    return float(theta), params


def _reject_unsupported(d: dict[str, Any]) -> None:
    """Fail loudly on config.json settings that would change numerics r1kit does not implement."""
    problems = []
    if d.get("quantization_config"):
        problems.append("quantization_config (dequantise the checkpoint first)")
    if d.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={d['hidden_act']!r} (only silu)")
    if d.get("use_sliding_window"):
        problems.append("use_sliding_window=true")
    if d.get("scoring_func", "sigmoid") != "sigmoid":
        problems.append(f"scoring_func={d['scoring_func']!r} (only sigmoid)")
    if d.get("topk_method", "noaux_tc") != "noaux_tc":
        problems.append(f"topk_method={d['topk_method']!r} (only noaux_tc)")
    if d.get("moe_layer_freq", 1) != 1:
        problems.append(
            f"moe_layer_freq={d['moe_layer_freq']} (only 1: every layer after the dense ones is MoE)"
        )
    if d.get("layer_types") and any(t != "full_attention" for t in d["layer_types"]):
        problems.append("layer_types other than full_attention")
    if problems:
        raise ValueError(f"config.json uses settings r1kit does not support: {'; '.join(problems)}")


def config_fields() -> list[str]:
    """Names of every ModelConfig field (for error messages and config overrides)."""
    return [f.name for f in dataclasses.fields(ModelConfig)]


PRESETS: dict[str, dict[str, Any]] = {
    # ~1.0M parameters. Llama's MLP rule (8/3 * D rounded up to a multiple of 256) gives 512 for D = 128;
    # tied embeddings as in Llama-3.2-1B because at this size the 16k-parameter table matters.
    "tiny-llama": dict(
        family="llama",
        vocab_size=128,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        max_position_embeddings=1024,
    ),
    # ~1.5M parameters total, ~0.9M active: DeepSeek-V3's shapes scaled to D = 128.
    # V3 ratios: rope dim = half the nope dim (64/128), v dim = nope dim, kv latent = 4 nope heads (512),
    # q latent ~ 0.21 D (1536/7168), expert width ~ D/3.5 (2048/7168), dense MLP ~ 2.6 D (18432/7168),
    # route_scale 2.5, 1 shared expert, top-8 of 256 in 8 groups with 4 kept -> here top-2 of 8 in 4 groups
    # with 2 kept, 1 dense layer first (V3 has 3 of 61), MTP depth 1.
    "tiny-v3": dict(
        family="deepseek_v3",
        vocab_size=128,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=320,
        q_lora_rank=32,
        kv_lora_rank=64,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        rope_interleave=True,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        moe_intermediate_size=64,
        first_k_dense_replace=1,
        routed_scaling_factor=2.5,
        n_group=4,
        topk_group=2,
        norm_topk_prob=True,
        num_mtp_layers=1,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        max_position_embeddings=1024,
    ),
}

__all__ = ["FAMILIES", "PRESETS", "ModelConfig", "config_fields"]
