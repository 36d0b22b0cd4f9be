"""Problem, Task and the hash split that keeps held-out problems out of training.

A Task generates or loads problems, renders the prompt, and scores a completion. Its `reward`
is its `score` (STYLE: a task evaluates and rewards with the same code). Every problem belongs to
exactly one split, decided by a hash of its prompt, so "train" never shares a problem with "val"
or "test", whatever the seeds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from r1kit.seeding import stable_fraction, stable_hash
from r1kit.tokenizer import (
    THINK_END,
    THINK_START,
    ends_in_think,
    format_assistant,
    split_reasoning,
    tagged_answer,
)

SPLITS = ("train", "val", "test")
# Share of the problem space held out for each evaluation split; the rest is train.
HELD_OUT = {"test": 0.1, "val": 0.1}
# Scoring reads at most this many characters of an answer: answers are short, junk can be huge.
MAX_ANSWER_CHARS = 4096


@dataclass(frozen=True)
class Problem:
    """One problem: `prompt` is the user message, `answer` the reference final answer.

    solution: the worked reasoning (assistant thinking, without tags) or None.
    meta: task-specific data the scorer needs (numbers, a reasoning-gym entry, ...).
    """

    id: str
    prompt: str
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def split_of(key: str) -> str:
    """The split ("train", "val" or "test") a problem key belongs to, from a stable hash."""
    h = stable_fraction(key)
    if h < HELD_OUT["test"]:
        return "test"
    if h < HELD_OUT["test"] + HELD_OUT["val"]:
        return "val"
    return "train"


def check_split(split: str) -> str:
    """Validate a split name."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def rng_for(*parts: object) -> random.Random:
    """A random.Random seeded from a stable hash of `parts` (independent of PYTHONHASHSEED)."""
    return random.Random(stable_hash("|".join(map(str, parts))))


def final_answer(completion: str) -> str:
    """The answer of a completion, stripped and cut to MAX_ANSWER_CHARS: the text after `</think>`, and of
    that the inside of R1-Zero's `<answer>...</answer>` when present (`r1kit.tokenizer.tagged_answer`).
    "" without `</think>`. The tags may be single tokens or plain text: this reads the decoded text."""
    answer = split_reasoning(completion if isinstance(completion, str) else "")[1]
    return tagged_answer(answer)[:MAX_ANSWER_CHARS]


def answer_only(prompt_text: str, template: str) -> bool:
    """Whether completions of this prompt are all answer when they carry no think tag: an instruct model's
    own chat template (`template` "chat") that does not open `<think>` (SmolLM2, Qwen2.5-Instruct), as the
    server's `reasoning_content` split reads them. r1kit's template and "r1" open `<think>` (reasoning
    must be closed); "r1-zero", "raw" and "text" keep R1's rule (no `</think>`, no answer)."""
    return template == "chat" and not ends_in_think(prompt_text)


def scoring_text(completion: str, all_answer: bool) -> str:
    """The completion as the scorers read it: with `all_answer` (see `answer_only`) a completion that
    has no `</think>` and does not open `<think>` itself is read as all answer; otherwise unchanged."""
    if not all_answer or THINK_END in completion or completion.lstrip().startswith(THINK_START):
        return completion
    return THINK_END + completion


def clamp_score(value: Any) -> float:
    """A score as a float in [0, 1]; anything not a finite number becomes 0."""
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if not math.isfinite(value):
        return 0.0
    return min(1.0, max(0.0, value))


class Task:
    """Base class: problems(split, n, seed), score(completion, problem), sft_messages(problem).

    Subclasses implement `problems` and `check` (answer text -> score); `score` takes care of
    extracting the answer and of never raising.
    """

    name = "task"

    def problems(self, split: str = "train", n: int = 100, seed: int = 0) -> list[Problem]:
        """`n` problems of `split`, the same list for the same (split, n, seed)."""
        raise NotImplementedError

    def check(self, answer: str, problem: Problem) -> float:
        """Score the extracted final answer (`final_answer`: after `</think>`, inside `<answer>` tags when
        present) against `problem`."""
        return 1.0 if answer.strip() == problem.answer.strip() else 0.0

    def score(self, completion: str, problem: Problem) -> float:
        """Score a completion (the model output after the generation prompt) in [0, 1]; never raises."""
        try:
            return clamp_score(self.check(final_answer(completion), problem))
        except Exception:  # a scorer bug or odd input must not stop training; score it as wrong
            return 0.0

    def reward(self, completion: str, problem: Problem) -> float:
        """The RL reward: the same code as `score`."""
        return self.score(completion, problem)

    def completion(self, problem: Problem) -> str:
        """The reference completion: what a perfect model writes after the generation prompt."""
        return f"{(problem.solution or '').strip()}\n</think>\n{problem.answer}"

    def sft_messages(self, problem: Problem, system: str | None = None) -> list[dict[str, str]]:
        """The chat for SFT: user prompt, then the worked solution and the answer as assistant content."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": problem.prompt})
        messages.append(
            {"role": "assistant", "content": format_assistant(problem.solution or "", problem.answer)}
        )
        return messages

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ProceduralTask(Task):
    """A task that samples problems from a generator: subclasses implement `sample(rng) -> Problem`.

    Problems are drawn until `n` distinct problems of the split are found; the split comes from a
    hash of the problem id, so train/val/test are disjoint for any seeds.
    """

    def sample(self, rng: random.Random) -> Problem:
        """Draw one problem (any split)."""
        raise NotImplementedError

    def problems(
        self, split: str = "train", n: int = 100, seed: int = 0, unique: bool = True
    ) -> list[Problem]:
        """`n` problems of `split`; distinct unless `unique=False`. Deterministic per (split, n, seed)."""
        check_split(split)
        rng = rng_for(self.name, repr(self.config()), split, seed)
        out: list[Problem] = []
        seen: set[str] = set()
        attempts = 0
        max_attempts = 50 * n + 10_000
        while len(out) < n:
            attempts += 1
            if attempts > max_attempts:
                raise ValueError(
                    f"{self!r}: found only {len(out)} of {n} distinct {split!r} problems; the problem space "
                    "is too small (use more digits/numbers, or unique=False)"
                )
            p = self.sample(rng)
            if split_of(p.id) != split or (unique and p.id in seen):
                continue
            seen.add(p.id)
            out.append(p)
        return out

    def config(self) -> dict[str, Any]:
        """The knobs that define the problem distribution (part of the sampling seed)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class SearchTraceTask(ProceduralTask):
    """A procedural task whose cold-start trace is a bounded search that may give up (Countdown, chase):
    the SFT completion ends with the answer the *search* reached (`meta["trace_answer"]`, wrong on a
    give-up), while `problem.answer` stays the reference the scorer compares with."""

    def completion(self, problem: Problem) -> str:
        """The cold-start completion: the search trace and the answer it reached (wrong on a give-up)."""
        answer = problem.meta.get("trace_answer", problem.answer)
        return f"{(problem.solution or '').strip()}\n</think>\n{answer}"

    def sft_messages(self, problem: Problem, system: str | None = None) -> list[dict[str, str]]:
        """The cold-start chat: the search trace and the answer the search reached."""
        answer = problem.meta.get("trace_answer", problem.answer)
        shown = Problem(problem.id, problem.prompt, answer, problem.solution, problem.meta)
        return super().sft_messages(shown, system)


class MixtureTask(Task):
    """Problems drawn from several tasks with weights, e.g. 90 % 1-4 digit and 10 % 5-digit addition.

    Each problem remembers its component (meta["component"]), so scoring uses that task's scorer.
    """

    name = "mixture"

    def __init__(self, tasks: Sequence[Task], weights: Sequence[float] | None = None):
        """tasks: the component tasks; weights: relative sampling weights (default equal)."""
        if not tasks:
            raise ValueError("MixtureTask needs at least one task")
        self.tasks = list(tasks)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.tasks)
        if len(self.weights) != len(self.tasks) or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise ValueError("weights must be non-negative, one per task, with a positive sum")

    def problems(self, split: str = "train", n: int = 100, seed: int = 0) -> list[Problem]:
        """`n` problems; component counts follow the weights, the order is shuffled per seed."""
        rng = rng_for("mixture", split, seed)
        counts = [0] * len(self.tasks)
        for _ in range(n):
            counts[rng.choices(range(len(self.tasks)), weights=self.weights)[0]] += 1
        out = []
        for index, (task, count) in enumerate(zip(self.tasks, counts)):
            for p in task.problems(split=split, n=count, seed=seed) if count else []:
                out.append(Problem(p.id, p.prompt, p.answer, p.solution, {**p.meta, "component": index}))
        rng.shuffle(out)
        return out

    def score(self, completion: str, problem: Problem) -> float:
        """Score with the component task that made the problem."""
        index = problem.meta.get("component", 0)
        if not isinstance(index, int) or not 0 <= index < len(self.tasks):
            return 0.0
        return self.tasks[index].score(completion, problem)

    def completion(self, problem: Problem) -> str:
        """The reference completion of the component task."""
        return self.tasks[problem.meta.get("component", 0)].completion(problem)
