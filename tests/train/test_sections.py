"""The config sections shared by stages live in `r1kit.train.sections` with the names and defaults
the stages had; the stages re-export them, so old imports and TOML files keep working."""

from __future__ import annotations

import dataclasses

import pytest

from r1kit import distill, evaluate
from r1kit.config import ConfigError, load_config
from r1kit.rl import grpo
from r1kit.train import pretrain, sections, sft


def _defaults(cls) -> dict:
    return dataclasses.asdict(cls())


def test_stages_share_one_class_per_section():
    assert pretrain.ModelSection is sft.ModelSection is distill.ModelSection is sections.ModelSection
    assert pretrain.TokenizerSection is sft.TokenizerSection is sections.TokenizerSection
    assert pretrain.ValSection is sft.ValSection is distill.ValSection is sections.ValSection
    assert grpo.ModelSection is evaluate.ModelSection is distill.TeacherSection is sections.ModelDirSection


def test_field_names_and_defaults_unchanged():
    assert _defaults(sections.ModelSection) == {"preset": "tiny-llama", "init": "", "overrides": {}}
    assert _defaults(sections.ModelDirSection) == {"path": "", "tokenizer": ""}
    assert _defaults(sections.TokenizerSection) == {"path": "", "vocab_size": 512}
    assert _defaults(sections.ValSection) == {
        "every": 0,
        "task": "",
        "task_args": {},
        "split": "val",
        "problems": 64,
        "max_new_tokens": 96,
        "target_accuracy": 0.0,
        "prompt": "auto",
    }


def test_stage_configs_still_read_their_keys():
    cfg = load_config(
        sft.Config, None, ["--model.init", "m", "--tokenizer.vocab_size", "300", "--val.every", "5"]
    )
    assert (cfg.model.init, cfg.tokenizer.vocab_size, cfg.val.every) == ("m", 300, 5)
    cfg = load_config(grpo.Config, None, ["--model.path", "runs/sft", "--model.tokenizer", "tok"])
    assert (cfg.model.path, cfg.model.tokenizer) == ("runs/sft", "tok")
    cfg = load_config(distill.Config, None, ["--teacher.path", "t", "--student.preset", "tiny-v3"])
    assert (cfg.teacher.path, cfg.student.preset) == ("t", "tiny-v3")
    with pytest.raises(ConfigError, match="val.prompt"):
        load_config(pretrain.Config, None, ["--val.prompt", "html"])


def test_task_kwargs_reads_the_table_of_one_task():
    from r1kit.tasks import task_kwargs

    args = {"addition": {"max_digits": 4}, "countdown": {}}
    assert task_kwargs(args, "addition") == {"max_digits": 4}
    assert task_kwargs(args, "countdown") == {} and task_kwargs(args, "multiplication") == {}
    with pytest.raises(ConfigError, match=r"data.task_args maps task names to tables.*got max_digits = 4"):
        task_kwargs({"max_digits": 4}, "max_digits")
