"""One config dialect: the same section and key names in every stage, and the old spellings of renamed
keys (GRPO's top-level run settings and [optim], [val] num_problems, flat task_args) rejected with one
line naming the new key (exit 2)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from r1kit import distill, evaluate
from r1kit.cli import main as cli_main
from r1kit.config import RENAMED_KEYS, ConfigError, config_from_dict, load_config
from r1kit.rl import grpo
from r1kit.train import pretrain, sft
from r1kit.train.loop import RunConfig, TrainConfig, autocast_for
from r1kit.train.sections import check_task_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGES = {"grpo": grpo, "sft": sft, "pretrain": pretrain, "distill": distill, "eval": evaluate}

# (stage, old override, its value, the new key the one-line error must name)
OLD_KEYS = [
    ("grpo", "run_dir", "runs/x", "[run] dir (--run.dir)"),
    ("grpo", "resume", "true", "[run] resume (--run.resume)"),
    ("grpo", "save_every", "5", "[run] save_every (--run.save_every)"),
    ("grpo", "log_every", "5", "[run] log_every (--run.log_every)"),
    ("grpo", "keep_last", "1", "[run] keep_last (--run.keep_last)"),
    ("grpo", "progress", "false", "[run] progress (--run.progress)"),
    ("grpo", "tensorboard", "false", "[run] tensorboard (--run.tensorboard)"),
    ("grpo", "plot", "false", "[run] plot (--run.plot)"),
    ("grpo", "device", "cpu", "[train] device (--train.device)"),
    ("grpo", "precision", "bf16", "[train] precision (--train.precision)"),
    ("grpo", "strategy", "ddp", "[train] strategy (--train.strategy)"),
    ("grpo", "seed", "3", "[train] seed (--train.seed)"),
    ("grpo", "threads", "1", "[train] threads (--train.threads)"),
    ("grpo", "max_steps", "3", "[train] steps (--train.steps)"),
    ("grpo", "max_seconds", "60", "[train] max_seconds (--train.max_seconds)"),
    ("grpo", "optim.lr", "1e-4", "[train] lr (--train.lr)"),
    ("grpo", "optim.weight_decay", "0.1", "[train] weight_decay (--train.weight_decay)"),
    ("grpo", "optim.beta1", "0.9", "[train] beta1 (--train.beta1)"),
    ("grpo", "optim.beta2", "0.95", "[train] beta2 (--train.beta2)"),
    ("grpo", "optim.warmup_steps", "2", "[train] warmup_steps (--train.warmup_steps)"),
    ("grpo", "optim.schedule", "cosine", "[train] schedule (--train.schedule)"),
    ("grpo", "optim.grad_clip", "0", "[train] grad_clip (--train.grad_clip)"),
    ("grpo", "optim.moe_bias_gamma", "0", "[train] moe_bias_gamma (--train.moe_bias_gamma)"),
    ("grpo", "loss.micro_batch_size", "4", "[train] micro_batch_size (--train.micro_batch_size)"),
    ("sft", "val.num_problems", "8", "[val] problems (--val.problems)"),
    ("pretrain", "val.num_problems", "8", "[val] problems (--val.problems)"),
    ("distill", "val.num_problems", "8", "[val] problems (--val.problems)"),
    ("sft", "run_dir", "runs/x", "[run] dir (--run.dir)"),
    ("pretrain", "max_steps", "3", "[train] steps (--train.steps)"),
    ("distill", "seed", "3", "[train] seed (--train.seed)"),
]


@pytest.mark.parametrize(("stage", "old", "value", "new"), OLD_KEYS)
def test_an_old_override_is_one_line_naming_the_new_key(stage, old, value, new, capsys):
    assert cli_main([stage, f"--{old}", value]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"r1kit {stage}: {old} (from --{old}) moved: use {new}"
    assert "\n" not in err


@pytest.mark.parametrize(("stage", "old", "value", "new"), OLD_KEYS)
def test_an_old_key_in_a_toml_file_names_the_new_key(stage, old, value, new, tmp_path, capsys):
    section, _, key = old.rpartition(".")
    literal = value if value.replace(".", "").replace("-", "").replace("e", "").isdigit() else f'"{value}"'
    if value in ("true", "false"):
        literal = value
    text = f"[{section}]\n{key} = {literal}\n" if section else f"{key} = {literal}\n"
    path = tmp_path / "old.toml"
    path.write_text(text)
    assert cli_main([stage, str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"r1kit {stage}: {old} (from {path}) moved: use {new}"


def test_an_old_optim_table_with_any_key_points_to_train(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text("[optim]\nlr = 1e-4\n")
    with pytest.raises(ConfigError, match=r"^optim.lr \(from .*\) moved: use \[train\] lr \(--train.lr\)$"):
        load_config(grpo.Config, path)
    path.write_text("[optim]\nnope = 1\n")
    with pytest.raises(ConfigError, match=r"^\[optim\] \(from .*\) moved: its keys are now in \[train\]"):
        load_config(grpo.Config, path)
    with pytest.raises(ConfigError, match=r"moved: use \[run\] dir"):  # the Python dict path too
        config_from_dict(grpo.Config, {"run_dir": "x"})


def _dotted_keys(cls, prefix=""):
    from r1kit.config import _fields, _is_dataclass_type

    for name, (_, tp) in _fields(cls).items():
        yield f"{prefix}{name}"
        if _is_dataclass_type(tp):
            yield from _dotted_keys(tp, f"{prefix}{name}.")


def test_every_new_key_exists_and_valid_keys_never_trip_the_table():
    from r1kit.config import _check_renamed_key, _field_type

    for old, new in RENAMED_KEYS.items():
        assert any(_field_type(mod.Config, new) is not None for mod in STAGES.values()), f"{old} -> {new}"
    for mod in STAGES.values():  # a key a stage has is read as ever, never reported as moved
        keys = list(_dotted_keys(mod.Config))
        assert keys
        for key in keys:
            _check_renamed_key(mod.Config, key, "test")


def test_a_key_unknown_to_the_stage_and_not_renamed_there_is_the_usual_error():
    # eval has [run] device and no [train]: a top-level device is unknown, not "moved to [train]"
    with pytest.raises(ConfigError, match=r"unknown key 'device'") as err:
        load_config(evaluate.Config, None, ["--device", "cpu"])
    assert "moved" not in str(err.value)


FLAT = [
    ("grpo", "data.task_args", "addition"),
    ("sft", "data.task_args", "addition"),
    ("pretrain", "data.task_args", "addition"),
    ("eval", "data.task_args", "addition"),
    ("distill", "sample.task_args", "addition"),
]


@pytest.mark.parametrize(("stage", "key", "task"), FLAT)
def test_flat_task_args_show_the_keyed_form(stage, key, task, capsys):
    assert cli_main([stage, f"--{key}", "{min_digits = 1, max_digits = 3}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"r1kit {stage}: {key} is keyed by task name: use task_args = "
        f"{{{task} = {{min_digits = 1, max_digits = 3}}}} (got {{min_digits = 1, max_digits = 3}})"
    )


def test_val_task_args_are_keyed_too():
    with pytest.raises(
        ConfigError, match=r"val.task_args is keyed by task name: use task_args = \{countdown = "
    ):
        load_config(sft.Config, None, ["--val.task", "countdown", "--val.task_args", "{num_numbers = 3}"])
    cfg = load_config(sft.Config, None, ["--val.task", "countdown", "--val.task_args", "{countdown = {}}"])
    assert cfg.val.task_args == {"countdown": {}}


def test_check_task_args_names_a_placeholder_for_multi_task_stages():
    with pytest.raises(ConfigError, match=r"use task_args = \{TASK = \{digits = 2\}\}"):
        check_task_args({"digits": 2}, "data.task_args", ["addition", "countdown"])
    with pytest.raises(ConfigError, match=r'\{"gym:basic_arithmetic" = \{digits = 2\}\}'):
        check_task_args({"digits": 2}, "data.task_args", ["gym:basic_arithmetic"])
    check_task_args({"addition": {"digits": 2}, "countdown": {}}, "data.task_args", ["addition"])


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_tiny_config_loads_with_the_shared_names(stage):
    cfg = load_config(STAGES[stage].Config, CONFIGS / f"{stage}_tiny.toml")
    assert cfg.run.dir.startswith("runs/")
    if stage != "eval":
        assert isinstance(cfg.train, TrainConfig) and isinstance(cfg.run, RunConfig)
    for section in ("data", "sample"):
        args = getattr(getattr(cfg, section, None), "task_args", {})
        assert all(isinstance(v, dict) for v in args.values())  # keyed by task name


def test_the_tiny_configs_keep_their_numbers():
    g = load_config(grpo.Config, CONFIGS / "grpo_tiny.toml")
    assert (g.run.dir, g.run.save_every, g.run.log_every, g.train.device) == (
        "runs/grpo_tiny",
        100,
        1,
        "auto",
    )
    assert (g.train.steps, g.train.max_seconds, g.train.lr, g.train.schedule) == (
        600,
        240.0,
        1e-4,
        "constant",
    )
    assert g.data.task_args == {"addition": {"min_digits": 1, "max_digits": 4}}
    s = load_config(sft.Config, CONFIGS / "sft_tiny.toml")
    assert (s.val.problems, s.data.task_args) == (64, {"addition": {"min_digits": 1, "max_digits": 4}})


# GRPO's defaults before [train]/[run] (its old [optim] section and top-level fields)
OLD_GRPO_TRAIN = {
    "steps": 100,
    "lr": 3e-6,
    "weight_decay": 0.0,
    "beta1": 0.9,
    "beta2": 0.99,
    "warmup_steps": 0,
    "schedule": "constant",
    "grad_clip": 1.0,
    "moe_bias_gamma": 0.001,
    "device": "auto",
    "precision": "auto",
    "strategy": "none",
    "seed": 0,
    "threads": 0,
    "max_seconds": 0.0,
    "micro_batch_size": 0,
    # not set by the old translation: the loop's defaults
    "min_lr_ratio": 0.1,
    "eps": 1e-8,
    "compile": False,
}
OLD_GRPO_RUN = {
    "dir": "runs/grpo",
    "resume": False,
    "save_every": 0,
    "keep_last": 2,
    "log_every": 1,
    "progress": True,
    "tensorboard": True,
    "plot": True,
    "dollars_per_hour": 0.0,
    "stop_after": 0,
}


def test_grpo_train_and_run_defaults_equal_the_old_ones():
    cfg = load_config(grpo.Config)
    train, run = dataclasses.asdict(cfg.train), dataclasses.asdict(cfg.run)
    assert {k: train[k] for k in OLD_GRPO_TRAIN} == OLD_GRPO_TRAIN
    assert run == OLD_GRPO_RUN
    assert grpo.Config().train == cfg.train  # the Python API gets the same defaults as the CLI


def test_grpo_train_section_rules():
    with pytest.raises(ConfigError, match="never stop"):
        load_config(grpo.Config, None, ["--train.steps", "0"])
    assert load_config(grpo.Config, None, ["--train.steps", "0", "--train.max_seconds", "5"]).train.steps == 0
    with pytest.raises(ConfigError, match="rollout.prompts_per_step x rollout.group_size"):
        load_config(grpo.Config, None, ["--train.batch_size", "7"])
    with pytest.raises(ConfigError, match="MTP head"):
        load_config(grpo.Config, None, ["--train.mtp_weight", "0.5"])
    assert load_config(grpo.Config, None, ["--train.strategy", "fsdp2"]).train.strategy == "fsdp2"


def test_precision_speaks_the_dtype_vocabulary():
    import torch

    for name, long in (("bf16", "bfloat16"), ("bfloat16", "bfloat16"), ("fp32", "float32"), ("auto", "auto")):
        assert load_config(sft.Config, None, ["--train.precision", name]).train.precision == long
        assert load_config(grpo.Config, None, ["--train.precision", name]).train.precision == long
    with pytest.raises(ConfigError, match="precision"):
        load_config(sft.Config, None, ["--train.precision", "float16"])
    cpu = torch.device("cpu")
    assert autocast_for(cpu, "bfloat16") is not autocast_for(cpu, "float32")
    assert autocast_for(cpu, "bf16")().fast_dtype == torch.bfloat16
    with autocast_for(cpu, "fp32")():
        pass
    assert autocast_for(cpu, "auto") is autocast_for(cpu, "float32")


def test_demo_grpo_stage_passes_the_old_values(monkeypatch, tmp_path):
    from r1kit import demo

    seen = {}
    monkeypatch.setattr(demo.grpo, "run", lambda cfg: seen.setdefault("cfg", cfg))
    recipe, config = demo.Recipe(), demo.Config(seed=3, threads=2, progress=False)
    cfg = demo.stage_grpo(recipe, config, tmp_path, tmp_path / "sft")
    assert cfg is seen["cfg"]
    train = dataclasses.asdict(cfg.train)
    expected = {
        **OLD_GRPO_TRAIN,
        "steps": recipe.grpo_steps,
        "lr": recipe.grpo_lr,
        "device": config.device,
        "seed": 3,
        "threads": 2,
    }
    assert {k: train[k] for k in expected} == expected
    run = dataclasses.asdict(cfg.run)
    assert run == {**OLD_GRPO_RUN, "dir": str(tmp_path / "grpo"), "progress": False, "tensorboard": False}
    assert cfg.data.task_args == {
        "addition": {"min_digits": recipe.rl_digits[0], "max_digits": recipe.rl_digits[1]}
    }


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_saved_config_loads_back_equal(stage, tmp_path):
    from r1kit.config import save_config

    cfg = load_config(
        STAGES[stage].Config,
        CONFIGS / f"{stage}_tiny.toml",
        ["--train.precision", "bf16"] * (stage != "eval"),
    )
    path = save_config(cfg, tmp_path / "config.toml")
    assert load_config(STAGES[stage].Config, path) == cfg


def test_grpo_help_lists_the_shared_sections_with_their_help(capsys):
    assert cli_main(["grpo", "--help"]) == 0
    lines = {line.split(" = ")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert "peak AdamW learning rate" in lines["--train.lr"] and "3e-06" in lines["--train.lr"]
    assert "AdamW beta2" in lines["--train.beta2"]  # help inherited from the loop's TrainConfig
    assert "run directory" in lines["--run.dir"] and '"runs/grpo"' in lines["--run.dir"]
    assert "--run_dir" not in lines and "--optim.lr" not in lines and "--max_steps" not in lines
