"""r1kit.train.log: metrics.jsonl, progress output without a terminal, and metric plots."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from rich.console import Console

from r1kit.train import log as log_mod
from r1kit.train.log import (
    MetricsLogger,
    ProgressBar,
    ema,
    format_fields,
    plot_metrics,
    read_metrics,
    stage_header,
)


def test_jsonl_lines_parse_and_hold_what_was_logged(tmp_path):
    with MetricsLogger(tmp_path / "run", stage="sft", tensorboard=False) as logger:
        logger.log({"loss": torch.tensor(2.5), "lr": 1e-3}, step=1)
        logger.log(step=2, loss=np.float32(2.0), acc=np.array([0.5, 0.25]), note="ok", bad=float("nan"))
        # each line is on disk as soon as it is logged
        lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert records[0]["step"] == 1 and records[0]["loss"] == 2.5 and records[0]["lr"] == 1e-3
    assert records[0]["stage"] == "sft" and isinstance(records[0]["time"], float)
    assert records[1] == {**records[1], "step": 2, "loss": 2.0, "acc": [0.5, 0.25], "note": "ok", "bad": None}
    assert read_metrics(tmp_path / "run") == records


def test_resume_drops_records_after_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in range(1, 6):
            logger.log(step=step, loss=1.0 / step)
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "loss"')  # torn line from a crash
    with MetricsLogger(tmp_path, resume_step=3, tensorboard=False) as logger:
        logger.log(step=4, loss=0.0)
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        (1, 1.0),
        (2, 0.5),
        (3, 1 / 3),
        (4, 0.0),
    ]


def test_tensorboard_is_optional(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=True)
    logger.log(step=0, loss=1.0)
    logger.close()
    logger.close()  # idempotent
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert not logger.tensorboard_enabled
    else:
        assert (tmp_path / "tensorboard").is_dir()


def test_progress_bar_prints_lines_without_a_terminal(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(log_mod.time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with ProgressBar(100, "sft", console=console, print_every_s=1e9) as bar:
        assert not bar.live
        for _ in range(25):
            clock[0] += 0.5
            bar.update(loss=1.2345, tokens_per_s=25_100.0, mfu=0.123)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # every 10% of 100 steps: at 10, 20; then the final line at 25
    assert lines[0] == "sft  step 10/100 (10%)  loss 1.234  25.1k tok/s  MFU 12.3%  elapsed 5.0 s, eta 45.0 s"
    assert lines[-1].startswith("sft  step 25/100 (25%)")


def test_progress_bar_time_cadence_unknown_total_and_quiet(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(log_mod.time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    bar = ProgressBar(None, "grpo", console=console, print_every_s=10.0)
    for _ in range(30):
        clock[0] += 1.0
        bar.update(reward=0.5)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "eta" not in lines[0] and lines[0].startswith("grpo  step 10  reward 0.5")

    quiet_out = io.StringIO()
    with ProgressBar(10, "x", console=Console(file=quiet_out), quiet=True) as bar:
        bar.update(5, loss=1.0)
    assert quiet_out.getvalue() == ""


def test_progress_bar_live_on_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with ProgressBar(4, "pretrain", console=console) as bar:
        assert bar.live
        for _ in range(4):
            bar.update(loss=0.5)
    assert "pretrain" in out.getvalue() and "4/4" in out.getvalue()


def test_stage_header_and_fields():
    out = io.StringIO()
    stage_header("Stage 2: GRPO", "16 prompts x 8 samples", console=Console(file=out, width=60))
    text = out.getvalue()
    assert "Stage 2: GRPO" in text and "16 prompts x 8 samples" in text
    assert (
        format_fields({"lr": 1e-4, "step_s": None, "n": 3, "phase": "warmup"})
        == "lr 1.0e-04  n 3  phase warmup"
    )


def test_ema_is_debiased():
    assert ema([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert ema([1.0, 3.0], smoothing=0.0) == [1.0, 3.0]


def test_plot_produces_a_png(tmp_path):
    with MetricsLogger(tmp_path, stage="grpo", tensorboard=False) as logger:
        for step in range(40):
            logger.log(
                step=step, reward=step / 40, accuracy=math.sqrt(step / 40), completion_len=40 + step % 7
            )
    out = plot_metrics(
        tmp_path / "metrics.jsonl",
        tmp_path / "plots" / "aha.png",
        keys=["reward", "accuracy", "completion_len", "missing"],
        title="GRPO",
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert plot_metrics(tmp_path, tmp_path / "all.png").stat().st_size > 5000  # every numeric key
    with pytest.raises(ValueError, match="no data"):
        plot_metrics(tmp_path, tmp_path / "none.png", keys=["nope"])
