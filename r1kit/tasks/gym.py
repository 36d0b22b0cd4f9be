"""Any reasoning-gym dataset as a Task, scored by the dataset's own `score_answer`.

reasoning-gym generates problems from a seed; a problem's split comes from a hash of its question,
so train and held-out problems stay disjoint. reasoning_gym is imported only when used.
"""

from __future__ import annotations

from typing import Any

from r1kit.tasks.base import Problem, Task, check_split, rng_for, split_of


def gym_dataset_names() -> list[str]:
    """Names of the installed reasoning-gym datasets (empty if reasoning-gym is missing)."""
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError:
        return []
    return sorted(DATASETS)


class GymTask(Task):
    """Wraps `reasoning_gym.create_dataset(name, size=..., seed=..., **config)`.

    config: the dataset's configuration keywords (e.g. min_terms=2 for chain_sum). Problems carry
    the reasoning-gym entry in meta["entry"]; they have no worked solution.
    """

    def __init__(self, dataset: str, **config: Any):
        """dataset: a reasoning-gym dataset name; config: its options."""
        names = gym_dataset_names()
        if not names:
            raise ImportError("reasoning-gym is not installed: pip install 'r1kit[tasks]'")
        if dataset not in names:
            raise ValueError(f"unknown reasoning-gym dataset {dataset!r}; available: {', '.join(names)}")
        self.dataset = dataset
        self.config = dict(config)
        self.name = f"gym:{dataset}"
        self._scorer = None

    def _create(self, size: int, seed: int):
        import reasoning_gym

        return reasoning_gym.create_dataset(self.dataset, size=size, seed=seed, **self.config)

    def problems(self, split: str = "train", n: int = 100, seed: int = 0) -> list[Problem]:
        """`n` distinct problems of `split`, generated in chunks from seeds derived from (split, seed)."""
        check_split(split)
        rng = rng_for(self.name, repr(sorted(self.config.items())), split, seed)
        out: list[Problem] = []
        seen: set[str] = set()
        chunk = max(64, 4 * n if split == "train" else 12 * n)
        for _ in range(50):
            for entry in self._create(chunk, rng.randrange(2**31)):
                question = str(entry["question"])
                if question in seen or split_of(question) != split:
                    continue
                seen.add(question)
                out.append(
                    Problem(id=question, prompt=question, answer=str(entry["answer"]), meta={"entry": entry})
                )
                if len(out) == n:
                    return out
        raise ValueError(f"{self.name}: found only {len(out)} of {n} distinct {split!r} problems")

    def check(self, answer: str, problem: Problem) -> float:
        """The dataset's `score_answer(answer, entry)`."""
        if self._scorer is None:
            self._scorer = self._create(1, 0)
        entry = problem.meta.get("entry")
        if entry is None:
            return 0.0
        return self._scorer.score_answer(answer, entry)
