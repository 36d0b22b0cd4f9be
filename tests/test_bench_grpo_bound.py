"""benchmarks/_gemm.py `gemm_profile`: the GEMM share behind bench_grpo_trl's and bench_engine's `--bound`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gemm():
    spec = importlib.util.spec_from_file_location("_gemm", ROOT / "benchmarks" / "_gemm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _profiled(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof


def test_gemm_share_counts_matmuls_and_nothing_else(gemm):
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    only_gemm = gemm.gemm_profile(_profiled(lambda: [a @ b for _ in range(20)]))
    no_gemm = gemm.gemm_profile(_profiled(lambda: [(a * b).exp() for _ in range(20)]))
    mixed = gemm.gemm_profile(_profiled(lambda: [(a @ b).exp() for _ in range(20)]))
    assert only_gemm["gemm_share"] > 0.9 and only_gemm["gemm_s"] > 0 and only_gemm["gemm_calls"] == 20
    assert no_gemm["gemm_s"] == 0 and no_gemm["gemm_share"] == 0 and no_gemm["gemm_calls"] == 0
    assert 0 < mixed["gemm_share"] < 1
    assert mixed["gemm_s"] <= mixed["total_s"]
    # linear with a bias (addmm) and batched matmuls count too
    w, bias = torch.randn(128, 256), torch.randn(128)
    lin = gemm.gemm_profile(_profiled(lambda: [torch.nn.functional.linear(a, w, bias) for _ in range(20)]))
    bmm = gemm.gemm_profile(
        _profiled(lambda: [torch.randn(8, 64, 64) @ torch.randn(8, 64, 64) for _ in range(5)])
    )
    assert lin["gemm_share"] > 0.5 and bmm["gemm_s"] > 0
