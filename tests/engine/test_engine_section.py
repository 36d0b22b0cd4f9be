"""[engine]: the decode settings in every stage's TOML, validated, and handed to the Engine."""

from __future__ import annotations

import pytest
import torch

from r1kit.config import ConfigError, load_config
from r1kit.engine import SamplingParams
from r1kit.model import ModelConfig, Transformer
from r1kit.train.sections import EngineSection

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2)


def _model() -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny-llama", **TINY, num_attention_heads=4, num_key_value_heads=2)
    return Transformer(cfg).eval()


@pytest.mark.parametrize(
    "bad", [{"compile": "fast"}, {"head_dtype": "fp8"}, {"fuse_weights": "yes"}, {"compact_fraction": 1.5}]
)
def test_bad_engine_settings_are_one_line_config_errors(bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=f"engine.{key}"):
        EngineSection(**bad)


def test_build_hands_every_setting_to_the_engine():
    model = _model()
    default = EngineSection().build(model)
    assert default.compact_fraction == 0.125 and default.decoder.weights.head_dtype == "model"
    assert default.decoder.weights.fuse is False  # "auto": fused copies on CUDA only
    engine = EngineSection(compile="off", head_dtype="bf16", fuse_weights="on", compact_fraction=0.5).build(
        model
    )
    assert engine.decoder.compile == "off" and engine.decoder.weights.head_dtype == "bf16"
    assert engine.decoder.weights.fuse is True and engine.compact_fraction == 0.5


def test_fused_decode_gives_the_default_greedy_tokens():
    model = _model()
    prompts = [[1, 5, 9, 3], [2, 7]]
    params = SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)
    plain = EngineSection(compile="off").build(model).generate(prompts, params)
    fused = EngineSection(compile="off", fuse_weights="on").build(model).generate(prompts, params)
    assert [c.token_ids for c in fused] == [c.token_ids for c in plain]


def test_every_generating_stage_reads_engine_from_its_toml(tmp_path):
    from r1kit import distill, evaluate, expert_iteration, serve
    from r1kit.rl import grpo

    toml = tmp_path / "c.toml"
    toml.write_text('[engine]\ncompile = "off"\nhead_dtype = "bf16"\nfuse_weights = "on"\n')
    for cls in (grpo.Config, evaluate.Config, distill.Config, expert_iteration.Config, serve.Config):
        extra = ["--ei.rounds", "1"] if cls is expert_iteration.Config else []  # its one required key
        cfg = load_config(cls, toml, ["--engine.compact_fraction", "0.25", *extra])
        assert cfg.engine == EngineSection("off", "bf16", "on", 0.25), cls
    with pytest.raises(ConfigError, match="engine.compile"):
        load_config(grpo.Config, None, ["--engine.compile", "always"])
