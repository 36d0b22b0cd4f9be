"""Every mistake a user can make on the command line is one line on stderr and exit status 2, never a
traceback, and leaves the files it names as they were.

Each case of ``CASES`` runs ``r1kit.cli.main`` in-process on the tiny configs of ``configs/`` with one
thing wrong, and checks: status 2, exactly one non-empty stderr line, no "Traceback", the hint the
line must carry (the key and what to type instead), the existing run directory unchanged (file
names, sizes and modification times) and no fresh run directory created. One case runs as a real
process to check the exit status end to end.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from r1kit import cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SMALL = [
    "--model.overrides",
    "{hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2, "
    "num_key_value_heads = 2}",
    "--tokenizer.vocab_size",
    "300",
    "--data.num_examples",
    "50",
    "--train.batch_size",
    "4",
    "--train.device",
    "cpu",
    "--run.progress",
    "false",
    "--train.steps",
    "1",
]
PRETRAIN = ["pretrain", str(CONFIGS / "pretrain_tiny.toml"), *SMALL, "--data.seq_len", "32"]
SFT = ["sft", str(CONFIGS / "sft_tiny.toml"), *SMALL, "--val.every", "0"]
GRPO = [
    "grpo",
    str(CONFIGS / "grpo_tiny.toml"),
    "--model.path",
    "@RUN",
    "--train.steps",
    "1",
    "--train.device",
    "cpu",
]
EVAL = ["eval", str(CONFIGS / "eval_tiny.toml"), "--model.path", "@RUN", "--data.problems", "2"]
SAMPLE = ["sample", str(CONFIGS / "distill_tiny.toml"), "--teacher.path", "@RUN", "--sample.prompts", "2"]
DISTILL = ["distill", str(CONFIGS / "distill_tiny.toml"), "--teacher.path", "@RUN", "--train.device", "cpu"]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
SMALLER = "{hidden_size = 64, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 2}"


# ----------------------------------------------------------------------------------------------
# corruptions of a copy of the run's only checkpoint (@COPY)


def _truncate(name: str) -> Callable[[Path], None]:
    def corrupt(ckpt: Path) -> None:
        path = ckpt / name
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size // 2)

    return corrupt


def _garbage(name: str) -> Callable[[Path], None]:
    return lambda ckpt: (ckpt / name).write_text("garbage{", encoding="utf-8")


def _remove(name: str) -> Callable[[Path], None]:
    return lambda ckpt: (ckpt / name).unlink()


def _unchanged(ckpt: Path) -> None:
    pass


# (id, argv with @RUN / @F (files) / @FRESH / @COPY placeholders, regex the one line must match,
#  corruption of @COPY's checkpoint or None)
CASES: list[tuple[str, list[str], str, Callable[[Path], None] | None]] = [
    # config files and overrides
    (
        "config-is-dir",
        ["pretrain", str(CONFIGS)],
        r"is a directory: give a TOML file; e.g. .*pretrain_tiny.toml",
        None,
    ),
    (
        "config-missing",
        ["pretrain", "@F/nope.toml"],
        r"nope.toml does not exist; TOML files in .*bad.toml",
        None,
    ),
    ("config-bad-toml", ["pretrain", "@F/bad.toml"], r"bad.toml: invalid TOML", None),
    (
        "unknown-key",
        [*PRETRAIN, "--train.lrate", "0.1"],
        r"unknown key 'train.lrate'.*Valid in \[train\]: .*\blr\b",
        None,
    ),
    (
        "unknown-section",
        [*PRETRAIN, "--optimizer.lr", "0.1"],
        r"unknown section 'optimizer'.*sections .*train",
        None,
    ),
    (
        "renamed-key",
        [*PRETRAIN, "--optim.lr", "0.1"],
        r": optim.lr \(from --optim.lr\) moved: use \[train\] lr \(--train.lr\)$",
        None,
    ),
    (
        "renamed-val-key",
        [*SFT, "--val.num_problems", "4"],
        r": val.num_problems .* moved: use \[val\] problems \(--val.problems\)$",
        None,
    ),
    ("missing-value", [*PRETRAIN, "--train.lr"], r"--train.lr is missing its value", None),
    ("bool", [*PRETRAIN, "--run.resume", "maybe"], r"run.resume .*expected a bool \(true/false", None),
    ("literal-typo", [*PRETRAIN, "--train.schedule", "cosin"], r"did you mean 'cosine'", None),
    (
        "steps-1e30",
        [*PRETRAIN, "--train.steps", "1e30"],
        r"train.steps .*too large to be an exact integer",
        None,
    ),
    ("steps-digits", [*PRETRAIN, "--train.steps", "9" * 30], r"train.steps .*out of range", None),
    ("steps-fraction", [*PRETRAIN, "--train.steps", "1.5"], r"train.steps .*expected int, got '1.5'", None),
    (
        "negative-batch",
        [*PRETRAIN, "--train.batch_size", "-4"],
        r"train.batch_size must be > 0, got -4",
        None,
    ),
    ("negative-seq-len", [*PRETRAIN, "--data.seq_len", "-1"], r"data.seq_len must be > 0", None),
    ("lr-nan", [*PRETRAIN, "--train.lr", "nan"], r"train.lr .*expected a finite number, got 'nan'", None),
    ("lr-inf", [*PRETRAIN, "--train.lr", "inf"], r"train.lr .*finite number", None),
    ("lr-minus-inf", [*PRETRAIN, "--train.lr", "-inf"], r"train.lr .*finite number", None),
    ("weight-decay-nan", [*PRETRAIN, "--train.weight_decay", "nan"], r"train.weight_decay .*finite", None),
    ("beta1", [*PRETRAIN, "--train.beta1", "2"], r"train.beta1 must be in \[0, 1\), got 2.0", None),
    ("eps", [*PRETRAIN, "--train.eps", "-1"], r"train.eps must be > 0", None),
    ("threads", [*PRETRAIN, "--train.threads", "-1"], r"train.threads must be >= 0", None),
    ("keep-last", [*PRETRAIN, "--run.keep_last", "0"], r"run.keep_last must be > 0", None),
    (
        "micro-batch",
        [*PRETRAIN, "--train.micro_batch_size", "3"],
        r"micro_batch_size 3; use one of 1, 2, 4",
        None,
    ),
    ("steps-zero", [*PRETRAIN, "--train.steps", "0"], r"train.steps must be > 0, got 0", None),
    ("config-binary", ["pretrain", "@F/binary.jsonl"], r"config file .*binary.jsonl cannot be read", None),
    # models, presets, tokenizers
    (
        "unknown-preset",
        [*PRETRAIN, "--model.preset", "nope"],
        r"model.preset 'nope' is not a preset; presets: tiny-llama",
        None,
    ),
    ("preset-typo", [*PRETRAIN, "--model.preset", "tiny-lama"], r"did you mean 'tiny-llama'", None),
    (
        "override-field",
        [*PRETRAIN, "--model.overrides", "{hidden_sizee = 32}"],
        r"'hidden_sizee' is not a model field; did you mean 'hidden_size'",
        None,
    ),
    (
        "override-type",
        [*PRETRAIN, "--model.overrides", "{hidden_size = 'big'}"],
        r"model.overrides.hidden_size.*expected int",
        None,
    ),
    (
        "override-negative",
        [*PRETRAIN, "--model.overrides", "{hidden_size = -32}"],
        r"model.overrides.hidden_size must be >= 1, got -32",
        None,
    ),
    (
        "override-heads",
        [*PRETRAIN, "--model.overrides", "{num_attention_heads = 3}"],
        r"num_attention_heads=3 is not a multiple of num_key_value_heads",
        None,
    ),
    (
        "override-huge-width",
        [*PRETRAIN, "--model.overrides", "{hidden_size = 1000000}"],
        r"hidden_size 1000000 x 4 layers .*needs at least \d+\.\d GiB to train, more than .*check model.overrides",
        None,
    ),
    (
        "override-huge-depth",
        [*PRETRAIN, "--model.overrides", "{num_hidden_layers = 100000000}"],
        r"x 100000000 layers .*GiB to train",
        None,
    ),
    (
        "override-vocab",
        [*PRETRAIN, "--model.overrides", "{vocab_size = 10}"],
        r"vocab_size = 10 is smaller than tokenizer.vocab_size = 300; drop it",
        None,
    ),
    (
        "vocab-too-small",
        [*PRETRAIN, "--tokenizer.vocab_size", "100"],
        r"tokenizer.vocab_size = 100 is below the minimum 264.*--tokenizer.vocab_size 264",
        None,
    ),
    (
        "tokenizer-missing",
        [*PRETRAIN, "--tokenizer.path", "@F/nope"],
        r"tokenizer.path: no tokenizer.json in",
        None,
    ),
    (
        "tokenizer-garbage",
        [*PRETRAIN, "--tokenizer.path", "@F/garbage_tok"],
        r"tokenizer.json cannot be loaded",
        None,
    ),
    ("init-missing", [*SFT, "--model.init", "@F/nope"], r"model.init: .*nope does not exist", None),
    (
        "init-run-dir",
        [*SFT, "--model.init", "@RUN"],
        r"is a run directory; give its model: --model.init .*run/model",
        None,
    ),
    ("init-a-file", [*SFT, "--model.init", "@F/afile"], r"model.init: .*afile is a file", None),
    ("init-truncated", [*SFT, "--model.init", "@F/trunc_model"], r"model.safetensors is truncated", None),
    ("init-garbage-config", [*SFT, "--model.init", "@F/garbage_cfg"], r"config.json is not valid JSON", None),
    (
        "override-family",
        [*PRETRAIN, "--model.overrides", "{family = 'gpt'}"],
        r"model.overrides: unknown family 'gpt'; supported: llama",
        None,
    ),
    (
        "override-mtp",
        [*PRETRAIN, "--model.overrides", "{num_mtp_layers = 2}"],
        r"num_mtp_layers must be 0 or 1",
        None,
    ),
    # devices
    pytest.param(
        *(
            "cuda",
            [*PRETRAIN, "--train.device", "cuda"],
            r"no CUDA GPU on this machine; use --train.device cpu",
            None,
        ),
        marks=NO_GPU,
    ),
    pytest.param(
        *("cuda-index", [*PRETRAIN, "--train.device", "cuda:7"], r"train.device = 'cuda:7'", None),
        marks=NO_GPU,
    ),
    (
        "bogus-device",
        [*PRETRAIN, "--train.device", "tpu"],
        r"train.device = 'tpu' is not a device; use auto, cpu",
        None,
    ),
    # tasks
    (
        "unknown-task",
        [*PRETRAIN, "--data.task", "nope"],
        r"data.task: unknown task 'nope'; valid names: addition",
        None,
    ),
    ("task-typo", [*PRETRAIN, "--data.task", "additon"], r"did you mean 'addition'", None),
    (
        "task-args-key",
        [*PRETRAIN, "--data.task_args", "{addition = {foo = 1}}"],
        r"data.task_args.addition = \{'foo': 1\}: .*addition takes .*max_digits",
        None,
    ),
    (
        "task-args-value",
        [*PRETRAIN, "--data.task_args", "{addition = {min_digits = 5, max_digits = 2}}"],
        r"data.task = 'addition' .*digit range",
        None,
    ),
    ("task-args-not-table", [*PRETRAIN, "--data.task_args", "5"], r"data.task_args .*expected a table", None),
    (
        "task-args-flat",
        [*PRETRAIN, "--data.task_args", "{max_digits = 3}"],
        r": data.task_args is keyed by task name: use task_args = \{addition = \{max_digits = 3\}\}",
        None,
    ),
    (
        "task-args-other-task",
        [*PRETRAIN, "--data.task_args", "{countdown = {}}"],
        r"data.task_args has 'countdown', which is not one of data.task \(addition\)",
        None,
    ),
    (
        "task-digits",
        [*PRETRAIN, "--data.task_args", "{addition = {max_digits = 100000}}"],
        r"digit range must satisfy",
        None,
    ),
    (
        "gym-unknown",
        [*PRETRAIN, "--data.task", "gym:nope_dataset", "--data.task_args", "{}"],
        r"unknown reasoning-gym dataset 'nope_dataset'; available: ",
        None,
    ),
    (
        "jsonl-task-missing",
        [*PRETRAIN, "--data.task", "jsonl:@F/nope.jsonl", "--data.task_args", "{}"],
        r"data.task = 'jsonl:.*nope.jsonl: no such file",
        None,
    ),
    (
        "math-task-bad-line",
        [*PRETRAIN, "--data.task", "math:@F/bad.jsonl", "--data.task_args", "{}"],
        r"bad.jsonl:3: invalid JSON",
        None,
    ),
    (
        "val-unknown-task",
        [*PRETRAIN, "--val.every", "1", "--val.task", "nope"],
        r"val.task: unknown task 'nope'",
        None,
    ),
    (
        "val-split",
        [*PRETRAIN, "--val.every", "1", "--val.split", "nope"],
        r"val.split must be 'train', 'val' or 'test'",
        None,
    ),
    (
        "data-file-is-fifo",
        [*PRETRAIN, "--data.files", '["@F/fifo"]'],
        r"fifo is not a regular file \(a device or a FIFO\)",
        None,
    ),
    # data files
    (
        "data-file-missing",
        [*PRETRAIN, "--data.files", '["@F/nope.txt"]'],
        r"data.files: .*nope.txt does not exist",
        None,
    ),
    (
        "data-file-is-dir",
        [*PRETRAIN, "--data.files", '["@F"]'],
        r"data.files: .* is a directory; list the files",
        None,
    ),
    (
        "pretrain-bad-jsonl",
        [*PRETRAIN, "--data.files", '["@F/bad.jsonl"]'],
        r"bad.jsonl:3: not valid JSON",
        None,
    ),
    (
        "pretrain-no-text-field",
        [*PRETRAIN, "--data.files", '["@F/other.jsonl"]'],
        r"other.jsonl:1: no 'text' .*set data.text_field",
        None,
    ),
    ("sft-bad-jsonl", [*SFT, "--data.files", '["@F/bad.jsonl"]'], r"bad.jsonl:3: not valid JSON", None),
    (
        "sft-no-messages",
        [*SFT, "--data.files", '["@F/other.jsonl"]'],
        r"other.jsonl:1: expected a 'messages' field",
        None,
    ),
    (
        "sft-messages-string",
        [*SFT, "--data.files", '["@F/msgstr.jsonl"]'],
        r"msgstr.jsonl:1: 'messages' must be a non-empty list",
        None,
    ),
    (
        "sft-bad-role",
        [*SFT, "--data.files", '["@F/role.jsonl"]'],
        r"role.jsonl:2: turn 0 has role 'robot'; roles are system, user, assistant",
        None,
    ),
    (
        "sft-no-assistant",
        [*SFT, "--data.files", '["@F/noassist.jsonl"]'],
        r"noassist.jsonl:1: no assistant turn",
        None,
    ),
    (
        "sft-not-object",
        [*SFT, "--data.files", '["@F/list.jsonl"]'],
        r"list.jsonl:1: expected a JSON object, got list",
        None,
    ),
    ("sft-binary", [*SFT, "--data.files", '["@F/binary.jsonl"]'], r"binary.jsonl: is not UTF-8 text", None),
    (
        "sft-max-len",
        [*SFT, "--data.max_len", "1"],
        r"no conversation has an assistant token .*raise --data.max_len",
        None,
    ),
    # run directories and checkpoints
    (
        "run-dir-exists",
        [*PRETRAIN, "--run.dir", "@RUN"],
        r"already holds checkpoints \(latest step_00000002\); pass --run.resume true",
        None,
    ),
    (
        "run-dir-is-file",
        [*PRETRAIN, "--run.dir", "@F/afile"],
        r"run.dir: .*afile is a file; give a directory path",
        None,
    ),
    (
        "resume-truncated-weights",
        [*PRETRAIN, "--run.dir", "@COPY", "--run.resume", "true"],
        r"no complete checkpoint to resume \(step_00000002: model.safetensors is truncated",
        _truncate("model.safetensors"),
    ),
    (
        "resume-truncated-state",
        [*PRETRAIN, "--run.dir", "@COPY", "--run.resume", "true"],
        r"step_00000002: trainer_state.pt is truncated or changed",
        _truncate("trainer_state.pt"),
    ),
    (
        "resume-garbage-state",
        [*PRETRAIN, "--run.dir", "@COPY", "--run.resume", "true"],
        r"step_00000002: trainer_state.pt",
        _garbage("trainer_state.pt"),
    ),
    (
        "resume-garbage-config",
        [*PRETRAIN, "--run.dir", "@COPY", "--run.resume", "true"],
        r"step_00000002: config.json",
        _garbage("config.json"),
    ),
    (
        "resume-no-weights",
        [*PRETRAIN, "--run.dir", "@COPY", "--run.resume", "true"],
        r"\(step_00000002: model.safetensors is missing\); choose a new --run.dir",
        _remove("model.safetensors"),
    ),
    (
        "resume-other-model",
        [*PRETRAIN, "--model.overrides", SMALLER, "--run.dir", "@COPY", "--run.resume", "true"],
        r"model.overrides.hidden_size = 64 differs from the run's 32",
        _unchanged,
    ),
    (
        "resume-other-batch",
        [*PRETRAIN, "--train.batch_size", "8", "--run.dir", "@COPY", "--run.resume", "true"],
        r"train.batch_size = 8 differs from the run's 4",
        _unchanged,
    ),
    (
        "diverged",
        [*PRETRAIN, "--train.lr", "1e30", "--train.warmup_steps", "0", "--train.steps", "3"],
        r"training stopped at step \d: the .* is (nan|inf).*lower learning rate",
        None,
    ),
    # demo (--quick: were a check to let one through, it would run minutes, not a quarter of an hour)
    (
        "demo-bogus-device",
        ["demo", "--quick", "true", "--device", "tpu"],
        r"device = 'tpu' is not a device",
        None,
    ),
    (
        "demo-run-dir-is-file",
        ["demo", "--quick", "true", "--run_dir", "@F/afile"],
        r"run_dir: .*afile is a file",
        None,
    ),
    # grpo
    ("grpo-model-missing", [*GRPO, "--model.path", "@F/nope"], r"model.path: .*nope does not exist", None),
    (
        "grpo-model-truncated",
        [*GRPO, "--model.path", "@F/trunc_model"],
        r"model.path: .*model.safetensors is truncated",
        None,
    ),
    ("grpo-unknown-task", [*GRPO, "--data.task", "nope"], r"data.task: unknown task 'nope'", None),
    (
        "grpo-task-args",
        [*GRPO, "--data.task_args", "{addition = {foo = 1}}"],
        r"data.task_args.addition = .*addition takes",
        None,
    ),
    (
        "grpo-task-args-flat",
        [*GRPO, "--data.task_args", "{foo = 1}"],
        r"use task_args = \{addition = \{foo = 1\}\}",
        None,
    ),
    (
        "grpo-old-key",
        [*GRPO, "--max_seconds", "5"],
        r": max_seconds .* moved: use \[train\] max_seconds \(--train.max_seconds\)$",
        None,
    ),
    (
        "grpo-reward",
        [*GRPO, "--reward.names", '["nope", "format"]'],
        r"reward.names: unknown reward 'nope'",
        None,
    ),
    ("grpo-group-size", [*GRPO, "--rollout.group_size", "0"], r"rollout.group_size must be > 0", None),
    ("grpo-lr-nan", [*GRPO, "--train.lr", "nan"], r"train.lr .*finite", None),
    ("grpo-beta2", [*GRPO, "--train.beta2", "1"], r"train.beta2 must be in \[0, 1\)", None),
    (
        "grpo-run-dir-exists",
        [*GRPO, "--run.dir", "@RUN"],
        r"already holds checkpoints .*pass --run.resume true .*--run.dir",
        None,
    ),
    pytest.param(
        *(
            "grpo-cuda",
            [*GRPO, "--train.device", "cuda"],
            r"train.device = 'cuda' but torch sees no CUDA GPU on this machine; use --train.device cpu",
            None,
        ),
        marks=NO_GPU,
    ),
    # eval, sample, distill
    ("eval-model-missing", [*EVAL, "--model.path", "@F/nope"], r"model.path: .*nope does not exist", None),
    ("eval-unknown-task", [*EVAL, "--data.tasks", '["nope"]'], r"data.tasks: unknown task 'nope'", None),
    (
        "eval-flat-task-args",
        [*EVAL, "--data.task_args", "{max_digits = 3}"],
        r"data.task_args is keyed by task name: use task_args = \{addition = \{max_digits = 3\}\}",
        None,
    ),
    (
        "eval-split",
        [*EVAL, "--data.splits", '["nope"]'],
        r"data.splits: 'nope' is not a split; splits: train, val, test",
        None,
    ),
    (
        "eval-ks",
        [*EVAL, "--sampling.ks", "[100]"],
        r"sampling.ks: every k must be in 1..sampling.k = 8",
        None,
    ),
    (
        "eval-dtype",
        [*EVAL, "--run.dtype", "fp8"],
        r"run.dtype .*'fp8' is not allowed; expected one of",
        None,
    ),
    (
        "eval-tokenizer-missing",
        [*EVAL, "--model.tokenizer", "@F/nope"],
        r"model.tokenizer: no tokenizer.json in",
        None,
    ),
    ("eval-temperature", [*EVAL, "--sampling.temperature", "-1"], r"sampling.temperature must be >= 0", None),
    ("eval-out-is-file", [*EVAL, "--run.dir", "@F/afile"], r"run.dir: .*afile is a file", None),
    (
        "sample-teacher-missing",
        [*SAMPLE, "--teacher.path", "@F/nope"],
        r"teacher.path: .*nope does not exist",
        None,
    ),
    (
        "sample-out-is-dir",
        [*SAMPLE, "--sample.out", "@F"],
        r"sample.out: .* is a directory; give a file path",
        None,
    ),
    ("sample-split", [*SAMPLE, "--sample.split", "dev"], r"sample.split: 'dev' is not a split", None),
    (
        "sample-unknown-task",
        [*SAMPLE, "--sample.tasks", '["nope"]'],
        r"sample.tasks: unknown task 'nope'",
        None,
    ),
    (
        "distill-no-traces",
        [*DISTILL, "--sample.out", "@F/nope.jsonl"],
        r"no trace file .*run `r1kit sample`",
        None,
    ),
    (
        "distill-preset",
        [*DISTILL, "--sample.out", "@F/traces.jsonl", "--student.preset", "nope"],
        r"student.preset 'nope' is not a preset",
        None,
    ),
    (
        "distill-logits-no-teacher",
        [*DISTILL, "--sample.out", "@F/traces.jsonl", "--teacher.path", "", "--distill.method", "logits"],
        r"needs teacher.path",
        None,
    ),
]


def _param(case):
    """A case as a pytest.param with its name as the test id (marks kept)."""
    if hasattr(case, "marks"):
        return pytest.param(*case.values, id=case.values[0], marks=case.marks)
    return pytest.param(*case, id=case[0])


CASES = [_param(case) for case in CASES]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step pretraining run (``run/``) and a folder of bad inputs (``files/``)."""
    root = tmp_path_factory.mktemp("usererr")
    assert cli.main([*PRETRAIN, "--train.steps", "2", "--run.dir", str(root / "run")]) == 0
    files = root / "files"
    files.mkdir()
    good = (
        '{"messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2</think>2"}]}\n'
    )
    (files / "bad.jsonl").write_text(good + good + '{"messages": [oops\n', encoding="utf-8")
    (files / "other.jsonl").write_text('{"prompt": "x"}\n', encoding="utf-8")
    (files / "msgstr.jsonl").write_text('{"messages": "hello"}\n', encoding="utf-8")
    (files / "role.jsonl").write_text(
        good + '{"messages": [{"role": "robot", "content": "x"}]}\n', encoding="utf-8"
    )
    (files / "noassist.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "x"}]}\n', encoding="utf-8"
    )
    (files / "list.jsonl").write_text("[1, 2]\n", encoding="utf-8")
    (files / "binary.jsonl").write_bytes(bytes(range(128, 256)) * 3)
    (files / "traces.jsonl").write_text(good, encoding="utf-8")
    (files / "bad.toml").write_text("x = [\n", encoding="utf-8")
    (files / "afile").write_text("", encoding="utf-8")
    os.mkfifo(files / "fifo")  # reading it would block forever: it must be refused unopened
    for name in ("trunc_model", "garbage_cfg", "garbage_tok"):
        shutil.copytree(root / "run" / "model", files / name)
    _truncate("model.safetensors")(files / "trunc_model")
    (files / "garbage_cfg" / "config.json").write_text('{"hidden_size": ', encoding="utf-8")
    (files / "garbage_tok" / "tokenizer.json").write_text("not json", encoding="utf-8")
    return root


@pytest.mark.parametrize(("name", "argv", "hint", "corrupt"), CASES)
def test_user_error_is_one_line_and_changes_nothing(
    name: str, argv: list[str], hint: str, corrupt, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    run = world / "run"
    copy = tmp_path / "copy"
    if corrupt is not None:
        shutil.copytree(run, copy)
        corrupt(copy / "checkpoints" / "step_00000002")
    fresh = tmp_path / "fresh"
    args = [
        a.replace("@RUN", str(run)).replace("@F", str(world / "files")).replace("@COPY", str(copy))
        for a in argv
    ]
    if argv[0] in ("pretrain", "sft", "distill", "grpo") and "--run.dir" not in argv:
        args += ["--run.dir", str(fresh)]
    if argv[0] == "eval" and "--run.dir" not in argv:
        args += ["--run.dir", str(fresh)]
    if argv[0] == "sample" and "--sample.out" not in argv:
        args += ["--sample.out", str(fresh / "traces.jsonl")]
    before, copy_before = _snapshot(run), _snapshot(copy)
    capsys.readouterr()

    status = cli.main(args)

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"r1kit {argv[0]}: "), lines[0]
    assert re.search(hint, lines[0]), lines[0]
    assert _snapshot(run) == before  # the finished run is untouched
    assert _snapshot(copy) == copy_before  # and so is the run a resume was refused on
    if name == "diverged":  # it ran: the guard stopped it before any checkpoint was written
        assert not (fresh / "checkpoints").exists() or not any((fresh / "checkpoints").glob("step_*"))
    else:
        assert not fresh.exists()  # nothing was written for a run that never started


def test_cases_cover_every_stage():
    ids = [case.id for case in CASES]
    stages = {case.values[1][0] for case in CASES}
    assert len(ids) == len(set(ids)) and len(ids) >= 100
    assert stages == {"pretrain", "sft", "grpo", "eval", "sample", "distill", "demo"}


def test_resume_skips_a_checkpoint_a_kill_left_without_weights(world: Path, tmp_path: Path):
    """A run whose newest checkpoint lost its weights (killed mid-prune) resumes from the one before."""
    run = tmp_path / "run"
    args = [*PRETRAIN, "--run.dir", str(run), "--run.save_every", "1", "--run.keep_last", "3"]
    assert cli.main([*args, "--train.steps", "2"]) == 0
    (run / "checkpoints" / "step_00000002" / "model.safetensors").unlink()
    with pytest.warns(
        UserWarning,
        match=r"step_00000002 is incomplete \(model.safetensors is missing\); using step_00000001",
    ):
        assert cli.main([*args, "--train.steps", "3", "--run.resume", "true"]) == 0
    from r1kit.train.log import read_metrics

    steps = [r["step"] for r in read_metrics(run)]
    assert steps[-2:] == [2, 3]  # steps 2 and 3 were (re)trained from step 1's state


def test_a_real_process_exits_2_with_one_line(world: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "r1kit.cli",
            *PRETRAIN,
            "--model.preset",
            "nope",
            "--run.dir",
            str(world / "x"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "r1kit pretrain: model.preset 'nope' is not a preset; presets: tiny-llama, tiny-v3"
    ]
