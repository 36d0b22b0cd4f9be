"""Tasks from JSONL files, in the layouts Hugging Face `datasets` reads.

Two record shapes, one JSON object per line:
- `{"prompt": ..., "answer": ...}` (also "question"/"problem" for the prompt; optional "solution"
  and "id"), scored by exact match of the final answer;
- `{"messages": [{"role": ..., "content": ...}, ...]}`, a chat for SFT; the last user message is
  the prompt, the last assistant message holds the answer (and reasoning, if it has `</think>`).
A bad record raises ValueError naming the file and the line number.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from r1kit.tasks.base import Problem, Task, check_split, rng_for, split_of
from r1kit.tokenizer import split_reasoning

PROMPT_KEYS = ("prompt", "question", "problem")
ROLES = ("system", "user", "assistant")


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line; ValueError "file:line: why" on bad JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            records.append((lineno, record))
    return records


def _text(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def record_to_problem(record: dict, where: str) -> Problem:
    """A Problem from one JSONL record; `where` ("file:line") prefixes any error."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(
                    f"{where}: messages[{i}] must be {{'role': one of {ROLES}, 'content': str}}, got {m!r:.80}"
                )
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        user = [i for i, m in enumerate(messages) if m["role"] == "user" and (last is None or i < last)]
        if last is None or not user:
            raise ValueError(f"{where}: 'messages' needs a user message followed by an assistant message")
        reasoning, answer = split_reasoning(messages[last]["content"])
        if "</think>" not in messages[last]["content"]:
            reasoning, answer = "", messages[last]["content"].strip()
        prompt = messages[user[-1]]["content"]
        key = str(record.get("id", prompt))
        return Problem(key, prompt, answer, reasoning or None, {"messages": messages[: last + 1]})
    key = next((k for k in PROMPT_KEYS if k in record), None)
    if key is None:
        raise ValueError(f"{where}: record needs 'messages' or one of {PROMPT_KEYS} with 'answer'")
    if "answer" not in record:
        raise ValueError(f"{where}: record has {key!r} but no 'answer'")
    prompt, answer = _text(record, key, where), _text(record, "answer", where)
    solution = _text(record, "solution", where) if record.get("solution") is not None else None
    meta: dict[str, Any] = {k: v for k, v in record.items() if k not in (key, "answer", "solution")}
    return Problem(str(record.get("id", prompt)), prompt, answer, solution, meta)


class JsonlTask(Task):
    """Problems read from a JSONL file; scored by exact match of the final answer (whitespace-trimmed).

    hash_split: True assigns each record to train/val/test by a hash of its prompt (disjoint);
    False makes every split the whole file (for a file that is already a test set).
    """

    def __init__(self, path: str | os.PathLike, hash_split: bool = True):
        """Read and validate the whole file now, so errors show before training starts."""
        self.path = Path(path)
        self.name = f"jsonl:{self.path}"
        self.hash_split = hash_split
        self.records = [record_to_problem(r, f"{self.path}:{n}") for n, r in read_jsonl(self.path)]

    def problems(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Problem]:
        """Up to `n` problems of `split` (all when n is None), shuffled per seed; seed 0 keeps file order."""
        check_split(split)
        pool = [p for p in self.records if not self.hash_split or split_of(p.prompt) == split]
        if seed:
            rng_for(self.name, split, seed).shuffle(pool)
        return pool if n is None else pool[:n]

    def sft_messages(self, problem: Problem, system: str | None = None) -> list[dict[str, str]]:
        """The record's own messages for chat records; otherwise prompt + worked solution + answer."""
        if "messages" in problem.meta:
            messages = [dict(m) for m in problem.meta["messages"]]
            has_system = messages and messages[0]["role"] == "system"
            return (
                [{"role": "system", "content": system}, *messages] if system and not has_system else messages
            )
        return super().sft_messages(problem, system)
