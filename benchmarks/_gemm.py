"""The GEMM time of a profiled CPU step: the Amdahl bounds of bench_engine.py and bench_grpo_trl.py `--bound`.

Stdlib only at import (the TRL worker runs it in its own environment, without r1kit).
"""

from __future__ import annotations

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def gemm_profile(prof) -> dict[str, float]:
    """{"gemm_s", "total_s", "gemm_share", "gemm_calls"} of a finished CPU `torch.profiler.profile`: self time
    in the GEMM ops (`GEMM_OPS`, what any implementation of the same work must run) and in all ops. The
    profiler's per-op overhead inflates the non-GEMM part a little, so a bound 1 / share is slightly generous."""
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS) / 1e6
    calls = sum(e.count for e in events if e.key in GEMM_OPS)
    return {"gemm_s": gemm, "total_s": total, "gemm_share": gemm / max(total, 1e-9), "gemm_calls": calls}
