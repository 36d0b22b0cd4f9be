"""Maths word problems with free-form final answers, scored with math-verify.

The answer is the last `\\boxed{...}` after `</think>` (or the answer text when nothing is boxed),
compared with the reference by `safe_math.math_equal`: exact for plain numbers, math-verify in a
worker process with a timeout otherwise (1/2, 0.5 and \\frac{1}{2} are the same answer).
"""

from __future__ import annotations

import os

from r1kit.safe_math import math_equal
from r1kit.tasks.base import Problem
from r1kit.tasks.jsonl import JsonlTask

# DeepSeek-R1's usage recommendation for maths prompts (arXiv 2501.12948).
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def math_score(answer: str, gold: str) -> float:
    """1.0 if the answer text (boxed or not) is mathematically equal to `gold`, else 0.0; never raises."""
    return 1.0 if math_equal(answer, gold) else 0.0


class MathTask(JsonlTask):
    """A JSONL file of maths problems ({"problem"/"prompt"/"question", "answer"}) scored with math-verify.

    instruction: appended to each prompt (default: R1's "Please reason step by step, ... \\boxed{}.");
    "" leaves prompts unchanged. The worked solutions (if any) are used for SFT as given.
    """

    def __init__(self, path: str | os.PathLike, hash_split: bool = True, instruction: str = MATH_INSTRUCTION):
        """See the class docstring."""
        super().__init__(path, hash_split=hash_split)
        self.name = f"math:{self.path}"
        if instruction:
            self.records = [
                Problem(p.id, f"{p.prompt}\n{instruction}", p.answer, p.solution, p.meta)
                for p in self.records
            ]

    def check(self, answer: str, problem: Problem) -> float:
        """math-verify equivalence of the final answer with the reference."""
        return math_score(answer, problem.answer)

    def sft_messages(self, problem: Problem, system: str | None = None) -> list[dict[str, str]]:
        """Prompt, worked solution, and the answer boxed (as the instruction asks)."""
        boxed = problem.answer if "\\boxed" in problem.answer else f"\\boxed{{{problem.answer}}}"
        return super().sft_messages(
            Problem(problem.id, problem.prompt, boxed, problem.solution, problem.meta), system
        )
