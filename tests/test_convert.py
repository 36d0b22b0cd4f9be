"""`r1kit convert`: a tiny Llama GGUF (float32 tensors, byte-level BPE tokenizer and chat template in its
metadata) written here with `gguf.GGUFWriter`, converted through the CLI, and compared with what
transformers reads from the same GGUF: logits, token ids, chat rendering, end-of-turn ids. Then the
HF-directory path (re-save in bfloat16, sharded) and the user errors (exit 2, one line)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from r1kit.cli import main  # noqa: E402

HIDDEN, HEADS, KV_HEADS, LAYERS, FFN, CONTEXT = 32, 4, 2, 2, 64, 128
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "Ġ t", "he ll", "Ġ 1"]
TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PROMPT = "hello the world, 12 + 30 = 42"


def _byte_alphabet() -> list[str]:
    """GPT-2's 256 byte symbols, in byte order (what a byte-level BPE vocabulary is spelled in)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return [bytes_to_unicode()[b] for b in range(256)]


def write_tiny_gguf(
    path: Path,
    *,
    tied: bool = True,
    architecture: str = "llama",
    seed: int = 0,
    key_length: bool = True,
    pre: str | None = None,
) -> Path:
    """A 2-layer GGUF (llama, qwen2 or qwen3) with float32 tensors and a 263-token byte-level BPE tokenizer."""
    tokens = SPECIALS + _byte_alphabet() + [m.replace(" ", "") for m in MERGES]
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    if key_length:  # llama.cpp writes the head size here; transformers reads it only for some architectures
        writer.add_key_length(HIDDEN // HEADS)
        writer.add_value_length(HIDDEN // HEADS)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (vocab - len(SPECIALS)))  # 3 = control, 1 = normal
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(TEMPLATE)
    rng = np.random.default_rng(seed)

    def add(name, *shape, scale=0.2):
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    add("token_embd.weight", vocab, HIDDEN, scale=1.0)
    head_dim = HIDDEN // HEADS
    for i in range(LAYERS):
        writer.add_tensor(
            f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
        )
        writer.add_tensor(
            f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
        )
        add(f"blk.{i}.attn_q.weight", HEADS * head_dim, HIDDEN)
        add(f"blk.{i}.attn_k.weight", KV_HEADS * head_dim, HIDDEN)
        add(f"blk.{i}.attn_v.weight", KV_HEADS * head_dim, HIDDEN)
        if architecture == "qwen2":  # Qwen2: biases on q, k, v
            add(f"blk.{i}.attn_q.bias", HEADS * head_dim)
            add(f"blk.{i}.attn_k.bias", KV_HEADS * head_dim)
            add(f"blk.{i}.attn_v.bias", KV_HEADS * head_dim)
        if architecture == "qwen3":  # Qwen3: RMSNorm of each head's q and k
            writer.add_tensor(
                f"blk.{i}.attn_q_norm.weight", (1 + 0.1 * rng.standard_normal(head_dim)).astype(np.float32)
            )
            writer.add_tensor(
                f"blk.{i}.attn_k_norm.weight", (1 + 0.1 * rng.standard_normal(head_dim)).astype(np.float32)
            )
        add(f"blk.{i}.attn_output.weight", HIDDEN, HEADS * head_dim)
        add(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        add(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        add(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    if not tied:
        add("output.weight", vocab, HIDDEN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def convert(*args: str) -> int:
    return main(["convert", "--threads", "1", *args])


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "tiny-hf"
    assert convert("--input.path", str(tiny_gguf), "--output.dir", str(out)) == 0
    return out


def test_gguf_conversion_matches_transformers(tiny_gguf, converted):
    """r1kit on the converted directory = transformers on the GGUF itself: logits, token ids, chat text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1kit.loaders import load_model

    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"generation_config.json", "chat_template.jinja"} <= names
    assert not list(converted.parent.glob(".*tmp*")), "the temporary directory was left behind"
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is True and config["num_hidden_layers"] == LAYERS
    assert json.loads((converted / "generation_config.json").read_text())["eos_token_id"] == [2]
    tok_config = json.loads((converted / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == TEMPLATE and tok_config["eos_token"] == "<|im_end|>"
    assert tok_config["model_max_length"] == CONTEXT

    ref_tok = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    ref = AutoModelForCausalLM.from_pretrained(
        str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32
    ).eval()
    model, tokenizer, _ = load_model(converted, device="cpu", dtype="float32")
    ids = ref_tok(PROMPT, add_special_tokens=False).input_ids
    assert tokenizer.encode(PROMPT) == ids
    assert len(ids) < len(PROMPT.encode())  # the merges were applied, not only bytes
    messages = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True) == ref_tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert tuple(model.generation_eos_ids) == (2,)
    x = torch.tensor([ids])
    with torch.no_grad():
        expected = ref(x).logits
        got = model(x)
    got = got.logits if hasattr(got, "logits") else got
    assert got.shape == expected.shape == (1, len(ids), len(SPECIALS) + 256 + len(MERGES))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_transformers_loads_the_output(converted, tiny_gguf):
    """The written directory is a plain HF checkpoint: transformers loads it without a GGUF file, gets
    the de-quantised weights bit for bit and the same tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    written = AutoTokenizer.from_pretrained(str(converted))
    source = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    assert written(PROMPT).input_ids == source(PROMPT).input_ids
    assert written.eos_token == "<|im_end|>" and written.chat_template == TEMPLATE
    ours = AutoModelForCausalLM.from_pretrained(str(converted), dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(
        str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32
    )
    assert getattr(ours.config, "quantization_config", None) is None
    for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_hf_directory_resaved_in_bfloat16_and_sharded(tmp_path, converted):
    """An HF directory input comes out in the asked dtype (the weights rounded once, exactly), sharded
    with an index when over max_shard_mb, untied heads kept; r1kit and transformers both load it."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from r1kit.model import Transformer

    untied = tmp_path / "untied.gguf"
    write_tiny_gguf(untied, tied=False, seed=1)
    f32 = tmp_path / "f32"
    assert convert("--input.path", str(untied), "--output.dir", str(f32)) == 0
    assert json.loads((f32 / "config.json").read_text())["tie_word_embeddings"] is False
    out = tmp_path / "bf16"
    assert convert("--input.path", str(f32), "--output.dir", str(out), "--output.dtype", "bf16",
                   "--output.max_shard_mb", "0.02") == 0  # fmt: skip
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (out / "model.safetensors.index.json").is_file()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    source = load_file(str(f32 / "model.safetensors"))
    saved = {k: v for shard in shards for k, v in load_file(str(shard)).items()}
    assert saved.keys() == source.keys() and "lm_head.weight" in saved
    for name, tensor in source.items():
        assert saved[name].dtype == torch.bfloat16 and torch.equal(saved[name], tensor.to(torch.bfloat16)), (
            name
        )
    model = Transformer.from_pretrained(out, dtype=torch.bfloat16)
    ref = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16)
    torch.testing.assert_close(model.lm_head.weight, ref.lm_head.weight, rtol=0, atol=0)
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()


def test_overwrite_replaces_and_a_failed_check_writes_nothing(tmp_path, tiny_gguf, monkeypatch, capsys):
    import r1kit.convert as convert_module
    from r1kit.config import UserError

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert (
        convert("--input.path", str(tiny_gguf), "--output.dir", str(out), "--output.overwrite", "true") == 0
    )
    assert not (out / "old.txt").exists() and (out / "config.json").is_file()

    def failing_check(*args, **kwargs):
        raise UserError("check: logits differ")

    monkeypatch.setattr(convert_module, "check_directory", failing_check)
    fresh = tmp_path / "fresh"
    capsys.readouterr()
    assert convert("--input.path", str(tiny_gguf), "--output.dir", str(fresh)) == 2
    assert "logits differ" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # neither fresh/ nor a temporary dir


def _one_line_error(capsys, *args: str) -> str:
    capsys.readouterr()
    assert convert(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # above it: transformers' own progress bars
    assert err.startswith("r1kit convert: "), err
    return err


def test_user_errors(tmp_path, tiny_gguf, converted, capsys, monkeypatch):
    out = str(tmp_path / "out")
    err = _one_line_error(capsys, "--input.path", str(tmp_path / "missing.gguf"), "--output.dir", out)
    assert "no such file" in err
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    assert "not a GGUF file" in _one_line_error(capsys, "--input.path", str(text), "--output.dir", out)
    mamba = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(mamba), "mamba")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    err = _one_line_error(capsys, "--input.path", str(mamba), "--output.dir", out)
    assert "'mamba'" in err and "llama, qwen2, qwen3" in err
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text('{"model_type": "gpt2"}')
    err = _one_line_error(capsys, "--input.path", str(gpt2), "--output.dir", out)
    assert "'gpt2'" in err and "deepseek_v3" in err
    assert "config.json" in _one_line_error(capsys, "--input.path", str(tmp_path), "--output.dir", out)
    err = _one_line_error(capsys, "--input.path", str(tiny_gguf), "--output.dir", str(converted))
    assert "not empty" in err and "--output.overwrite true" in err
    assert "--input.path" in _one_line_error(capsys, "--output.dir", out)
    assert "--output.dir" in _one_line_error(capsys, "--input.path", str(tiny_gguf))
    assert "float32" in _one_line_error(capsys, "--input.path", str(tiny_gguf), "--output.dir", out,
                                        "--output.dtype", "int8")  # fmt: skip
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if `gguf` were not installed
    err = _one_line_error(capsys, "--input.path", str(tiny_gguf), "--output.dir", out)
    assert "pip install 'r1kit[convert]'" in err and "gguf" in err
    assert not Path(out).exists()


def test_check_catches_wrong_logits_and_tokens(converted, tiny_gguf):
    """The after-writing check fails when r1kit's logits drift from the source's or its tokens differ."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1kit.config import UserError
    from r1kit.convert import check_directory, source_logits

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    source = AutoModelForCausalLM.from_pretrained(
        str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32
    )
    ids, reference = source_logits(source, tokenizer, PROMPT)
    result = check_directory(converted, "float32", PROMPT, ids, reference, 0.0)
    assert result["max_abs_diff"] <= 1e-4 * result["max_abs_logit"]
    assert result["max_abs_diff_source"] <= 1e-4 * result["max_abs_logit"]
    with pytest.raises(UserError, match="float32 source"):
        check_directory(converted, "float32", PROMPT, ids, reference + 0.5, 0.0)
    with pytest.raises(UserError, match="tokenizer"):
        check_directory(converted, "float32", PROMPT, ids[::-1], reference, 0.0)


@pytest.mark.parametrize("stage", ["eval", "sft", "grpo"])
def test_smollm2_example_configs_load(stage):
    """configs/smollm2/*.toml use only keys the stages have, with valid values."""
    import importlib

    from r1kit.cli import STAGES
    from r1kit.config import load_config

    module = importlib.import_module(STAGES[stage][0])
    path = Path(__file__).resolve().parents[1] / "configs" / "smollm2" / f"{stage}.toml"
    config = load_config(module.Config, path)
    assert "smollm2" in str(config.run.dir)


def test_readme_documents_every_convert_key():
    from dataclasses import fields, is_dataclass

    from r1kit.convert import Config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for f in fields(Config):
        default = f.default_factory() if callable(f.default_factory) else None
        keys = [f"{f.name}.{g.name}" for g in fields(default)] if is_dataclass(default) else [f.name]
        for key in keys:
            assert f"`{key}`" in readme, key


@pytest.mark.parametrize("architecture", ["qwen2", "qwen3"])
def test_qwen_ggufs_convert_and_match_transformers(tmp_path, architecture):
    """The other GGUF architectures r1kit runs: Qwen2 (q/k/v biases) and Qwen3 (q/k norms)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from r1kit.loaders import load_model

    path = write_tiny_gguf(tmp_path / f"{architecture}.gguf", architecture=architecture, tied=False)
    out = tmp_path / "out"
    assert convert("--input.path", str(path), "--output.dir", str(out)) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == architecture
    config = AutoConfig.from_pretrained(str(tmp_path), gguf_file=path.name)
    config.head_dim = HIDDEN // HEADS  # transformers' qwen3 GGUF mapping drops it (convert reads key_length)
    ref = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, config=config, dtype=torch.float32
    ).eval()
    model, tokenizer, _ = load_model(out, device="cpu", dtype="float32")
    x = torch.tensor([tokenizer.encode(PROMPT)])
    with torch.no_grad():
        expected = ref(x).logits
        got = model(x)
    got = got.logits if hasattr(got, "logits") else got
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_weights_transformers_cannot_place_are_refused(tmp_path, capsys):
    """A Qwen3 GGUF without its head size: transformers' config predicts head_dim 128, the q/k/v/o
    tensors do not fit it; convert says so in one line instead of a traceback (or saving noise)."""
    path = write_tiny_gguf(tmp_path / "qwen3.gguf", architecture="qwen3", key_length=False)
    err = _one_line_error(capsys, "--input.path", str(path), "--output.dir", str(tmp_path / "out"))
    assert "could not load every weight" in err and "self_attn.k_proj.weight" in err
    assert not (tmp_path / "out").exists()


def test_smollm_pre_tokenizer_splits_digits_as_llama_cpp(tmp_path):
    """A GGUF whose tokenizer.ggml.pre is "smollm": llama.cpp splits every digit off before GPT-2's
    regex; transformers' loader does not know the name and keeps " 12" whole, so the merge "Ġ 1" fires.
    The converted tokenizer splits as llama.cpp: "x 12" -> x, Ġ, 1, 2 (by hand from the tiny vocab)."""
    from transformers import AutoTokenizer

    from r1kit.loaders import load_tokenizer

    path = write_tiny_gguf(tmp_path / "smollm.gguf", pre="smollm")
    out = tmp_path / "out"
    assert convert("--input.path", str(path), "--output.dir", str(out)) == 0
    tokenizer = load_tokenizer(out)
    expected = [tokenizer.token_to_id(t) for t in ("x", "Ġ", "1", "2")]
    assert tokenizer.encode("x 12") == expected
    assert AutoTokenizer.from_pretrained(str(out))("x 12", add_special_tokens=False).input_ids == expected
    generic = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert generic("x 12", add_special_tokens=False).input_ids == [
        tokenizer.token_to_id(t) for t in ("x", "Ġ1", "2")
    ]
