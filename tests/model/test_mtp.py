"""Multi-token prediction: shapes, what each position sees, cache, transformers' MtpLayer, save/load."""

import json

import pytest
import torch
from hf_factory import padded_batch, small_model
from safetensors import safe_open

from r1kit.model import Transformer


def test_mtp_logits_shape_and_causality():
    model = small_model("deepseek_v3")
    ids, _, _ = padded_batch(96, [8, 8], 8)
    with torch.no_grad():
        logits, hidden, mtp = model(ids, return_hidden=True, return_mtp=True)
        assert logits.shape == (2, 8, 96) and hidden.shape == (2, 8, 32) and mtp.shape == (2, 7, 96)
        assert torch.equal(model(ids, return_mtp=True)[1], mtp)
        # position i predicts token i+2 from h_i and token i+1: changing token 5 leaves positions 0..3 alone
        changed = ids.clone()
        changed[:, 5] = (ids[:, 5] + 1) % 96
        mtp2 = model(changed, return_mtp=True)[1]
    # (not bitwise: rerouted tokens change the expert matmul row blocks)
    assert (mtp2[:, :4] - mtp[:, :4]).abs().max() <= 1e-5
    assert (mtp2[:, 4] - mtp[:, 4]).abs().max() > 1e-4


def test_mtp_cache_matches_full():
    model = small_model("deepseek_v3")
    ids, mask, positions = padded_batch(96, [8, 5], 8)
    with torch.no_grad():
        _, hidden = model(ids, attention_mask=mask, positions=positions, return_hidden=True)
        full = model.mtp_logits(hidden[:, :-1], ids[:, 1:], positions[:, :-1], mask[:, :-1])
        cache = model.new_cache(2, 8)
        steps = [model.mtp_logits(hidden[:, :3], ids[:, 1:4], positions[:, :3], mask[:, :3], cache=cache)]
        for i in range(3, 7):
            steps.append(model.mtp_logits(hidden[:, i : i + 1], ids[:, i + 1 : i + 2], positions[:, i : i + 1],
                                          mask[:, : i + 1], cache=cache))  # fmt: skip
    assert cache.mtp_length == 7 and cache.length == 0
    real = mask[:, :-1].bool()
    assert (torch.cat(steps, dim=1)[real] - full[real]).abs().max() <= 1e-4


def test_mtp_matches_transformers_mtp_layer(tmp_path):
    """transformers' MtpLayer (enorm/hnorm/eh_proj/block/post_norm) given our weights gives our MTP logits."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_layers import MtpModel

    model = small_model("deepseek_v3", rope_scaling=None)
    model.save_pretrained(tmp_path)
    main = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    mtp = MtpModel(main, 1).eval()
    renamed = {}
    for name, tensor in model.state_dict().items():
        if not name.startswith("mtp.0."):
            continue
        rest = name[len("mtp.0.") :]
        if rest.split(".")[0] in ("enorm", "hnorm", "eh_proj"):
            renamed["layers.0." + rest] = tensor
        elif rest.startswith("shared_head.norm."):
            renamed["layers.0.post_norm." + rest[len("shared_head.norm.") :]] = tensor
        else:
            renamed["layers.0.mtp_block." + rest] = tensor
    result = mtp.load_state_dict(renamed, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {
        "embed_tokens.weight",
        "shared_head.weight",
    }
    ids, _, positions = padded_batch(96, [9, 9], 9)
    with torch.no_grad():
        _, hidden, ours = model(ids, return_hidden=True, return_mtp=True)
        hf_hidden = main(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        ref = mtp._project_to_logits(
            mtp.forward_layer(0, hf_hidden[:, :-1], positions[:, 1:], None, input_ids=ids[:, 1:])
        )
    assert (ref - ours).abs().max() <= 1e-4


def test_mtp_weights_survive_save_and_load(tmp_path):
    model = small_model("deepseek_v3")
    model.save_pretrained(tmp_path)
    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    assert hf_cfg["num_nextn_predict_layers"] == 1
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    layer = f"model.layers.{model.config.num_hidden_layers}."
    for key in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                "self_attn.kv_b_proj.weight", "mlp.experts.7.down_proj.weight", "mlp.gate.e_score_correction_bias"):  # fmt: skip
        assert layer + key in keys
    assert not any(k.startswith("mtp.") for k in keys)
    loaded = Transformer.from_pretrained(tmp_path)
    loaded_state = loaded.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded_state[name], tensor), name
    ids, _, _ = padded_batch(96, [6], 6)
    loaded.eval(), model.eval()  # the same expert kernels on both sides (eval mode uses the inference copies)
    with torch.no_grad():
        assert torch.equal(loaded(ids, return_mtp=True)[1], model(ids, return_mtp=True)[1])
