"""Data parallelism on CPU with gloo: 2 ranks x batch b trains like 1 rank x batch 2b (DDP and FSDP2)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from tiny_runs import DISTRIBUTED_CASES, distributed_worker, losses, pretrain_config

from r1kit.train import pretrain
from r1kit.train.loop import DistInfo, setup_distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_one_rank_with_the_same_global_batch(tmp_path: Path):
    # One spawn of 2 ranks runs every case (process start-up dominates the cost of these tiny runs).
    mp.spawn(distributed_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    for strategy, moe in DISTRIBUTED_CASES:
        name = f"{strategy}-{'moe' if moe else 'dense'}"
        pretrain.run(pretrain_config(tmp_path / "one" / name, steps=4, moe=moe, threads=1))
        one, two = losses(tmp_path / "one" / name), losses(tmp_path / "two" / name)
        assert len(two) == len(one) == 4, name
        # Same examples, loss normalised by the global token count, MoE load summed over ranks:
        # equal up to float reduction order.
        torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-5, atol=1e-6, msg=name)
        assert (tmp_path / "two" / name / "model" / "config.json").is_file()  # rank 0 exported the model


def test_setup_distributed_is_a_no_op_in_one_process(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup_distributed("cpu") == DistInfo()
