"""End-of-turn ids: the engine stops on the model's own EOS ids (generation_config.json), tokenizer or not."""

from __future__ import annotations

import json
import os

import pytest
import torch
from engine_stubs import BigramModel, CharTokenizer, bigram_table

from r1kit.engine import Engine, SamplingParams
from r1kit.model import ModelConfig, Transformer
from r1kit.model.hf import read_config, read_eos_ids

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random tiny Llama saved as an HF directory, and its unrestricted greedy continuation of [3, 4, 5]."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        family="llama",
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        intermediate_size=64,
        num_attention_heads=2,
        max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("tiny")
    Transformer(cfg).save_pretrained(path)
    reference = Engine(Transformer.from_pretrained(path)).generate([[3, 4, 5]], GREEDY)[0].token_ids
    return path, reference


def _write_generation_config(path, payload) -> None:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    (path / "generation_config.json").write_text(text)


def test_no_tokenizer_stops_at_second_eos_id_of_generation_config(tiny_dir, tmp_path):
    src, reference = tiny_dir
    assert len(reference) == GREEDY.max_new_tokens  # nothing stopped it: no EOS anywhere
    k = len(reference) // 2
    target = reference[k]
    first = reference.index(target)  # the first time the greedy run emits it
    unused = next(t for t in range(64) if t not in reference)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    _write_generation_config(tmp_path, {"eos_token_id": [unused, target], "temperature": 0.6})
    model = Transformer.from_pretrained(tmp_path)
    assert model.generation_eos_ids == (unused, target)
    engine = Engine(model)  # no tokenizer
    assert engine.eos_token_ids == (unused, target)
    out = engine.generate([[3, 4, 5]], GREEDY)[0]
    assert out.token_ids == reference[: first + 1]  # same tokens up to and including the EOS id
    assert out.finish_reason == "stop" and out.text == ""
    # ignore_eos runs past it, to the same tokens as without any EOS
    ignore = SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)
    free = engine.generate([[3, 4, 5]], ignore)[0]
    assert free.token_ids == reference and free.finish_reason == "length"
    # an explicit argument wins over the directory's ids
    assert Engine(model, eos_token_ids=[]).generate([[3, 4, 5]], GREEDY)[0].token_ids == reference
    explicit = Engine(model, eos_token_ids=reference[1]).generate([[3, 4, 5]], GREEDY)[0]
    assert explicit.token_ids == reference[: reference.index(reference[1]) + 1]


def _chain_model(tok: CharTokenizer, eos_ids) -> BigramModel:
    """Greedy: a -> b -> c -> d -> e -> ...; the model carries `eos_ids` like a loaded checkpoint."""
    letters = "abcdefghij"
    model = BigramModel(bigram_table(tok, {x: y for x, y in zip(letters, letters[1:])}))
    model.generation_eos_ids = tuple(eos_ids)
    return model


def test_with_tokenizer_stops_at_model_eos_and_drops_it_from_text(char_tok):
    d = char_tok.index["d"]
    engine = Engine(_chain_model(char_tok, [char_tok.eos_id, d]), char_tok)
    assert engine.eos_token_ids == (char_tok.eos_id, d)  # the tokenizer's EOS is listed once
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    out = engine.generate(["a"], params)[0]
    assert out.token_ids == [char_tok.index["b"], char_tok.index["c"], d]
    assert out.text == "bc" and out.finish_reason == "stop"
    # the same stop when streaming and in a continuous-batching session
    streamed = "".join(delta.text for step in engine.stream(["a"], params) for delta in step)
    assert streamed == "bc"
    session = engine.session()
    (sid,) = session.add("a", params)
    while session.has_work():
        session.step()
    done = session.pop_completion(sid)
    assert done.token_ids == out.token_ids and done.text == "bc" and done.finish_reason == "stop"
    # without model ids only the tokenizer's EOS stops it: runs to the length cap
    plain = Engine(_chain_model(char_tok, []), char_tok).generate(["a"], params)[0]
    assert plain.finish_reason == "length" and plain.text == "bcdefghi"


def _dir_with(tmp_path, gen_payload, config_eos=None):
    cfg = ModelConfig(vocab_size=50, eos_token_id=config_eos)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    if gen_payload is not None:
        _write_generation_config(tmp_path, gen_payload)
    return read_eos_ids(tmp_path, read_config(tmp_path))


def test_eos_ids_int_list_and_fallback_to_config(tmp_path):
    assert _dir_with(tmp_path, {"eos_token_id": 7}) == (7,)
    assert _dir_with(tmp_path, {"eos_token_id": [7, 9, 7]}) == (7, 9)
    assert _dir_with(tmp_path, {"eos_token_id": []}, config_eos=3) == ()
    assert _dir_with(tmp_path, {"bos_token_id": 1}, config_eos=3) == (3,)  # no eos in it: config.json's
    assert _dir_with(tmp_path, {"eos_token_id": None}, config_eos=[3, 4]) == (3, 4)
    (tmp_path / "generation_config.json").unlink()
    assert _dir_with(tmp_path, None, config_eos=5) == (5,)
    assert _dir_with(tmp_path, None) == ()


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"eos_token_id": 50}, "out of range [0, 50)"),
        ({"eos_token_id": -1}, "out of range"),
        ({"eos_token_id": [1, "2"]}, "must be an integer or a list of integers"),
        ({"eos_token_id": True}, "must be an integer"),
        ({"eos_token_id": 1.0}, "must be an integer"),
        ({"eos_token_id": {"a": 1}}, "must be an integer"),
        ([1, 2], "must hold a JSON object"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_bad_generation_config_is_one_line_value_error(tmp_path, payload, message):
    with pytest.raises(ValueError) as err:
        _dir_with(tmp_path, payload)
    text = str(err.value)
    assert message in text and "generation_config.json" in text and "\n" not in text


def test_bad_eos_in_config_json_and_explicit_argument(tmp_path, char_tok):
    with pytest.raises(ValueError, match=r"config.json: eos_token_id 99 is out of range"):
        _dir_with(tmp_path, None, config_eos=99)
    model = Transformer(ModelConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, intermediate_size=32))
    with pytest.raises(ValueError, match=r"Engine: eos_token_id 50 is out of range \[0, 50\)"):
        Engine(model, eos_token_ids=[1, 50])
    with pytest.raises(ValueError, match="must be an integer"):
        Engine(model, eos_token_ids=["<|im_end|>"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_generation_config_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "generation_config.json")
    with pytest.raises(ValueError, match="generation_config.json is not a regular file"):
        _dir_with(tmp_path, None)


def test_save_keeps_generation_eos_ids(tiny_dir, tmp_path):
    src, _ = tiny_dir
    assert not (src / "generation_config.json").exists()  # config.json's ids alone: no extra file
    loaded = tmp_path / "loaded"
    loaded.mkdir()
    for name in ("config.json", "model.safetensors"):
        (loaded / name).write_bytes((src / name).read_bytes())
    _write_generation_config(loaded, {"eos_token_id": [9, 2]})
    Transformer.from_pretrained(loaded).save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "generation_config.json").read_text()) == {"eos_token_id": [9, 2]}
    assert Transformer.from_pretrained(tmp_path / "saved").generation_eos_ids == (9, 2)
    # saving over the source directory keeps the file's other fields
    _write_generation_config(loaded, {"eos_token_id": [9, 2], "temperature": 0.6})
    Transformer.from_pretrained(loaded).save_pretrained(loaded)
    assert json.loads((loaded / "generation_config.json").read_text()) == {
        "eos_token_id": [9, 2],
        "temperature": 0.6,
    }
