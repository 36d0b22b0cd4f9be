"""`r1kit pretrain` / `r1kit sft` from the command line, the run directory, and the exported model."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from tiny_runs import losses, pretrain_config

from r1kit import cli
from r1kit.config import load_config
from r1kit.model import Transformer
from r1kit.train import pretrain, sft
from r1kit.train.log import read_metrics

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "--model.overrides",
    "{hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2, "
    "num_key_value_heads = 2}",
    "--tokenizer.vocab_size",
    "300",
    "--data.num_examples",
    "200",
    "--train.batch_size",
    "4",
    "--train.device",
    "cpu",
    "--run.progress",
    "false",
]


def test_example_configs_load_and_name_every_section():
    for stage, name in ((pretrain, "pretrain_tiny.toml"), (sft, "sft_tiny.toml")):
        cfg = load_config(stage.Config, REPO / "configs" / name)
        assert cfg.run.dir.startswith("runs/") and cfg.train.steps > 0
    assert load_config(sft.Config, REPO / "configs" / "sft_tiny.toml").val.target_accuracy == 0.3


def test_cli_pretrain_with_overrides_then_sft_from_its_model(tmp_path: Path):
    pt = tmp_path / "pt"
    args = ["pretrain", str(REPO / "configs/pretrain_tiny.toml"), *SMALL, "--data.seq_len", "32"]
    assert cli.main([*args, "--train.steps", "2", "--run.dir", str(pt)]) == 0
    assert [r["step"] for r in read_metrics(pt)] == [1, 2]
    saved = load_config(pretrain.Config, pt / "config.toml")  # the resolved config, overrides included
    assert saved.train.steps == 2 and saved.model.overrides["hidden_size"] == 32
    ft = tmp_path / "ft"
    args = ["sft", str(REPO / "configs/sft_tiny.toml"), *SMALL[2:], "--model.init", str(pt / "model")]
    assert cli.main([*args, "--train.steps", "2", "--val.every", "0", "--run.dir", str(ft)]) == 0
    assert Transformer.from_pretrained(ft / "model").config.hidden_size == 32


def test_cli_unknown_key_names_the_valid_ones(capsys: pytest.CaptureFixture):
    assert cli.main(["pretrain", "--train.lrate", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "train.lrate" in err and "lr" in err and "warmup_steps" in err
    assert cli.main(["sft", "--val.stop_at", "0.3"]) == 2
    assert "target_accuracy" in capsys.readouterr().err
    assert cli.main(["sft", "--help"]) == 0
    assert "val.target_accuracy" in capsys.readouterr().out


def test_transformers_loads_the_exported_model(tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    result = pretrain.run(pretrain_config(tmp_path, steps=2))
    ours = Transformer.from_pretrained(result.model_dir).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)
    # the checkpoints use the same layout (plus optimizer/scheduler/RNG/data state)
    ckpt = sorted((tmp_path / "checkpoints").glob("step_*"))[-1]
    assert transformers.AutoModelForCausalLM.from_pretrained(ckpt) is not None


def test_progress_line_and_cost_summary_are_printed(tmp_path: Path):
    from dataclasses import replace

    from rich.console import Console

    out = io.StringIO()
    cfg = pretrain_config(tmp_path, steps=3)
    result = pretrain.run(
        replace(cfg, run=replace(cfg.run, progress=True)), console=Console(file=out, width=200)
    )
    text = out.getvalue()
    assert "pretrain  step 3/3 (100%)" in text and "loss" in text and "elapsed" in text
    assert "pretrain cost:" in text and "MFU" in text
    assert result.cost["steps"] == 3 and losses(tmp_path)[-1] == result.metrics["loss"]
