"""Tasks: problems with prompts, reference answers, worked solutions, and the scorer.

    task = get_task("addition", digits=4)
    problems = task.problems(split="train", n=100, seed=0)
    task.score(completion_text, problems[0])   # float in [0, 1]

Names: "addition", "multiplication", "countdown", "chase", "gym:<reasoning-gym dataset>" (a bare
reasoning-gym name works too), "math:<file or folder>" (jsonl, json, csv, parquet, arrow),
"jsonl:<file.jsonl>", the maths presets "gsm8k", "math500", "aime24", "amc" (hub, or `path`), and
"hf:<hub dataset>" (`r1kit.tasks.datasets`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from r1kit.tasks.arithmetic import AdditionTask, MultiplicationTask
from r1kit.tasks.base import SPLITS, MixtureTask, Problem, ProceduralTask, Task, split_of
from r1kit.tasks.chase import ChaseTask
from r1kit.tasks.countdown import CountdownTask
from r1kit.tasks.datasets import PRESETS, DatasetTask, hub_task, local_math_task, preset_task
from r1kit.tasks.gym import GymTask, gym_dataset_names
from r1kit.tasks.jsonl import JsonlTask, read_jsonl
from r1kit.tasks.math import MathTask, math_score

BUILTIN_TASKS: dict[str, Callable[..., Task]] = {
    "addition": AdditionTask,
    "multiplication": MultiplicationTask,
    "countdown": CountdownTask,
    "chase": ChaseTask,
    **{name: preset_task(name) for name in PRESETS},
}
PREFIXED_TASKS: dict[str, Callable[..., Task]] = {
    "gym": GymTask,
    "math": local_math_task,
    "jsonl": JsonlTask,
    "hf": hub_task,
}


def get_task(name: str, **kwargs: Any) -> Task:
    """Build a task by name; keyword arguments go to its constructor.

    Unknown names raise ValueError listing the valid ones.
    """
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name](**kwargs)
    prefix, sep, rest = name.partition(":")
    if sep and prefix in PREFIXED_TASKS and rest:
        return PREFIXED_TASKS[prefix](rest, **kwargs)
    if not sep and name in gym_dataset_names():
        return GymTask(name, **kwargs)
    valid = [*BUILTIN_TASKS, "gym:<reasoning-gym dataset>", "math:<file or folder>", "jsonl:<file.jsonl>",
             "hf:<hub dataset>"]  # fmt: skip
    raise ValueError(f"unknown task {name!r}; valid names: {', '.join(valid)}")


def task_kwargs(task_args: dict[str, Any], name: str) -> dict[str, Any]:
    """The keyword arguments of task `name` from a `task_args` table keyed by task name
    (``{addition = {digits = 4}}``): ``task_args[name]`` when it is a table, {} when absent.

    Raises ConfigError when the value is not a table (e.g. flat ``{digits = 4}`` read as task "digits").
    """
    value = task_args.get(name, {})
    if not isinstance(value, dict):
        from r1kit.config import ConfigError

        raise ConfigError(
            f"data.task_args maps task names to tables of arguments, e.g. {{{name} = {{digits = 4}}}}; "
            f"got {name} = {value!r}"
        )
    return value


__all__ = [
    "SPLITS",
    "AdditionTask",
    "ChaseTask",
    "CountdownTask",
    "DatasetTask",
    "GymTask",
    "JsonlTask",
    "MathTask",
    "MixtureTask",
    "MultiplicationTask",
    "Problem",
    "ProceduralTask",
    "Task",
    "get_task",
    "gym_dataset_names",
    "math_score",
    "read_jsonl",
    "split_of",
    "task_kwargs",
]
