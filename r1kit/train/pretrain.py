"""`r1kit pretrain`: next-token pretraining on packed token streams.

The corpus is text/JSONL files or a task's worked solutions rendered as plain text; the tokenizer
is loaded or trained on that corpus; the model comes from a preset (plus field overrides) or an
existing model directory. The loop, checkpoints, resume, cost accounting and torchrun support are
:func:`r1kit.train.loop.fit`'s.

    r1kit pretrain configs/pretrain_tiny.toml --train.steps 500 --run.dir runs/pt
    torchrun --nproc_per_node 2 -m r1kit.cli pretrain configs/pretrain_tiny.toml --train.strategy ddp

Optional early stop on accuracy (``[val]``, :class:`ValSection`): every ``val.every`` steps the model
greedily completes ``val.problems`` held-out problems (split ``val.split``) with
``r1kit.engine.Engine``, the task scores them, ``val_accuracy`` is logged, and training stops (with a
checkpoint and the final model) the first time it reaches ``val.target_accuracy``.

The ``ModelSection`` / ``TokenizerSection`` / ``ValSection`` sections live in
:mod:`r1kit.train.sections` (re-exported here); their builders below are shared with ``r1kit.train.sft``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from r1kit.loaders import resolve_device, set_threads
from r1kit.train.loop import (
    DistInfo,
    RunConfig,
    TrainConfig,
    cleanup_distributed,
    fit,
    prepare_run_dir,
    setup_distributed,
)
from r1kit.train.sections import (  # shared with SFT, distill
    ModelSection,
    TokenizerSection,
    ValSection,
    check_task_args,
)


@dataclass
class PretrainData:
    """[data] the pretraining corpus.

    files (list[str]): text files (one document each) or JSONL files (one document per line, in text_field);
        empty = generate the corpus from task.
    text_field (str): the JSONL field holding the text.
    task (str): task whose problems, with their worked solutions as plain text, form the corpus when files
        is empty ("addition", "multiplication", "countdown", ...; see r1kit.tasks.get_task).
    task_args (dict): keyword arguments of the task keyed by its name, e.g.
        {addition = {min_digits = 1, max_digits = 4}}.
    num_examples (int): problems drawn from the task's train split.
    seed (int): seed of that draw; -1 = train.seed.
    seq_len (int): tokens per training sequence (documents are packed, separated by EOS).
    """

    files: list[str] = field(default_factory=list)
    text_field: str = "text"
    task: str = "addition"
    task_args: dict[str, Any] = field(default_factory=dict)
    num_examples: int = 20000
    seed: int = -1
    seq_len: int = 128

    def __post_init__(self) -> None:
        from r1kit.config import check_positive

        check_positive(self.num_examples, "data.num_examples")
        check_positive(self.seq_len, "data.seq_len")
        check_task_args(self.task_args, "data.task_args", [self.task])


@dataclass
class Config:
    """`r1kit pretrain`: next-token pretraining on packed token streams (sections below)."""

    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: PretrainData = field(default_factory=PretrainData)
    val: ValSection = field(default_factory=ValSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/pretrain"))


def load_tokenizer(section: TokenizerSection, model: ModelSection, resume_from: Path | None, texts: Any):
    """The tokenizer of a run: the resumed checkpoint's, ``section.path``, ``model.init``'s, else one
    trained on ``texts`` (an iterable of strings, or a zero-argument callable returning one)."""
    from r1kit.tokenizer import Tokenizer

    for directory in (resume_from, section.path, model.init):
        if directory and (Path(directory) / "tokenizer.json").is_file():
            return Tokenizer.from_pretrained(directory)
    if section.path:
        raise FileNotFoundError(f"no tokenizer.json in tokenizer.path {section.path!r}")
    return Tokenizer.train(texts() if callable(texts) else texts, vocab_size=section.vocab_size)


def build_model(section: ModelSection, tokenizer: Any, device: torch.device, seed: int):
    """A Transformer on ``device``: loaded from ``section.init``, else a seeded random init of the preset
    with ``section.overrides`` (vocab_size defaults to the tokenizer's; special token ids are recorded)."""
    from r1kit.model import ModelConfig, Transformer

    if section.init:
        model = Transformer.from_pretrained(section.init, device=device, dtype=torch.float32)
        if model.config.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"model {section.init} has vocab_size {model.config.vocab_size} < the tokenizer's {tokenizer.vocab_size}"
            )
        return model
    fields = {
        "vocab_size": tokenizer.vocab_size,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        **section.overrides,
    }
    cfg = ModelConfig.preset(section.preset, **fields)
    torch.manual_seed(seed)
    return Transformer(cfg).to(device)


def start_stage(train: TrainConfig) -> tuple[DistInfo, torch.device]:
    """Process set-up shared by the stages: torch.distributed (under torchrun), device, CPU threads."""
    dist = setup_distributed(train.device)
    set_threads(train.threads)
    return dist, resolve_device(train.device, dist)


def corpus_texts(data: PretrainData, seed: int) -> list[str]:
    """The documents of the corpus: ``data.files``, else the task's problems as plain text
    (``data.seed``, or ``seed`` when that is -1, seeds the draw)."""
    from r1kit.train.data import problem_text, read_texts

    if data.files:
        return read_texts(data.files, data.text_field)
    from r1kit.tasks import get_task, task_kwargs

    task = get_task(data.task, **task_kwargs(data.task_args, data.task))
    draw_seed = seed if data.seed < 0 else data.seed
    return [problem_text(task, p) for p in task.problems(split="train", n=data.num_examples, seed=draw_seed)]


def greedy_validator(
    val: ValSection,
    task_name: str,
    task_args: dict[str, Any],
    tokenizer: Any,
    *,
    prompt: str = "chat",
    system: str = "",
    seed: int = 0,
):
    """``validate(model, step) -> {"val_accuracy", "val_length"}``: greedy decoding of held-out problems.

    The problems (``val.problems`` of split ``val.split`` of ``val.task``, else ``task_name``) are
    drawn once; each validation completes them all in one batched generate call through the evaluation
    core (``r1kit.evaluate.evaluate_engine``: temperature 0, ``val.max_new_tokens``, stop at EOS) and
    averages ``task.score(text, problem)`` (partial credit counts). ``val_length`` is the mean completion
    length in tokens.

    Args:
        task_name, task_args: the stage's task and its ``task_args`` (keyed by task name, as every stage's
            config), used when ``val.task`` is empty.
        prompt: "chat" (the chat template with the generation prompt), "r1" (the same with R1's system
            prompt and `<think>` opened, `Tokenizer.render_prompt`) or "text" (BOS + system + prompt +
            newline, the layout of :func:`r1kit.train.data.problem_text` documents).
        system: system prompt put before each problem ("" = none).
    """
    from r1kit.engine import Engine
    from r1kit.evaluate import EvalParams, evaluate_engine, render_prompts
    from r1kit.tasks import get_task, task_kwargs

    name = val.task or task_name
    task = get_task(name, **task_kwargs(val.task_args if val.task else task_args, name))
    problems = task.problems(split=val.split, n=val.problems, seed=seed)
    prompt_ids = render_prompts(tokenizer, problems, prompt if prompt in ("chat", "r1") else "text", system)
    # seed None as ever: the engine draws the (unused) greedy seed from torch's RNG, once per call
    params = EvalParams(k=0, greedy=True, max_new_tokens=val.max_new_tokens, seed=None)

    def validate(model: torch.nn.Module, step: int) -> dict[str, float]:
        (result,) = evaluate_engine(
            Engine(model, tokenizer), tokenizer, task, problems, params, prompt_ids=prompt_ids
        )
        scores = [r["greedy"]["score"] for r in result.records]
        return {
            "val_accuracy": sum(scores) / len(scores),
            "val_length": result.timing["generated_tokens"] / len(problems),
        }

    return validate


def validation_hooks(
    val: ValSection, task_name: str, task_args: dict[str, Any], tokenizer: Any, *, stage_prompt: str, **kwargs
):
    """``(validate, should_stop)`` for :func:`r1kit.train.loop.fit` from a [val] section ((None, None) when
    ``val.every`` is 0). ``should_stop`` returns a reason once ``val_accuracy >= val.target_accuracy > 0``.
    ``stage_prompt`` is what "auto" means for this stage; other keyword arguments go to
    :func:`greedy_validator`."""
    if not val.every:
        return None, None
    prompt = stage_prompt if val.prompt == "auto" else val.prompt
    validate = greedy_validator(val, task_name, task_args, tokenizer, prompt=prompt, **kwargs)
    target = val.target_accuracy

    def should_stop(metrics: dict[str, float]) -> str | None:
        if target > 0 and metrics["val_accuracy"] >= target:
            return f"val_accuracy {metrics['val_accuracy']:.3f} >= target {target}"
        return None

    return validate, should_stop


def batch_stream(dataset: Any, train: TrainConfig, dist: DistInfo, pad_id: int = 0):
    """This rank's :class:`r1kit.train.data.BatchStream` over ``dataset`` with [train]'s batch sizes and
    seed (shared by pretrain, SFT and logit distillation)."""
    from r1kit.train.data import BatchStream

    return BatchStream(
        dataset,
        train.batch_size,
        train.micro_batch_size,
        seed=train.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        pad_id=pad_id,
    )


def fit_stage(
    config: Any,
    dataset: Any,
    tokenizer: Any,
    *,
    dist: DistInfo,
    device: torch.device,
    resume_from: Path | None,
    stage: str,
    stage_prompt: str,
    system: str = "",
    console: Any = None,
    model: torch.nn.Module | None = None,
    data: Any = None,
    make_stage: Any = None,
):
    """The common tail of pretrain, SFT and logit distillation: build the model of ``config.model``
    (seeded by ``config.train.seed``; or take ``model``), batch ``dataset`` for this rank, set up the
    [val] hooks (:func:`validation_hooks` on ``data`` — default ``config.data`` — with ``stage_prompt``
    and ``system``) and run :func:`r1kit.train.loop.fit` (with ``make_stage``'s stage when given).
    ``config`` (written to the run's config.toml) has ``val``, ``train`` and ``run``; ``data`` has
    ``task`` and ``task_args``."""
    if model is None:
        model = build_model(config.model, tokenizer, device, config.train.seed)
    data = config.data if data is None else data
    # right-padding with the tokenizer's pad id (pretrain's packed windows are all one length, never padded)
    batches = batch_stream(dataset, config.train, dist, tokenizer.pad_id or 0)
    validate, should_stop = validation_hooks(
        config.val,
        data.task,
        data.task_args,
        tokenizer,
        stage_prompt=stage_prompt,
        system=system,
        seed=config.train.seed,
    )
    return fit(
        model,
        batches,
        config.train,
        config.run,
        dist=dist,
        device=device,
        stage=stage,
        resume_from=resume_from,
        config=config,
        tokenizer=tokenizer,
        validate=validate,
        validate_every=config.val.every,
        should_stop=should_stop,
        console=console,
        make_stage=make_stage,
    )


def run(config: Config, console: Any = None):
    """Pretrain a model; returns a :class:`r1kit.train.result.RunResult` (``model_dir``, ``steps``,
    ``tokens``, ``metrics_path``, ``metrics`` with loss / val_accuracy / stopped_early, ``cost``).

    The run directory receives config.toml, metrics.jsonl, loss.png, checkpoints/ and model/ (the final
    model and tokenizer in HF layout). Works the same under torchrun (rank 0 writes).
    """
    from r1kit.train.data import PackedWindows, pack_documents

    dist, device = start_stage(config.train)
    try:
        resume_from = prepare_run_dir(config.run)
        texts = corpus_texts(config.data, config.train.seed)
        tokenizer = load_tokenizer(config.tokenizer, config.model, resume_from, texts)
        stream = pack_documents(tokenizer.encode_batch(texts), tokenizer.eos_id, tokenizer.bos_id)
        windows = PackedWindows(stream, config.data.seq_len)
        return fit_stage(
            config,
            windows,
            tokenizer,
            dist=dist,
            device=device,
            resume_from=resume_from,
            stage="pretrain",
            stage_prompt="text",
            console=console,
        )
    finally:
        cleanup_distributed(dist)
