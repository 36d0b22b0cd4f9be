"""Exact resume and crash-safe checkpoints at the level of a whole training run."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace
from pathlib import Path

import pytest
from tiny_runs import losses, pretrain_config

from r1kit.train import pretrain
from r1kit.train.checkpoint import latest_checkpoint


def _resumed(cfg: pretrain.Config) -> pretrain.Config:
    return replace(cfg, run=replace(cfg.run, resume=True, stop_after=0))


def test_stop_and_resume_matches_uninterrupted_run(tmp_path: Path):
    full = pretrain.run(pretrain_config(tmp_path / "full", steps=6))
    cfg = pretrain_config(tmp_path / "split", steps=6)
    first = pretrain.run(replace(cfg, run=replace(cfg.run, stop_after=3)))
    assert first.metrics["steps"] == 3 and latest_checkpoint(tmp_path / "split").name == "step_00000003"
    second = pretrain.run(_resumed(cfg))
    assert second.metrics["steps"] == 6
    # Same data order, optimizer moments, schedule and RNG: bit-identical losses on CPU.
    assert losses(tmp_path / "split") == losses(tmp_path / "full")
    assert second.metrics["loss"] == full.metrics["loss"]
    assert second.cost["tokens"] == full.cost["tokens"]  # cost totals carry over the resume


def test_existing_checkpoints_need_resume_flag(tmp_path: Path):
    cfg = pretrain_config(tmp_path / "run", steps=2)
    pretrain.run(cfg)
    with pytest.raises(FileExistsError, match="--run.resume true"):
        pretrain.run(cfg)


def _run_and_die_while_saving_step_4(run_dir: str) -> None:
    """A 6-step run with a checkpoint every 2 steps whose step-4 save dies half-way, like kill -9."""
    import torch

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if ".tmp-step_00000004" in str(f):  # model and trainer state written, not yet renamed into place
            os._exit(9)

    torch.save = dying_save
    cfg = pretrain_config(run_dir, steps=6)
    pretrain.run(replace(cfg, run=replace(cfg.run, save_every=2)))


def test_kill_during_save_resumes_from_previous_checkpoint(tmp_path: Path):
    run_dir = tmp_path / "killed"
    # spawn, not fork: a forked child of a process whose OpenMP threads already ran can hang in them
    # (seen under load after other tests of this file had trained); a fresh interpreter costs seconds
    proc = multiprocessing.get_context("spawn").Process(
        target=_run_and_die_while_saving_step_4, args=(str(run_dir),)
    )
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == 9
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir()]
    assert any(name.startswith(".tmp-step_00000004") for name in leftovers)  # the torn save is there...
    assert latest_checkpoint(run_dir).name == "step_00000002"  # ...but never chosen
    cfg = pretrain_config(run_dir, steps=6)
    result = pretrain.run(replace(cfg, run=replace(cfg.run, resume=True, save_every=2)))
    assert result.metrics["steps"] == 6
    full_dir = tmp_path / "full"
    pretrain.run(pretrain_config(full_dir, steps=6))
    assert losses(run_dir) == losses(full_dir)
