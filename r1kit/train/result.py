"""What every stage's ``run(config)`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunResult:
    """The outcome of one stage run.

    Attributes:
        run_dir: the run directory (checkpoints, metrics.jsonl, config.toml, plots).
        metrics: final metrics of the stage (e.g. ``loss``, ``steps``, ``val_accuracy``, ``stopped_early``,
            ``stop_reason``, ``model_dir``).
        cost: the cost summary of ``r1kit.train.cost`` (tokens, FLOPs, MFU, device-hours, dollars).
        model_dir: the final model in HF layout (weights + tokenizer); default ``metrics["model_dir"]``.
        steps: optimiser steps done, a resumed run's earlier steps included; default ``metrics["steps"]``.
        tokens: tokens processed over the run (all ranks); default ``cost["tokens"]``.
        metrics_path: the JSONL metrics file; default ``run_dir/metrics.jsonl``.

    The last four are filled from ``metrics`` / ``cost`` when not given, so ``RunResult(run_dir, metrics,
    cost)`` keeps working.
    """

    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    model_dir: Path | None = None
    steps: int = 0
    tokens: int = 0
    metrics_path: Path | None = None

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if self.model_dir is None and self.metrics.get("model_dir"):
            self.model_dir = Path(self.metrics["model_dir"])
        if not self.steps:
            self.steps = int(self.metrics.get("steps") or self.cost.get("steps") or 0)
        if not self.tokens:
            self.tokens = int(self.cost.get("tokens") or 0)
        if self.metrics_path is None:
            self.metrics_path = self.run_dir / "metrics.jsonl"

    @property
    def stopped_early(self) -> bool:
        """True when the run ended before its step budget (validation target reached, run.stop_after)."""
        return bool(self.metrics.get("stopped_early", False))
