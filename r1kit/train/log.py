"""Observability for training stages: metrics.jsonl (+ TensorBoard), rich progress bars, metric plots.

- :class:`MetricsLogger` appends one JSON object per step to ``run_dir/metrics.jsonl`` (flushed
  per line, so a crash loses at most the line being written) and mirrors scalars to TensorBoard
  when ``tensorboard`` is installed.
- :class:`ProgressBar` draws a rich bar with live fields (loss, tokens/s, MFU, ETA) on a terminal
  and prints a compact line every N steps or seconds elsewhere (CI logs, files, notebooks' pipes).
- :func:`plot_metrics` turns metrics.jsonl into a PNG of smoothed curves (loss; GRPO's reward,
  accuracy and completion length), with matplotlib imported only when called.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from r1kit.train.cost import format_count, format_duration

METRICS_FILE = "metrics.jsonl"


# ----------------------------------------------------------------------------------------------
# metrics.jsonl


def _json_value(value: Any) -> Any:
    """A JSON-safe version of a metric: tensors/numpy → Python, non-finite floats → None."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    elif type(value).__module__ == "numpy":
        value = value.item() if getattr(value, "size", 1) == 1 and hasattr(value, "item") else value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return str(value)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a run dir is accepted too); a torn last line is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
    return records


class MetricsLogger:
    """Append-only per-step metrics for one run directory.

    Args:
        run_dir: where ``metrics.jsonl`` (and ``tensorboard/``) go; created if needed.
        filename: name of the JSONL file.
        stage: if given, added to every record as ``"stage"`` (several stages can share a file).
        tensorboard: mirror numeric values to a SummaryWriter when torch's tensorboard support and the
            ``tensorboard`` package are installed; silently skipped otherwise.
        resume_step: when resuming from a checkpoint at this step, first drop records with a larger
            step (they were logged after the checkpoint and will be logged again).

    Each record is ``{"step": ..., "time": unix seconds, ["stage": ...], **metrics}``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        filename: str = METRICS_FILE,
        stage: str | None = None,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / filename
        self.stage = stage
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._file = self.path.open("a", encoding="utf-8")
        self._count = 0
        self._writer = self._open_tensorboard() if tensorboard else None

    def _open_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        kept = [
            r for r in read_metrics(self.path) if not (isinstance(r.get("step"), int) and r["step"] > step)
        ]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)

    @property
    def tensorboard_enabled(self) -> bool:
        """True when scalars are also written to TensorBoard."""
        return self._writer is not None

    def log(self, metrics: Mapping[str, Any] | None = None, *, step: int | None = None, **more: Any) -> dict:
        """Append one record (``metrics`` and keyword metrics) at ``step``; returns the record written.

        Tensors and numpy values are converted to Python numbers; NaN/inf become ``null``.
        """
        record: dict[str, Any] = {
            "step": step if step is not None else self._count,
            "time": round(time.time(), 3),
        }
        if self.stage is not None:
            record["stage"] = self.stage
        for key, value in {**(metrics or {}), **more}.items():
            record[str(key)] = _json_value(value)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._count += 1
        if self._writer is not None:
            prefix = f"{self.stage}/" if self.stage else ""
            for key, value in record.items():
                if (
                    key not in ("step", "time")
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    self._writer.add_scalar(prefix + key, value, record["step"])
        return record

    def close(self) -> None:
        """Flush and close the file (and TensorBoard writer). Safe to call twice."""
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
# progress


def format_fields(fields: Mapping[str, Any]) -> str:
    """Render live fields compactly: "loss 1.234  25.1k tok/s  MFU 12.3%  lr 1.0e-04  reward 0.52"."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, str):
            parts.append(f"{key} {value}")
        elif key in ("tokens_per_s", "tok_s"):
            parts.append(f"{format_count(value)} tok/s")
        elif key == "mfu":
            parts.append(f"MFU {100 * value:.1f}%")
        elif key == "lr":
            parts.append(f"lr {value:.1e}")
        elif isinstance(value, bool) or isinstance(value, int):
            parts.append(f"{key} {value}")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return "  ".join(parts)


def _console(console: Any = None) -> Any:
    if console is not None:
        return console
    from rich.console import Console

    return Console()


class ProgressBar:
    """A per-stage progress bar with live fields, quiet and CI friendly.

    On a terminal it is a rich bar: description, bar, M/N, elapsed, ETA and the fields given to
    :meth:`update`. When the console is not a terminal (CI, redirected output) it prints one compact
    line every ``print_every_steps`` steps (default: every 10% of ``total``) or ``print_every_s``
    seconds, whichever comes first, plus a final line. ``quiet=True`` prints nothing.

    Args:
        total: number of steps, or None when unknown (no ETA).
        description: label, e.g. the stage name.
        console: a rich Console (default: a new one on stdout).
        quiet: print nothing.
        print_every_steps, print_every_s: cadence of the non-terminal lines.
        start_step: steps already done (resuming).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        total: int | None,
        description: str = "",
        *,
        console: Any = None,
        quiet: bool = False,
        print_every_steps: int | None = None,
        print_every_s: float = 30.0,
        start_step: int = 0,
    ) -> None:
        self.total = total
        self.description = description
        self.console = _console(console)
        self.quiet = quiet
        self.print_every_s = print_every_s
        if print_every_steps is None and total:
            print_every_steps = max(1, total // 10)
        self.print_every_steps = print_every_steps
        self.step = self._start_step = start_step
        self.fields: dict[str, Any] = {}
        self._started = time.perf_counter()
        self._last_print_step = start_step
        self._last_print_time = self._started
        self._closed = False
        self._progress = None
        self._task = None
        if not quiet and self.console.is_terminal and not self.console.is_dumb_terminal:
            self._start_live()

    @property
    def live(self) -> bool:
        """True when a redrawing rich bar is shown (terminal), False for line mode or quiet."""
        return self._progress is not None

    def _start_live(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
            refresh_per_second=4,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            self.description, total=self.total, completed=self.step, stats=""
        )

    def eta_s(self) -> float | None:
        """Seconds left at the average speed since the bar started, or None if unknown."""
        done = self.step - self._start_step
        if not self.total or done <= 0:
            return None
        return (time.perf_counter() - self._started) / done * max(0, self.total - self.step)

    def line(self) -> str:
        """The compact status line printed in non-terminal mode."""
        elapsed = time.perf_counter() - self._started
        head = f"{self.description}  step {self.step}"
        if self.total:
            head += f"/{self.total} ({100 * self.step / self.total:.0f}%)"
        tail = f"elapsed {format_duration(elapsed)}"
        eta = self.eta_s()
        if eta is not None:
            tail += f", eta {format_duration(eta)}"
        stats = format_fields(self.fields)
        return "  ".join(part for part in (head, stats, tail) if part)

    def update(self, advance: int = 1, **fields: Any) -> None:
        """Advance by ``advance`` steps and update the live fields (loss=..., tokens_per_s=..., mfu=...)."""
        self.step += advance
        self.fields.update(fields)
        if self.quiet or self._closed:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=self.step, stats=format_fields(self.fields))
            return
        now = time.perf_counter()
        due_steps = self.print_every_steps and self.step - self._last_print_step >= self.print_every_steps
        due_time = now - self._last_print_time >= self.print_every_s
        if due_steps or due_time:
            self._print_line(now)

    def _print_line(self, now: float) -> None:
        self.console.print(self.line(), highlight=False, markup=False, soft_wrap=True)
        self._last_print_step, self._last_print_time = self.step, now

    def close(self) -> None:
        """Stop the bar; in line mode print the final state if it was not printed yet."""
        if self._closed:
            return
        self._closed = True
        if self._progress is not None:
            self._progress.stop()
        elif not self.quiet and self.step != self._last_print_step:
            self._print_line(time.perf_counter())

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RateProgress:
    """A :class:`ProgressBar` over batched work that reports a rate, e.g. problems/s of generate calls.

    Call it with the number of items done so far (cumulative); ``close()`` ends the bar.

    Args:
        total: number of items; description: the bar's label; enabled: False = print nothing;
        console: a rich Console; unit: the rate's label ("problems" -> a "problems/s" field).
    """

    def __init__(
        self, total: int, description: str, enabled: bool = True, console: Any = None, unit: str = "problems"
    ):
        self.bar = ProgressBar(total, description, console=console, quiet=not enabled)
        self.field = f"{unit}/s"
        self.start = time.perf_counter()
        self.done = 0

    def __call__(self, done: int) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(done - self.done, **{self.field: f"{done / elapsed:.1f}"})
        self.done = done

    def close(self) -> None:
        """End the bar (prints its final line)."""
        self.bar.close()


def stage_header(title: str, subtitle: str | None = None, console: Any = None) -> None:
    """Print a rule with the stage ``title`` (and a dim ``subtitle`` line) to mark a stage's start."""
    console = _console(console)
    console.rule(f"[bold]{title}")
    if subtitle:
        console.print(f"[dim]{subtitle}")


# ----------------------------------------------------------------------------------------------
# plots


def ema(values: Sequence[float], smoothing: float = 0.9) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing slider): same length as input."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = smoothing * avg + (1 - smoothing) * v
        out.append(avg / (1 - smoothing**i) if smoothing < 1 else v)
    return out


def _series(records: Iterable[Mapping[str, Any]], key: str, x: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of ``key`` against ``x``, later records winning on a repeated x, sorted by x."""
    points: dict[float, float] = {}
    for r in records:
        xv, yv = r.get(x), r.get(key)
        if isinstance(xv, (int, float)) and isinstance(yv, (int, float)) and not isinstance(yv, bool):
            points[xv] = yv
    xs = sorted(points)
    return xs, [points[v] for v in xs]


def plot_metrics(
    jsonl_path: str | Path,
    out_png: str | Path,
    keys: Sequence[str] | None = None,
    x: str = "step",
    title: str | None = None,
    smoothing: float = 0.9,
    stage: str | None = None,
) -> Path:
    """Plot metrics from a metrics.jsonl to a PNG: one subplot per key, raw (faint) and smoothed.

    Args:
        jsonl_path: a metrics.jsonl or a run directory holding one.
        out_png: output file (parent directories are created).
        keys: metrics to plot; default every numeric key except ``x``, ``step`` and ``time``.
        x: the x-axis key ("step", "time", "tokens", ...).
        title: figure title.
        smoothing: EMA factor for the smoothed line (0 = none); applied when a series has > 10 points.
        stage: plot only records of this stage.

    Returns:
        ``Path(out_png)``. Raises ValueError if none of ``keys`` has data.
    """
    from matplotlib.figure import Figure  # Agg canvas; no pyplot state, no display needed

    records = read_metrics(jsonl_path)
    if stage is not None:
        records = [r for r in records if r.get("stage") == stage]
    if keys is None:
        keys = []
        for r in records:
            for k, v in r.items():
                numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
                if numeric and k not in (x, "step", "time") and k not in keys:
                    keys.append(k)
    series = {k: _series(records, k, x) for k in keys}
    if not any(xs for xs, _ in series.values()):
        raise ValueError(f"no data for {list(keys)} against {x!r} in {jsonl_path}")

    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        xs, ys = series[key]
        ax.set_title(key)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if not xs:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        if len(xs) > 10 and smoothing > 0:
            ax.plot(xs, ys, color="C0", alpha=0.25, linewidth=1)
            ax.plot(xs, ema(ys, smoothing), color="C0", linewidth=2)
        else:
            ax.plot(xs, ys, color="C0", marker="o", linewidth=1.5)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    return save_figure(fig, out_png, title)


def save_figure(fig: Any, path: str | os.PathLike, title: str = "") -> Path:
    """Write the matplotlib ``fig`` to ``path`` as a PNG (110 dpi, parent folders made), with ``title``
    as its suptitle when given; returns the path. Every plot of r1kit is saved this way."""
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
