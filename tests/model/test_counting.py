"""Parameter and FLOP counting."""

import pytest
from hf_factory import small_model

from r1kit.model import ModelConfig
from r1kit.model.counting import active_param_count, flops_per_token, param_count


@pytest.mark.parametrize("family", ["llama", "qwen2", "deepseek_v3"])
def test_param_count_is_the_sum_of_numel(family):
    model = small_model(family)
    assert param_count(model) == sum(p.numel() for p in model.parameters())
    assert param_count(model.config) == param_count(model)  # from the config alone (meta device)


def test_active_parameters_of_moe():
    model = small_model("deepseek_v3")
    cfg = model.config
    skipped_per_layer = (
        (cfg.n_routed_experts - cfg.num_experts_per_tok) * 3 * cfg.hidden_size * cfg.moe_intermediate_size
    )
    assert active_param_count(model) == param_count(model) - 3 * skipped_per_layer  # 2 MoE blocks + MTP
    dense = small_model("llama")
    assert active_param_count(dense) == param_count(dense)


def test_flops_formula_on_a_hand_case():
    cfg = ModelConfig(family="llama", vocab_size=10, hidden_size=8, num_hidden_layers=1, intermediate_size=16,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)  # fmt: skip
    # q 8x8, k 8x4, v 8x4, o 8x8, mlp 3 x 8x16, two norms of 8, final norm 8, embedding 10x8 (tied head)
    blocks = 64 + 32 + 32 + 64 + 3 * 128 + 8 + 8
    assert param_count(cfg) == blocks + 8 + 80 == 680
    # matmul params: blocks + final norm + the tied head's 10x8; attention: 6 * 1 layer * 2 heads * (4 + 4) * 32
    assert flops_per_token(cfg, seq_len=32) == 6 * (blocks + 8 + 80) + 6 * 1 * 2 * (4 + 4) * 32
