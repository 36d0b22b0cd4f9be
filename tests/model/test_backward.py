"""Training through the model: every parameter the input reaches gets a finite, non-zero gradient."""

import pytest
import torch
import torch.nn.functional as F
from hf_factory import padded_batch, small_model


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "deepseek_v3"])
def test_gradients_reach_every_parameter(family):
    model = small_model(family).train()
    ids, mask, positions = padded_batch(96, [16, 12, 16, 9], 16)
    if model.config.num_mtp_layers:
        logits, mtp = model(ids, attention_mask=mask, positions=positions, return_mtp=True)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        loss = (loss * mask[:, 1:].flatten()).mean()
        mtp_loss = F.cross_entropy(mtp[:, :-1].flatten(0, 1), ids[:, 2:].flatten(), reduction="none")
        # DeepSeek-V3 (arXiv 2412.19437): MTP weight lambda 0.3
        loss = loss + 0.3 * (mtp_loss * mask[:, 2:].flatten()).mean()
    else:
        logits = model(ids, attention_mask=mask, positions=positions)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        loss = (loss * mask[:, 1:].flatten()).mean()
    loss.backward()
    assert torch.isfinite(loss)
    seen = ids[:, :-1][mask[:, :-1].bool()].unique()  # tokens at real positions whose output is scored
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        if name.endswith("embed_tokens.weight"):
            assert param.grad[seen].abs().sum(-1).gt(0).all(), name
        elif ".experts." in name:
            continue  # checked per expert below
        else:
            assert param.grad.abs().sum() > 0, name
    for moe in model.moe_layers():
        hit = moe.tokens_per_expert > 0
        assert hit.any()
        grad_norm = moe.experts.gate_up_proj.grad.flatten(1).abs().sum(1)
        assert (grad_norm[hit] > 0).all() and (grad_norm[~hit] == 0).all()
        assert moe.gate.e_score_correction_bias.grad is None  # a buffer: the optimiser never sees it
