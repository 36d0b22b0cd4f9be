"""Maths word problems with free-form final answers, scored with math-verify.

The answer is the last `\\boxed{...}` after `</think>` (or the answer text when nothing is boxed),
compared with the reference by `safe_math.math_equal`: exact for plain numbers, math-verify in a
worker process with a timeout otherwise (1/2, 0.5 and \\frac{1}{2} are the same answer).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from r1kit.safe_math import math_equal
from r1kit.tasks.base import Problem
from r1kit.tasks.jsonl import JsonlTask, read_jsonl, record_to_problem

# DeepSeek-R1's usage recommendation for maths prompts (arXiv 2501.12948).
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def math_score(answer: str, gold: str) -> float:
    """1.0 if the answer text (boxed or not) is mathematically equal to `gold`, else 0.0; never raises."""
    return 1.0 if math_equal(answer, gold) else 0.0


def with_instruction(problems: Sequence[Problem], instruction: str) -> list[Problem]:
    """The problems with `instruction` on a new line after each prompt ("" = unchanged)."""
    if not instruction:
        return list(problems)
    return [Problem(p.id, f"{p.prompt}\n{instruction}", p.answer, p.solution, p.meta) for p in problems]


class MathTask(JsonlTask):
    """A JSONL file of maths problems scored with math-verify.

    Records: {"problem"/"prompt"/"question", "answer"} with an optional "solution" and "id"; a GSM8K
    answer "... #### 42" and a MATH "solution" with \\boxed{} (no "answer") are mapped as
    `r1kit.tasks.datasets.map_record` says; chat records ({"messages": [...]}) as in `JsonlTask`.
    instruction: appended to each prompt (default: R1's "Please reason step by step, ... \\boxed{}.");
    "" leaves prompts unchanged. The worked solutions (if any) are used for SFT as given.
    Other layouts (parquet, csv, folders, the hub): `r1kit.tasks.datasets.DatasetTask`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        hash_split: bool = True,
        instruction: str = MATH_INSTRUCTION,
        fields: dict[str, str] | None = None,
        limit: int = 0,
    ):
        """See the class docstring; `fields` and `limit` as in `DatasetTask` (column names; first N records)."""
        from r1kit.tasks.datasets import FieldMap, map_record

        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an integer >= 0 (0 = all records), got {limit!r}")
        self.path = Path(path)
        self.hash_split = hash_split
        self.name = f"math:{self.path}"
        field_map = FieldMap.from_dict(fields)
        records = []
        for lineno, record in read_jsonl(self.path)[: limit or None]:
            where = f"{self.path}:{lineno}"
            if "messages" in record:
                records.append(record_to_problem(record, where))
            else:
                records.append(map_record(record, where, field_map))
        self.records = with_instruction(records, instruction)

    def check(self, answer: str, problem: Problem) -> float:
        """math-verify equivalence of the final answer with the reference."""
        return math_score(answer, problem.answer)

    def sft_messages(self, problem: Problem, system: str | None = None) -> list[dict[str, str]]:
        """Prompt, worked solution, and the answer boxed (as the instruction asks)."""
        boxed = problem.answer if "\\boxed" in problem.answer else f"\\boxed{{{problem.answer}}}"
        return super().sft_messages(
            Problem(problem.id, problem.prompt, boxed, problem.solution, problem.meta), system
        )
