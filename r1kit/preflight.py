"""Checks of a stage's config against the machine and the filesystem, before the stage runs.

A config that loads (types, ranges and unknown keys are :mod:`r1kit.config`'s job) can still name a
preset that does not exist, a task that does not take the arguments given, a file that is not there,
a model directory without weights, a GPU the machine lacks, or a run directory that already holds a
run. ``r1kit STAGE`` calls :func:`preflight` after loading the config and before the stage writes
anything, so each of these mistakes is one :class:`r1kit.config.ConfigError` line (exit status 2)
instead of a traceback minutes into a run, and the run directory is left as it was.

The ``check_*`` functions are usable one by one (each names the config key in its message and says
what to type instead); :func:`preflight` applies them to the keys of each stage.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from r1kit.config import ConfigError, convert_value


def _did_you_mean(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# devices


def check_device(name: str, key: str) -> None:
    """``name`` is a device this machine has: "auto", "cpu", "cuda[:N]" with a CUDA GPU (N below the
    device count), "mps" where torch has it."""
    import torch

    text = str(name).strip()
    if text == "auto" or text == "cpu":
        return
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{key} = {text!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{key} = {text!r} but torch sees no CUDA GPU on this machine; use --{key} cpu (or auto)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{key} = {text!r} but this machine has {count} CUDA device(s): cuda:0..cuda:{count - 1}"
            )
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"{key} = 'mps' but MPS is not available here; use --{key} cpu (or auto)")
    elif device.type != "cpu":
        raise ConfigError(f"{key} = {text!r}: r1kit runs on auto, cpu, cuda, cuda:N or mps")


# ----------------------------------------------------------------------------------------------
# models and tokenizers

# ModelConfig sizes that must be >= 1 (the others are >= 0: 0 switches a feature off)
_POSITIVE_SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
)


def check_model_preset(preset: str, overrides: Mapping[str, Any], key: str, vocab_size: int = 512) -> Any:
    """``preset`` is a ModelConfig preset and ``overrides`` are ModelConfig fields of the right types
    and sizes that build a valid config (``vocab_size`` stands in for the tokenizer's when absent).
    Returns that ModelConfig."""
    import dataclasses
    import typing

    from r1kit.model.config import PRESETS, ModelConfig

    if preset not in PRESETS:
        raise ConfigError(
            f"{key}.preset {preset!r} is not a preset{_did_you_mean(preset, PRESETS) or ';'} "
            f"presets: {', '.join(sorted(PRESETS))}"
        )
    hints = typing.get_type_hints(ModelConfig)
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    values: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in hints:
            raise ConfigError(
                f"{key}.overrides: {name!r} is not a model field{_did_you_mean(name, fields) or ';'} "
                f"fields: {', '.join(fields)}"
            )
        values[name] = convert_value(value, hints[name], f"{key}.overrides.{name}")
        number = values[name]
        if isinstance(number, int) and not isinstance(number, bool):
            low = 1 if name in _POSITIVE_SIZES else 0
            if name.endswith("_token_id"):
                low = 0
            if number < low:
                raise ConfigError(f"{key}.overrides.{name} must be >= {low}, got {number}")
    for name in ("rms_norm_eps", "rope_theta"):
        if name in values and not values[name] > 0:
            raise ConfigError(f"{key}.overrides.{name} must be > 0, got {values[name]}")
    try:
        cfg = ModelConfig.preset(preset, **{"vocab_size": vocab_size, **values})
    except (ValueError, TypeError, ZeroDivisionError) as err:
        raise ConfigError(f"{key}.overrides: {err}") from None
    return cfg


def min_train_bytes(cfg: Any) -> int:
    """A lower bound on the memory training a model of ``cfg`` takes: 16 bytes per parameter (fp32
    weights, gradients and AdamW's two moments), counting only the embedding, two of the four
    attention projections and the MLPs (closed form: building even a meta model of 10**6 layers
    takes minutes)."""
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
    mlp = 3 * h * cfg.intermediate_size
    if cfg.n_routed_experts:
        moe = 3 * h * cfg.moe_intermediate_size * (cfg.n_routed_experts + cfg.n_shared_experts)
        dense = min(cfg.first_k_dense_replace, layers)
        mlps = dense * mlp + (layers - dense) * moe
    else:
        mlps = layers * mlp
    return 16 * (cfg.vocab_size * h + layers * 2 * h * h + mlps)


def _memory_of(device: str) -> tuple[int, str] | None:
    """(bytes, name) of the memory a device trains in: the GPU's, else the machine's RAM."""
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            return None
        index = (torch.device(device).index or 0) if device != "auto" else 0
        return torch.cuda.get_device_properties(index).total_memory, f"cuda:{index}"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"
    except (ValueError, OSError, AttributeError):
        return None


def check_model_fits(cfg: Any, device: str, key: str) -> None:
    """Refuse a model whose training state cannot fit the device's memory (a typo such as
    ``hidden_size = 1000000`` would otherwise allocate until the machine swaps or is killed)."""
    memory = _memory_of(device)
    need = min_train_bytes(cfg)
    if memory is not None and need > memory[0]:
        raise ConfigError(
            f"{key}: hidden_size {cfg.hidden_size} x {cfg.num_hidden_layers} layers (vocab {cfg.vocab_size}) "
            f"needs at least {need / 2**30:.1f} GiB to train, more than the {memory[0] / 2**30:.1f} GiB of "
            f"{memory[1]}; check {key}.overrides"
        )


def _model_dir_problem(path: Path) -> str | None:
    from r1kit.train.checkpoint import model_files_problem

    if not (path / "config.json").is_file():
        return "no config.json"
    return model_files_problem(path)


def check_model_dir(path: str, key: str, *, run_dirs: bool = True) -> Path:
    """The model directory ``path`` names (with ``run_dirs``: also an r1kit run directory's
    ``model/`` or its newest complete checkpoint), after checking that its config.json and weights are
    there and whole. Returns the directory to load."""
    from r1kit.train.checkpoint import latest_checkpoint

    if not str(path).strip():
        raise ConfigError(f"{key} is empty: give a model directory (config.json + model.safetensors)")
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{key}: {p} does not exist; give a model directory or an r1kit run directory")
    if not p.is_dir():
        raise ConfigError(f"{key}: {p} is a file; give the directory that holds config.json and the weights")
    if (p / "config.json").is_file():
        problem = _model_dir_problem(p)
        if problem:
            raise ConfigError(f"{key}: {p} cannot be loaded: {problem}")
        return p
    candidates = [p / "model"]
    import warnings

    with warnings.catch_warnings():  # a skipped broken checkpoint is reported by the stage itself
        warnings.simplefilter("ignore")
        ckpt = latest_checkpoint(p)
    if ckpt is not None:
        candidates.append(ckpt)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            problem = _model_dir_problem(candidate)
            if problem:
                raise ConfigError(f"{key}: {candidate} cannot be loaded: {problem}")
            if not run_dirs:
                raise ConfigError(f"{key}: {p} is a run directory; give its model: --{key} {candidate}")
            return candidate
    raise ConfigError(
        f"{key}: {p} holds no config.json, model/ or complete checkpoint; give a model directory "
        f"(e.g. runs/sft_tiny/model) or an r1kit run directory"
    )


def check_tokenizer_dir(path: str, key: str) -> None:
    """``path`` ("" = none) is a directory with a readable tokenizer.json."""
    if not path:
        return
    p = Path(path)
    if not (p / "tokenizer.json").is_file():
        nearby = (
            " (it is a run directory: try its model/)" if (p / "model" / "tokenizer.json").is_file() else ""
        )
        raise ConfigError(f"{key}: no tokenizer.json in {p}{nearby}")
    try:
        from r1kit.tokenizer import Tokenizer

        Tokenizer.from_pretrained(p)
    except Exception as err:  # the Rust tokenizers library raises a bare Exception on a bad file
        raise ConfigError(
            f"{key}: {p}/tokenizer.json cannot be loaded ({str(err).splitlines()[0]})"
        ) from None


def check_vocab_size(vocab_size: int, key: str) -> None:
    """A vocabulary trained on the fly holds the 256 bytes and r1kit's special tokens."""
    from r1kit.tokenizer import SPECIAL_TOKENS, THINK_TOKENS

    minimum = 256 + len(SPECIAL_TOKENS) + len(THINK_TOKENS)
    if vocab_size < minimum:
        raise ConfigError(
            f"{key} = {vocab_size} is below the minimum {minimum} (256 bytes + special tokens); "
            f"use --{key} {minimum} or more (512 in the tiny configs)"
        )


# ----------------------------------------------------------------------------------------------
# tasks, rewards, files


def check_task(name: str, args: Mapping[str, Any], key: str, args_key: str) -> Any:
    """Build task ``name`` with ``args``; an unknown name or argument is a ConfigError naming the keys.
    Returns the task."""
    from r1kit.tasks import BUILTIN_TASKS, get_task

    if not isinstance(args, Mapping):
        raise ConfigError(f"{args_key} must be a table of {name}'s arguments, got {_short(args)}")
    try:
        return get_task(name, **args)
    except TypeError as err:
        params = ""
        if name in BUILTIN_TASKS:
            names = [
                p for p in inspect.signature(BUILTIN_TASKS[name]).parameters if p not in ("self", "kwargs")
            ]
            params = f"; {name} takes {', '.join(names) or 'no arguments'}"
        raise ConfigError(f"{args_key} = {_short(dict(args))}: {err}{params}") from None
    except ImportError as err:
        raise ConfigError(
            f"{key} = {name!r} needs {err.name or err}; install it (pip install reasoning-gym)"
        ) from None
    except (ValueError, KeyError, FileNotFoundError) as err:
        text = str(err).strip("'\"")
        if "unknown task" in text:
            raise ConfigError(f"{key}: {text}{_did_you_mean(name, BUILTIN_TASKS)}") from None
        raise ConfigError(f"{key} = {name!r} with {args_key} = {_short(dict(args))}: {text}") from None


def check_named_tasks(
    names: list[str], task_args: Mapping[str, Any], key: str, args_key: str
) -> dict[str, Any]:
    """Tasks named in a list with their arguments in a table keyed by task name (eval, sample)."""
    if not isinstance(task_args, Mapping):
        raise ConfigError(f"{args_key} must be a table keyed by task name, got {_short(task_args)}")
    from r1kit.tasks import BUILTIN_TASKS, PREFIXED_TASKS

    for name in names:  # an unknown name first: its arguments below would look like strays
        if name not in BUILTIN_TASKS and name.partition(":")[0] not in PREFIXED_TASKS:
            check_task(name, {}, key, args_key)
    strays = [k for k in task_args if k not in names]
    if strays:
        example = f"{{{names[0]} = {{{strays[0]} = ...}}}}" if names else "{addition = {max_digits = 4}}"
        raise ConfigError(
            f"{args_key} has {strays[0]!r}, which is not one of {key} ({', '.join(names)}); it maps task "
            f"names to tables of arguments, e.g. {example}"
        )
    tasks = {}
    for name in names:
        value = task_args.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{args_key}.{name} must be a table of arguments, e.g. {{{name} = {{max_digits = 4}}}}; got {_short(value)}"
            )
        tasks[name] = check_task(name, value, key, f"{args_key}.{name}")
    return tasks


def check_rewards(names: list[str], task: Any, key: str) -> None:
    """Every reward name resolves (``r1kit.rewards.get_reward``)."""
    from r1kit.rewards import get_reward

    for name in names:
        try:
            get_reward(name, task)
        except (ValueError, ImportError, AttributeError) as err:
            raise ConfigError(f"{key}: {err}") from None


def check_splits(splits: Iterable[str], key: str) -> None:
    """Every split is one the tasks have (train, val, test)."""
    from r1kit.tasks import SPLITS

    for split in splits:
        if split not in SPLITS:
            raise ConfigError(
                f"{key}: {split!r} is not a split{_did_you_mean(split, SPLITS) or ';'} splits: {', '.join(SPLITS)}"
            )


def check_files(paths: Iterable[str], key: str) -> None:
    """Every path is a readable regular file (a device or a FIFO would block or never end)."""
    for path in map(Path, paths):
        if path.is_dir():
            raise ConfigError(f"{key}: {path} is a directory; list the files themselves")
        if path.exists() and not path.is_file():
            raise ConfigError(f"{key}: {path} is not a regular file (a device or a FIFO); give a file")
        if not path.is_file():
            raise ConfigError(f"{key}: {path} does not exist; check the path (relative to {Path.cwd()})")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{key}: {path} is not readable")


def check_output_path(path: str, key: str, *, directory: bool) -> None:
    """``path`` can be created or written: not a file where a directory is wanted (or the reverse),
    and the nearest existing parent is writable."""
    p = Path(path)
    if directory and p.exists() and not p.is_dir():
        raise ConfigError(f"{key}: {p} is a file; give a directory path (e.g. runs/my_run)")
    if not directory and p.is_dir():
        raise ConfigError(f"{key}: {p} is a directory; give a file path (e.g. {p}/out.jsonl)")
    parent = p if p.exists() else p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{key}: {parent} is a file, so {p} cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {parent} is not writable; choose another path")


def check_run_dir(run_dir: str, resume: bool, key: str, resume_key: str) -> None:
    """A fresh run needs a run directory without checkpoints; a resumed one a complete checkpoint if
    it has any (see ``r1kit.train.checkpoint.checkpoint_problem``)."""
    import warnings

    from r1kit.train.checkpoint import all_checkpoints, checkpoint_problem, latest_checkpoint

    check_output_path(run_dir, key, directory=True)
    found = all_checkpoints(run_dir)
    if not found:
        return
    if not resume:
        raise ConfigError(
            f"{run_dir} already holds checkpoints (latest {found[-1].name}); pass --{resume_key} true to "
            f"continue that run, or choose a new --{key}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        complete = latest_checkpoint(run_dir)
    if complete is None:
        raise ConfigError(
            f"{run_dir} holds no complete checkpoint to resume ({found[-1].name}: "
            f"{checkpoint_problem(found[-1])}); choose a new --{key}, or drop --{resume_key}"
        )


def check_resume_matches(config: Any, run_dir: str, keys: Iterable[str], resume_key: str) -> None:
    """On a resume, the settings a checkpoint depends on (the model, the tokenizer, the data order)
    must be the run's own, as recorded in ``run_dir/config.toml``; a change would only fail (or
    silently differ) after the run directory was touched."""
    from r1kit.config import config_to_dict, load_config

    recorded = Path(run_dir) / "config.toml"
    if not recorded.is_file():
        return
    try:
        saved = config_to_dict(load_config(type(config), recorded))
    except ConfigError:
        return  # written by another version: the checkpoint load itself will tell
    now = config_to_dict(config)
    for dotted in keys:
        a, b = saved, now
        for part in dotted.split("."):
            a, b = a.get(part) if isinstance(a, dict) else None, b.get(part) if isinstance(b, dict) else None
        differs = _first_difference(a, b, dotted)
        if differs is not None:
            where, old, new = differs
            raise ConfigError(
                f"--{resume_key} true but {where} = {_short(new)} differs from the run's {_short(old)} "
                f"(in {recorded}); resume with the run's own value, or start a new run directory"
            )


def _first_difference(old: Any, new: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first ``(dotted key, old, new)`` where two nested dicts differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*old, *(k for k in new if k not in old)]:
            found = _first_difference(old.get(k), new.get(k), f"{path}.{k}")
            if found is not None:
                return found
        return None
    return None if old == new else (path, old, new)


# settings a supervised checkpoint depends on
_RESUME_KEYS = ("model", "tokenizer", "train.batch_size", "train.seed")

# ----------------------------------------------------------------------------------------------
# per stage


def _train(train: Any, prefix: str = "train") -> None:
    check_device(train.device, f"{prefix}.device")


def _model_section(model: Any, tokenizer: Any, key: str, device: str) -> None:
    if model.init:
        check_model_dir(model.init, f"{key}.init", run_dirs=False)
        return
    vocab = tokenizer.vocab_size if tokenizer is not None else 512
    cfg = check_model_preset(model.preset, model.overrides, key, vocab_size=vocab)
    check_model_fits(cfg, device, key)
    given = model.overrides.get("vocab_size")
    if (
        tokenizer is not None
        and given is not None
        and not tokenizer.path
        and int(given) < tokenizer.vocab_size
    ):
        raise ConfigError(
            f"{key}.overrides.vocab_size = {given} is smaller than tokenizer.vocab_size = {tokenizer.vocab_size}; "
            f"drop it (it defaults to the tokenizer's) or raise it"
        )


def _tokenizer_section(tokenizer: Any, model: Any) -> None:
    if tokenizer.path:
        check_tokenizer_dir(tokenizer.path, "tokenizer.path")
    elif not (model.init and (Path(model.init) / "tokenizer.json").is_file()):
        check_vocab_size(tokenizer.vocab_size, "tokenizer.vocab_size")


def _val(val: Any) -> None:
    if val.every and val.task:
        check_named_tasks([val.task], val.task_args, "val.task", "val.task_args")


def _supervised(config: Any) -> None:
    _train(config.train)
    _tokenizer_section(config.tokenizer, config.model)
    _model_section(config.model, config.tokenizer, "model", config.train.device)
    data = config.data
    if data.files:
        check_files(data.files, "data.files")
    else:
        check_named_tasks([data.task], data.task_args, "data.task", "data.task_args")
    _val(config.val)
    check_run_dir(config.run.dir, config.run.resume, "run.dir", "run.resume")
    if config.run.resume:
        check_resume_matches(config, config.run.dir, _RESUME_KEYS, "run.resume")


def _grpo(config: Any) -> None:
    _train(config.train)
    check_model_dir(config.model.path, "model.path")
    check_tokenizer_dir(config.model.tokenizer, "model.tokenizer")
    tasks = check_named_tasks([config.data.task], config.data.task_args, "data.task", "data.task_args")
    check_rewards(config.reward.names, tasks[config.data.task], "reward.names")
    check_run_dir(config.run.dir, config.run.resume, "run.dir", "run.resume")


def _eval(config: Any) -> None:
    check_device(config.run.device, "run.device")
    check_model_dir(config.model.path, "model.path")
    check_tokenizer_dir(config.model.tokenizer, "model.tokenizer")
    check_named_tasks(config.data.tasks, config.data.task_args, "data.tasks", "data.task_args")
    check_splits(config.data.splits, "data.splits")
    check_output_path(config.run.dir, "run.dir", directory=True)


def _sample(config: Any) -> None:
    check_device(config.train.device, "train.device")
    check_model_dir(config.teacher.path, "teacher.path")
    check_tokenizer_dir(config.teacher.tokenizer, "teacher.tokenizer")
    check_named_tasks(config.sample.tasks, config.sample.task_args, "sample.tasks", "sample.task_args")
    check_splits([config.sample.split], "sample.split")
    check_output_path(config.sample.out, "sample.out", directory=False)


def _on_policy(config: Any) -> None:
    """On-policy distillation samples one task's prompts, train.batch_size completions per step."""
    tasks, d, t = config.sample.tasks, config.distill, config.train
    if len(tasks) != 1:
        raise ConfigError(
            f"distill.method = 'on_policy' samples one task's prompts; sample.tasks has {len(tasks)}: give one, "
            f"e.g. --sample.tasks '[\"addition\"]'"
        )
    if t.batch_size % d.samples_per_prompt:
        raise ConfigError(
            f"train.batch_size ({t.batch_size}) must be a multiple of distill.samples_per_prompt "
            f"({d.samples_per_prompt}): it counts the completions of a step"
        )
    if t.strategy == "fsdp2":
        raise ConfigError(
            "distill.method = 'on_policy' samples with the unsharded student: use --train.strategy ddp"
        )


def _distill(config: Any) -> None:
    _train(config.train)
    files = list(config.distill.files)
    on_policy = config.distill.method == "on_policy"  # the student samples: no trace file
    if on_policy:
        _on_policy(config)
    elif files:
        check_files(files, "distill.files")
    elif not Path(config.sample.out).is_file():
        raise ConfigError(
            f"no trace file {config.sample.out}: run `r1kit sample` with the same config first, or set "
            f"distill.files"
        )
    if config.teacher.path:
        check_model_dir(config.teacher.path, "teacher.path")
        check_tokenizer_dir(config.teacher.tokenizer, "teacher.tokenizer")
    elif config.distill.method in ("logits", "on_policy"):
        what = (
            "the teacher's logits" if config.distill.method == "logits" else "the teacher scores the samples"
        )
        raise ConfigError(f"distill.method = '{config.distill.method}' needs teacher.path ({what})")
    check_tokenizer_dir(config.distill.tokenizer, "distill.tokenizer")
    student = config.student
    if student.init:
        check_model_dir(student.init, "student.init", run_dirs=False)
    else:
        cfg = check_model_preset(student.preset, student.overrides, "student")
        check_model_fits(cfg, config.train.device, "student")
    check_named_tasks(config.sample.tasks, config.sample.task_args, "sample.tasks", "sample.task_args")
    _val(config.val)
    check_run_dir(config.run.dir, config.run.resume, "run.dir", "run.resume")
    if config.run.resume:
        check_resume_matches(
            config, config.run.dir, ("student", "train.batch_size", "train.seed"), "run.resume"
        )
    if config.run.resume:
        check_resume_matches(config, config.run.dir, _RESUME_KEYS, "run.resume")


def _demo(config: Any) -> None:
    check_device(config.device, "device")
    check_output_path(config.run_dir, "run_dir", directory=True)


STAGE_CHECKS = {
    "pretrain": _supervised,
    "sft": _supervised,
    "grpo": _grpo,
    "eval": _eval,
    "sample": _sample,
    "distill": _distill,
    "demo": _demo,
}


def preflight(stage: str, config: Any) -> None:
    """Check ``config`` of ``stage`` ("pretrain", "sft", "grpo", "eval", "sample", "distill", "demo")
    against the machine and the filesystem; raises :class:`r1kit.config.ConfigError` naming the key
    and the fix. Stages without checks here (serve, chat, info) pass through."""
    check = STAGE_CHECKS.get(stage)
    if check is not None:
        check(config)
