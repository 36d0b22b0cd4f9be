"""r1kit.model: one Transformer for Llama, Qwen2, Qwen3 and DeepSeek-V3 (MLA, DeepSeekMoE, MTP).

Map of the package:
    config.py       ModelConfig (documented, grouped by subsystem) <-> HF config.json, presets
    layers.py       RMSNorm, rotary embedding (linear / llama3 / yarn scaling), SwiGLU MLP
    attention.py    GQA attention, MLA attention (naive + absorbed), KVCache, mask construction
    moe.py          Gate (bias selects, never weights), grouped expert dispatch, balance-bias update
    transformer.py  Block, MTPBlock, Transformer
    hf.py           from_pretrained / save_pretrained (safetensors, sharded index, key maps)
    counting.py     parameters, active parameters, FLOPs per token
"""

from r1kit.model.attention import KVCache
from r1kit.model.config import PRESETS, ModelConfig
from r1kit.model.transformer import Transformer

__all__ = ["PRESETS", "KVCache", "ModelConfig", "Transformer"]
