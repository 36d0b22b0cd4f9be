"""Logit parity with transformers for every family, both directions of the checkpoint boundary."""

import json

import pytest
import torch
from hf_factory import CASES, make_hf_model, padded_batch

from r1kit.model import Transformer

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _max_diff_on_real(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    real = mask.bool()
    return (a[real] - b[real]).abs().max().item()


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_both_ways(case, tmp_path):
    hf = make_hf_model(case)
    hf.save_pretrained(tmp_path / "hf")
    ours = Transformer.from_pretrained(tmp_path / "hf").eval()
    ids, mask, positions = padded_batch(hf.config.vocab_size, [9, 6, 3], 9)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask, positions=positions)
        assert got.shape == ref.shape
        assert _max_diff_on_real(got, ref, mask) <= TOL
        assert torch.isfinite(got).all()  # fully padded query rows (left padding) must not produce NaN
        far = positions + 40  # past the scaled-rope cases' original context, where the scaling bends
        far_ref = hf(input_ids=ids, attention_mask=mask, position_ids=far).logits
        assert _max_diff_on_real(ours(ids, attention_mask=mask, positions=far), far_ref, mask) <= TOL

        ours.save_pretrained(tmp_path / "r1")
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "r1").eval()
        again = back(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        assert _max_diff_on_real(again, got, mask) <= TOL
    saved = json.loads((tmp_path / "r1" / "config.json").read_text())
    assert saved["model_type"] == hf.config.model_type
    assert "rope_parameters" in saved and "rope_scaling" not in saved


def test_selection_bias_changes_routing_but_not_weights(tmp_path):
    """Guards the parity test's power: a different e_score_correction_bias must change the logits."""
    hf = make_hf_model("deepseek_lora_yarn_groups")
    hf.save_pretrained(tmp_path / "hf")
    ours = Transformer.from_pretrained(tmp_path / "hf").eval()
    ids, mask, positions = padded_batch(96, [9, 9], 9)
    with torch.no_grad():
        before = ours(ids, attention_mask=mask, positions=positions)
        for moe in ours.moe_layers():
            moe.gate.e_score_correction_bias.add_(torch.linspace(-0.3, 0.3, 8))
        after = ours(ids, attention_mask=mask, positions=positions)
    assert (before - after).abs().max() > 1e-3
