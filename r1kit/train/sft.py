"""`r1kit sft`: supervised fine-tuning on chat conversations, with loss on assistant tokens only.

Conversations come from JSONL files (``{"messages": [...]}`` per line) or a task's ``sft_messages``
(prompt + worked solution). ``Tokenizer.encode_chat`` gives the ids and the assistant mask; targets
outside assistant turns are ignored, so user/system/template tokens carry no loss. Batches are
right-padded per micro-batch (padding is masked from attention and loss).

Optional early stop on a validation metric ([val], :class:`r1kit.train.sections.ValSection`): every
``val.every`` steps the model greedily decodes ``val.problems`` held-out problems of the task
(split ``val.split``) with ``r1kit.engine.Engine`` and the task scores them; ``val_accuracy`` is logged
and training stops (checkpoint + final model) after the first validation whose accuracy reaches
``val.target_accuracy`` (the R1 demo stops its cold start this way, not on a clock).

Python API (no TOML needed)::

    from r1kit.train import sft
    result = sft.run(sft.Config(
        model=sft.ModelSection(init="runs/pretrain/model"),
        data=sft.SFTData(task="addition", task_args={"addition": {"max_digits": 4}}, num_examples=5000, seed=1),
        val=sft.ValSection(every=50, problems=64, target_accuracy=0.3),
        train=sft.TrainConfig(steps=2000, batch_size=32),
        run=sft.RunConfig(dir="runs/sft"),
    ))
    result.model_dir, result.steps, result.tokens, result.cost, result.metrics_path, result.stopped_early

    r1kit sft configs/sft_tiny.toml --model.init runs/pretrain_tiny/model --val.target_accuracy 0.3
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from r1kit.train.loop import RunConfig, TrainConfig, cleanup_distributed, prepare_run_dir  # noqa: F401
from r1kit.train.pretrain import fit_stage, load_tokenizer, start_stage
from r1kit.train.sections import ModelSection, PromptSection, TokenizerSection, ValSection, check_task_args


@dataclass
class SFTData:
    """[data] the conversations.

    files (list[str]): JSONL files with one {"messages": [{"role", "content"}, ...]} per line; empty = use task.
    task (str): task whose train problems become conversations (user prompt, assistant worked solution).
    task_args (dict): keyword arguments of the task keyed by its name, e.g.
        {addition = {min_digits = 1, max_digits = 4}}.
    num_examples (int): problems drawn from the task's train split.
    seed (int): seed of that draw; -1 = train.seed.
    max_len (int): tokens kept per conversation (longer ones are cut; ones with no assistant token left dropped).
    """

    files: list[str] = field(default_factory=list)
    task: str = "addition"
    task_args: dict[str, Any] = field(default_factory=dict)
    num_examples: int = 20000
    seed: int = -1
    max_len: int = 256

    def __post_init__(self) -> None:
        check_task_args(self.task_args, "data.task_args", [self.task])


@dataclass
class Config:
    """`r1kit sft`: supervised fine-tuning on chat data with assistant-only loss (sections below)."""

    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: SFTData = field(default_factory=SFTData)
    prompt: PromptSection = field(default_factory=PromptSection)
    val: ValSection = field(default_factory=ValSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-4, warmup_steps=10))
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/sft"))

    def __post_init__(self) -> None:
        self.prompt.sft_template()  # "chat" or "r1": the plain-text templates have no conversation


def with_system_prompt(
    chats: list[list[dict[str, str]]], prompt: PromptSection
) -> list[list[dict[str, str]]]:
    """``chats`` with the system prompt of ``prompt`` (``prompt.system``, or R1's under "r1") put first in
    each conversation that has no system message, as inference renders it."""
    from r1kit.tokenizer import system_prompt

    system = system_prompt(prompt.template, prompt.system)
    if not system:
        return chats
    return [
        chat if chat and chat[0].get("role") == "system" else [{"role": "system", "content": system}, *chat]
        for chat in chats
    ]


def conversations(
    data: SFTData, seed: int, prompt: PromptSection | None = None
) -> list[list[dict[str, str]]]:
    """The SFT conversations: ``data.files`` (chat JSONL, e.g. what ``r1kit sample`` writes), else
    ``data.num_examples`` train problems of the task (drawn with ``data.seed``, or ``seed`` when that is
    -1) as user prompt + worked solution via ``task.sft_messages``. The system prompt of ``prompt``
    (:func:`with_system_prompt`) goes first in each conversation that has none."""
    from r1kit.train.data import problem_messages, read_conversations

    prompt = prompt or PromptSection()
    if data.files:
        return with_system_prompt(read_conversations(data.files), prompt)
    from r1kit.tasks import get_task, task_kwargs

    task = get_task(data.task, **task_kwargs(data.task_args, data.task))
    draw_seed = seed if data.seed < 0 else data.seed
    problems = task.problems(split="train", n=data.num_examples, seed=draw_seed)
    return with_system_prompt([problem_messages(task, p) for p in problems], prompt)


def greedy_validator(
    val: ValSection, data: SFTData, tokenizer: Any, seed: int = 0, prompt: PromptSection | None = None
):
    """``validate(model, step) -> {"val_accuracy", "val_length"}`` for chat models: greedy decoding of
    ``val.problems`` held-out problems (``val.task`` or ``data.task``) behind ``prompt``'s template and
    system prompt, scored by the task. See :func:`r1kit.train.pretrain.greedy_validator`."""
    from r1kit.train import pretrain

    prompt = prompt or PromptSection()
    template = prompt.sft_template() if val.prompt == "auto" else val.prompt
    return pretrain.greedy_validator(
        val, data.task, data.task_args, tokenizer, prompt=template, system=prompt.system, seed=seed
    )


def run(config: Config, console: Any = None):
    """Fine-tune a model on conversations; returns a :class:`r1kit.train.result.RunResult`:
    ``model_dir`` (final model + tokenizer, HF layout), ``steps``, ``tokens``, ``cost`` (the cost summary),
    ``metrics_path``, ``stopped_early`` and ``metrics`` (loss, val_accuracy / val_length when validating,
    stop_reason)."""
    from r1kit.train.data import ChatExamples

    dist, device = start_stage(config.train)
    try:
        resume_from = prepare_run_dir(config.run)
        chats = conversations(config.data, config.train.seed, config.prompt)
        tokenizer = load_tokenizer(
            config.tokenizer,
            config.model,
            resume_from,
            lambda: ("\n".join(m["content"] for m in chat) for chat in chats),
        )
        template = config.prompt.sft_template()
        # under "r1" the `<think>\n` inference forces is prompt (mask 0), as `prompt_ids` encodes it
        examples = ChatExamples(chats, tokenizer, config.data.max_len, tokenizer.generation_suffix(template))
        return fit_stage(
            config,
            examples,
            tokenizer,
            dist=dist,
            device=device,
            resume_from=resume_from,
            stage="sft",
            stage_prompt=template,
            system=config.prompt.system,
            console=console,
        )
    finally:
        cleanup_distributed(dist)
