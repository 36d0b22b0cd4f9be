"""Checkpoint I/O: dtypes, sharding, tied heads, atomic writes and clear errors."""

import json

import pytest
import torch
from hf_factory import padded_batch, small_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from r1kit.model import Transformer


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_is_preserved(tmp_path, dtype):
    model = small_model("deepseek_v3").to(dtype)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == dtype
        assert f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias").dtype == torch.float32
    loaded = Transformer.from_pretrained(tmp_path)
    assert loaded.lm_head.weight.dtype == dtype
    assert loaded.moe_layers()[0].gate.e_score_correction_bias.dtype == torch.float32
    ids, _, _ = padded_batch(96, [5], 5)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert Transformer.from_pretrained(tmp_path, dtype=torch.float32).lm_head.weight.dtype == torch.float32


def test_bf16_checkpoint_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    small_model("qwen3").to(torch.bfloat16).save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert hf.dtype == torch.bfloat16


def test_sharded_save_and_load(tmp_path):
    model = small_model("deepseek_v3")
    model.save_pretrained(tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (tmp_path / "model.safetensors").exists()
    loaded = Transformer.from_pretrained(tmp_path)
    loaded_state = loaded.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded_state[name], tensor), name
    model.save_pretrained(tmp_path)  # back to one file: stale shards and index go away
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_tied_head_is_not_written_and_loads_either_way(tmp_path):
    model = small_model("qwen2")  # tied
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in state
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # some exporters write it anyway
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded = Transformer.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_missing_and_unexpected_keys_are_named(tmp_path):
    small_model("llama").save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["model.layers.1.self_attn.k_proj.weight"]
    state["model.layers.9.foo.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"missing keys: \[model\.layers\.1\.self_attn\.k_proj\.weight\]"
    ) as err:
        Transformer.from_pretrained(tmp_path)
    assert "model.layers.9.foo.weight" in str(err.value)


def test_unknown_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(ValueError, match="'gpt2'.*llama, qwen2, qwen3, deepseek_v3"):
        Transformer.from_pretrained(tmp_path)


def test_save_leaves_no_temporary_files(tmp_path):
    small_model("llama").save_pretrained(tmp_path / "new" / "dir")
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
