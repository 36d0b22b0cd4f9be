"""Rule-based rewards (DAPO, arXiv 2503.14476; DeepSeek-R1, arXiv 2501.12948): accuracy, format, overlong
punishment, language consistency.

A reward is a function `(completion: str, problem: Problem) -> float`, where the completion is the
model output after the generation prompt ("reasoning\\n</think>\\nanswer", or R1-Zero's
"<think> reasoning </think> <answer> answer </answer>"; the tags are read as text, so single think
tokens and tags split into several tokens score the same). Rewards compose with
weights:

    reward = combine([(accuracy_reward(task), 1.0), (format_reward, 0.2)])
    reward(completion, problem)            # weighted sum
    reward.breakdown(completion, problem)  # {"accuracy": 1.0, "format": 1.0, "total": 1.2}

Built-in rewards are total: any string gives a finite float, fast, without raising.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from r1kit.tasks.base import Problem, Task
from r1kit.tokenizer import ANSWER_END, ANSWER_START, THINK_END, THINK_START, split_reasoning

Reward = Callable[[str, Problem], float]
# Language reward: letters beyond this many characters of reasoning are not looked at.
MAX_LANGUAGE_CHARS = 200_000


def accuracy_reward(task: Task) -> Reward:
    """The task's own score as a reward (1.0 correct, 0.0 wrong)."""

    def accuracy(completion: str, problem: Problem) -> float:
        return task.score(completion, problem)

    accuracy.__doc__ = f"Accuracy under {task!r}."
    return accuracy


def _format_ok(completion: Any, require_answer_tags: bool) -> bool:
    """The R1 layout check behind `format_reward` and `tagged_format_reward` (tags read as text)."""
    if not isinstance(completion, str) or completion.count(THINK_END) != 1:
        return False
    head, _, answer = completion.partition(THINK_END)
    head = head.lstrip()
    if head.startswith(THINK_START):
        head = head[len(THINK_START) :]
    if THINK_START in head or THINK_START in answer or not answer.strip():
        return False
    if ANSWER_START in head or ANSWER_END in head:
        return False
    tagged = ANSWER_START in answer or ANSWER_END in answer
    if not tagged:
        return not require_answer_tags
    # R1-Zero's layout: the whole answer part is one <answer>...</answer> block with something inside
    body = answer.strip()
    if not (body.startswith(ANSWER_START) and body.endswith(ANSWER_END)):
        return False
    inner = body[len(ANSWER_START) : len(body) - len(ANSWER_END)]
    return ANSWER_START not in inner and ANSWER_END not in inner and bool(inner.strip())


def format_reward(completion: str, problem: Problem | None = None) -> float:
    """1.0 for "[<think>]reasoning</think>answer" with a non-empty answer and no stray tags, else 0.0.

    The opening `<think>` is optional (the generation prompt holds it); the closing tag must appear
    exactly once and the answer after it must be non-empty. When the answer uses R1-Zero's tags it
    must be exactly one non-empty `<answer>...</answer>` block (whitespace around it allowed), and
    the reasoning holds no answer tag. The tags are read as text: single added tokens and tags a
    tokenizer splits into several pieces score the same.
    """
    return 1.0 if _format_ok(completion, require_answer_tags=False) else 0.0


def tagged_format_reward(completion: str, problem: Problem | None = None) -> float:
    """R1-Zero's format reward (arXiv 2501.12948, Table 1 layout): `format_reward` with the answer
    required in `<answer>...</answer>`: "<think> reasoning </think> <answer> answer </answer>"."""
    return 1.0 if _format_ok(completion, require_answer_tags=True) else 0.0


def overlong_penalty(length: int, max_length: int, cache_length: int) -> float:
    """DAPO soft overlong punishment (arXiv 2503.14476): 0 up to L_max - L_cache, linear to -1 at L_max, -1
    beyond."""
    limit = max_length - cache_length
    if length <= limit:
        return 0.0
    if length <= max_length:
        return (limit - length) / cache_length if cache_length > 0 else -1.0
    return -1.0


def overlong_reward(
    max_length: int, cache_length: int, length_fn: Callable[[str], int] | None = None, tokenizer: Any = None
) -> Reward:
    """A reward applying `overlong_penalty` to the completion length.

    The length is `length_fn(completion)`, else the token count under `tokenizer` (anything with
    `encode(text) -> ids`), else the number of characters. A failing length_fn falls back to characters.
    """
    if not 0 <= cache_length <= max_length:
        raise ValueError(f"need 0 <= cache_length <= max_length, got {cache_length}, {max_length}")
    if length_fn is None and tokenizer is not None:

        def length_fn(text: str) -> int:
            return len(tokenizer.encode(text))

    def overlong(completion: str, problem: Problem | None = None) -> float:
        text = completion if isinstance(completion, str) else ""
        try:
            length = int(length_fn(text)) if length_fn is not None else len(text)
        except Exception:
            length = len(text)
        return overlong_penalty(length, max_length, cache_length)

    overlong.__doc__ = f"DAPO overlong punishment, L_max={max_length}, L_cache={cache_length}."
    return overlong


# Letter runs by script; CJK ideographs, kana and hangul count one "word" per character.
_SCRIPTS = {
    "latin": r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff]+",
    "cjk": r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002a6df]",
    "cyrillic": r"[\u0400-\u04ff]+",
    "greek": r"[\u0370-\u03ff]+",
    "arabic": r"[\u0600-\u06ff]+",
}
LANGUAGES = {
    "en": "latin",
    "fr": "latin",
    "de": "latin",
    "es": "latin",
    "zh": "cjk",
    "ja": "cjk",
    "ko": "cjk",
}
LANGUAGES.update({"ru": "cyrillic", "el": "greek", "ar": "arabic"})
_WORD = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _SCRIPTS.items()))
_OTHER_LETTERS = re.compile(r"[^\W\d_]+")


def language_share(text: str, language: str = "en") -> float:
    """Share of words in `language`'s script among all words of `text` (1.0 when there are none).

    Words are runs of letters of one script; each CJK character is a word. Letters of scripts not
    listed (Thai, Hebrew, ...) count as other-language words.
    """
    script = LANGUAGES.get(language, language)
    if script not in _SCRIPTS:
        raise ValueError(
            f"unknown language {language!r}; known: {', '.join(sorted({*LANGUAGES, *_SCRIPTS}))}"
        )
    text = text[:MAX_LANGUAGE_CHARS]
    target = total = 0
    for match in _WORD.finditer(text):
        total += 1
        target += match.lastgroup == script
    # Letters in no listed script: count each run once.
    total += len(_OTHER_LETTERS.findall(_WORD.sub(" ", text)))
    return target / total if total else 1.0


def language_reward(language: str = "en") -> Reward:
    """R1's language-consistency reward: the target-language word share of the reasoning."""
    script = LANGUAGES.get(language, language)
    if script not in _SCRIPTS:
        raise ValueError(
            f"unknown language {language!r}; known: {', '.join(sorted({*LANGUAGES, *_SCRIPTS}))}"
        )

    def language_consistency(completion: str, problem: Problem | None = None) -> float:
        if not isinstance(completion, str):
            return 1.0
        return language_share(split_reasoning(completion)[0], language)

    language_consistency.__doc__ = f"Share of {language} words in the reasoning."
    return language_consistency


def load_reward(spec: str) -> Reward:
    """Import a user reward given as "package.module:function"; clear errors when it is missing."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward {spec!r} must be written 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"reward {spec!r}: cannot import module {module_name!r} ({e})") from e
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise AttributeError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise TypeError(f"reward {spec!r} is not callable")
    return fn


def get_reward(name: str, task: Task | None = None, **kwargs: Any) -> Reward:
    """A reward by name: "accuracy" (needs task), "format", "tagged_format" (answer in `<answer>` tags),
    "overlong" (max_length, cache_length, ...),
    "language" (language=...), or "module:function"."""
    if name == "accuracy":
        if task is None:
            raise ValueError("the accuracy reward needs a task")
        return accuracy_reward(task)
    if name == "format":
        return format_reward
    if name == "tagged_format":
        return tagged_format_reward
    if name == "overlong":
        return overlong_reward(**kwargs)
    if name == "language":
        return language_reward(**kwargs)
    if ":" in name:
        return load_reward(name)
    raise ValueError(
        f"unknown reward {name!r}; valid: accuracy, format, tagged_format, overlong, language, or "
        "'module:function'"
    )


def _reward_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return name.removesuffix("_reward")


class CombinedReward:
    """A weighted sum of rewards; call it like a reward, or ask `breakdown` for each part.

    Non-finite values from a part count as 0. Exceptions from user rewards propagate (they are bugs).
    """

    def __init__(self, parts: Sequence[tuple[str, Reward, float]]):
        """parts: (name, reward, weight) triples; names must be unique."""
        names = [name for name, _, _ in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique, got {names}")
        self.parts = list(parts)

    @property
    def names(self) -> list[str]:
        """Names of the parts, in order."""
        return [name for name, _, _ in self.parts]

    def breakdown(self, completion: str, problem: Problem) -> dict[str, float]:
        """Each part's unweighted value by name, plus "total" (the weighted sum), for logging."""
        values = {}
        total = 0.0
        for name, fn, weight in self.parts:
            value = float(fn(completion, problem))
            value = value if math.isfinite(value) else 0.0
            values[name] = value
            total += weight * value
        values["total"] = total
        return values

    def __call__(self, completion: str, problem: Problem) -> float:
        """The weighted sum of the parts."""
        return self.breakdown(completion, problem)["total"]

    def __repr__(self) -> str:
        return "CombinedReward(" + ", ".join(f"{n}*{w:g}" for n, _, w in self.parts) + ")"


def combine(parts: Sequence[tuple]) -> CombinedReward:
    """Combine rewards: items are (fn, weight) or (name, fn, weight); fn may be "module:function"."""
    resolved = []
    for item in parts:
        if len(item) == 2:
            fn, weight = item
            fn = load_reward(fn) if isinstance(fn, str) else fn
            name = _reward_name(fn)
        elif len(item) == 3:
            name, fn, weight = item
            fn = load_reward(fn) if isinstance(fn, str) else fn
        else:
            raise ValueError(f"reward parts are (fn, weight) or (name, fn, weight), got {item!r}")
        if not callable(fn):
            raise TypeError(f"reward {name!r} is not callable")
        resolved.append((name, fn, float(weight)))
    return CombinedReward(resolved)
