"""`r1kit serve --model DIR` on a hostile model directory: one line, exit status 2, no hang."""

from __future__ import annotations

import json
import os

import pytest

from r1kit.config import ConfigError
from r1kit.loaders import load_model
from r1kit.model import ModelConfig, Transformer
from r1kit.serve import check_chat_template


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("served")
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4)  # fmt: skip
    Transformer(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _copy(src, dst):
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _set_template(path, template: str) -> None:
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def _serve_exit(capsys, path) -> str:
    from r1kit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", str(path), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("r1kit serve: "), err
    return err


def test_the_directory_loads(model_dir):
    model, tokenizer, _ = load_model(model_dir, device="cpu", require_chat_template=True)
    check_chat_template(tokenizer, model_dir)


LOOPING = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def test_a_looping_chat_template_is_a_load_error(model_dir, tmp_path, capsys):
    _set_template(_copy(model_dir, tmp_path), LOOPING)
    _, tokenizer, _ = load_model(tmp_path, device="cpu", require_chat_template=True)
    with pytest.raises(ConfigError, match="did not render within"):
        check_chat_template(tokenizer, tmp_path)
    assert "chat template" in _serve_exit(capsys, tmp_path)


def test_absurd_layer_count_is_one_line(model_dir, tmp_path, capsys):
    _copy(model_dir, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_hidden_layers"] = 10**6
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert "num_hidden_layers=1000000" in _serve_exit(capsys, tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_weights_fifo_is_one_line(model_dir, tmp_path, capsys):
    _copy(model_dir, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    os.mkfifo(tmp_path / "model.safetensors")
    assert "not a regular file" in _serve_exit(capsys, tmp_path)


def test_missing_model_is_one_line(capsys, tmp_path):
    assert "nothing" in _serve_exit(capsys, tmp_path / "nothing")
