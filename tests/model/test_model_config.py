"""ModelConfig: HF config.json both ways (v5 and legacy rope), presets, validation messages."""

import warnings

import pytest
from hf_factory import small_config

from r1kit.model import ModelConfig
from r1kit.model.counting import active_param_count, param_count

# DeepSeek-V3's released config.json (deepseek-ai/DeepSeek-V3), minus quantization_config and auto_map.
V3_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu",
    "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
    "max_position_embeddings": 163840, "model_type": "deepseek_v3", "moe_intermediate_size": 2048,
    "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": True,
    "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-06, "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128, "vocab_size": 129280,
}  # fmt: skip


def test_deepseek_v3_release_config_parses_and_counts_671b_37b():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key of the release is either mapped or knowingly ignored
        cfg = ModelConfig.from_hf_dict(V3_CONFIG)
    assert cfg.rope_scaling["rope_type"] == "yarn" and cfg.rope_theta == 10000.0 and cfg.num_mtp_layers == 1
    # published: 671B total, 37B activated per token, plus 14B in the MTP module
    assert param_count(cfg, include_mtp=False) == pytest.approx(671e9, rel=0.01)
    assert active_param_count(cfg, include_mtp=False) == pytest.approx(37e9, rel=0.03)
    # the release's 14B MTP module includes its own copies of the embedding and head (we share them)
    mtp = param_count(cfg) - param_count(cfg, include_mtp=False) + 2 * cfg.vocab_size * cfg.hidden_size
    assert mtp == pytest.approx(14e9, rel=0.05)


def test_legacy_and_v5_rope_give_the_same_config():
    legacy = {"model_type": "llama", "rope_theta": 500000.0, "max_position_embeddings": 131072,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192}}  # fmt: skip
    v5 = {"model_type": "llama", "max_position_embeddings": 131072,
          "rope_parameters": {**legacy["rope_scaling"], "rope_theta": 500000.0}}  # fmt: skip
    assert ModelConfig.from_hf_dict(legacy) == ModelConfig.from_hf_dict(v5)
    written = ModelConfig.from_hf_dict(legacy).to_hf_dict()
    assert written["rope_parameters"]["rope_theta"] == 500000.0 and "rope_scaling" not in written


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "deepseek_v3"])
def test_hf_dict_round_trip(family):
    cfg = small_config(family)
    assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-v3"])
def test_presets_and_their_sizes(name):
    cfg = ModelConfig.preset(name)
    assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    total = param_count(cfg)
    assert 0.9e6 <= total <= 2e6
    if name == "tiny-v3":
        assert cfg.is_moe and cfg.num_mtp_layers == 1 and cfg.first_k_dense_replace == 1
        assert active_param_count(cfg) < total
    assert ModelConfig.preset(name, vocab_size=512).vocab_size == 512


def test_errors_name_what_was_wrong_and_what_is_valid():
    with pytest.raises(ValueError, match="hiden_size.*valid keys:.*hidden_size"):
        ModelConfig.preset("tiny-llama", hiden_size=64)
    with pytest.raises(ValueError, match="tiny-gpt.*tiny-llama"):
        ModelConfig.preset("tiny-gpt")
    with pytest.raises(TypeError, match="hiden_size"):
        ModelConfig(hiden_size=64)
    with pytest.raises(ValueError, match="unsupported model_type 'mistral'.*deepseek_v3"):
        ModelConfig.from_hf_dict({"model_type": "mistral"})
    with pytest.raises(ValueError, match="quantization_config"):
        ModelConfig.from_hf_dict({**V3_CONFIG, "quantization_config": {"quant_method": "fp8"}})
    with pytest.raises(ValueError, match="family 'gpt'"):
        ModelConfig(family="gpt")
    with pytest.warns(UserWarning, match="brand_new_key"):
        ModelConfig.from_hf_dict({"model_type": "qwen2", "brand_new_key": 1})
