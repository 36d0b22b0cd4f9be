"""r1kit.train.cost: device peaks, the cost meter, formatting and stage totals."""

from __future__ import annotations

import math

import pytest

from r1kit.train import cost
from r1kit.train.cost import (
    CPU_DOLLARS_PER_CORE_HOUR,
    DEFAULT_GPU_DOLLARS_PER_HOUR,
    DEVICE_PEAKS,
    CostMeter,
    datasheet_peak,
    dtype_key,
    format_cost,
    format_count,
    lookup_device_peak,
    match_device_name,
    summarize_costs,
)


class FakeClock:
    """Replaces time.perf_counter in r1kit.train.cost so timings are exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(cost.time, "perf_counter", fake)
    return fake


@pytest.mark.parametrize(
    ("name", "key", "bf16"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989e12),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", "H100 NVL", 835e12),
        ("NVIDIA H200", "H200", 989e12),
        ("NVIDIA H800", "H800", 989e12),
        ("NVIDIA A100-SXM4-80GB", "A100", 312e12),
        ("NVIDIA A100 80GB PCIe", "A100", 312e12),
        ("NVIDIA A10G", "A10G", 70e12),
        ("NVIDIA A10", "A10", 125e12),
        ("NVIDIA L4", "L4", 121e12),
        ("NVIDIA L40S", "L40S", 362e12),
        ("NVIDIA L40", "L40", 181e12),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 165.2e12),
        ("NVIDIA GeForce RTX 3090", "RTX 3090", 71e12),
        ("AMD Instinct MI300X", "MI300X", 1307e12),
    ],
)
def test_device_names_map_to_datasheet_peaks(name, key, bf16):
    assert match_device_name(name) == key
    assert datasheet_peak(name, "bf16") == bf16
    assert datasheet_peak(name, "float16") == bf16


def test_peak_table_is_sane():
    for key, peaks in DEVICE_PEAKS.items():
        assert peaks, key
        if "bf16" in peaks and "fp32" in peaks:
            assert peaks["bf16"] > peaks["fp32"], key
    assert datasheet_peak("NVIDIA H100 80GB HBM3", "fp32") == 67e12
    assert datasheet_peak("Tesla T4", "bf16") is None  # no bf16 tensor cores
    assert match_device_name("Some Future GPU") is None


def test_dtype_key_accepts_torch_dtypes():
    torch = pytest.importorskip("torch")
    assert dtype_key(torch.bfloat16) == "bf16"
    assert dtype_key(torch.float32) == "fp32"
    assert dtype_key("float16") == "fp16"
    with pytest.raises(ValueError, match="unsupported dtype"):
        dtype_key("int8")


def test_cpu_probe_is_measured_and_cached():
    first = lookup_device_peak("cpu", "fp32")
    assert first.source == "measured matmul" and "threads" in first.name
    assert 1e9 < first.flops < 1e14
    assert lookup_device_peak("cpu", "fp32").flops == first.flops  # cached: no second probe


def test_meter_counts_and_reports(clock):
    meter = CostMeter("cuda", world_size=4, peak_flops=1e12, device_name="NVIDIA H800")
    assert meter.dollars_per_device_hour == DEFAULT_GPU_DOLLARS_PER_HOUR
    meter.start()
    clock.now += 2.0
    step = meter.add(tokens=1000, flops=4e12)
    assert step["step_s"] == pytest.approx(2.0)
    assert step["tokens_per_s"] == pytest.approx(500.0)
    assert step["mfu"] == pytest.approx(4e12 / 2.0 / 4e12)
    clock.now += 1.0
    meter.add(tokens=500, flops=2e12)
    meter.stop()
    clock.now += 100.0  # stopped: not counted
    s = meter.summary()
    assert s["tokens"] == 1500 and s["flops"] == 6e12 and s["steps"] == 2
    assert s["wall_s"] == pytest.approx(3.0)
    assert s["device_hours"] == pytest.approx(3.0 * 4 / 3600)
    assert s["dollars"] == pytest.approx(3.0 * 4 / 3600 * 2.0)
    assert s["mfu"] == pytest.approx(6e12 / 3.0 / 4e12)
    assert s["tokens_per_s"] == pytest.approx(500.0)
    assert s["device_name"] == "NVIDIA H800" and s["peak_source"] == "given" and s["dtype"] == "bf16"


def test_meter_resumes_and_uses_flops_per_token(clock):
    meter = CostMeter("cpu", peak_flops=1e11, flops_per_token=6e6)
    assert meter.dollars_per_device_hour > 0 and meter.dtype == "fp32"
    with meter:
        clock.now += 10.0
        meter.add(100)
    state = meter.state_dict()
    resumed = CostMeter("cpu", peak_flops=1e11, flops_per_token=6e6)
    resumed.load_state_dict(state)
    with resumed:
        clock.now += 5.0
        resumed.add(50)
    s = resumed.summary()
    assert (
        s["tokens"] == 150 and s["flops"] == pytest.approx(150 * 6e6) and s["wall_s"] == pytest.approx(15.0)
    )
    with pytest.raises(ValueError, match="flops"):
        CostMeter("cpu", peak_flops=1.0).add(1)


def test_cpu_price_is_per_core_hour():
    torch = pytest.importorskip("torch")
    meter = CostMeter("cpu", peak_flops=1e11)
    assert meter.dollars_per_device_hour == pytest.approx(CPU_DOLLARS_PER_CORE_HOUR * torch.get_num_threads())


def test_deepseek_v3_reported_cost_reproduces():
    """2.788M H800 GPU-hours at $2 is $5.576M (DeepSeek-V3 report)."""
    s = {"wall_s": 2.788e6 * 3600 / 2048, "world_size": 2048, "peak_flops": 989e12, "flops": 0.0, "tokens": 0}
    s["device_hours"] = s["wall_s"] * s["world_size"] / 3600
    s["dollars"] = s["device_hours"] * DEFAULT_GPU_DOLLARS_PER_HOUR
    assert s["dollars"] == pytest.approx(5.576e6)


def test_format_summary_one_line(clock):
    meter = CostMeter("cuda", world_size=2, peak_flops=1e15, device_name="NVIDIA H100")
    meter.start()
    clock.now += 3600.0
    meter.add(tokens=1_230_000, flops=7.2e17)
    text = meter.format_summary()
    assert text.startswith("1.23M tokens, 720 PFLOPs, 2 device-hours (2 x NVIDIA H100), $4, MFU 10.0%")
    assert "\n" not in text
    assert format_count(1234) == "1.23k" and format_count(12) == "12" and format_count(0) == "0"


def test_summarize_costs_totals_stages():
    a = {"tokens": 100, "flops": 1e12, "wall_s": 10.0, "device_hours": 10 / 3600, "dollars": 0.1, "steps": 1}
    a |= {"world_size": 1, "peak_flops": 1e12, "device": "cpu", "device_name": "cpu", "dtype": "fp32"}
    b = dict(a, tokens=300, flops=3e12, wall_s=30.0, device_hours=30 / 3600, dollars=0.3, dtype="bf16")
    total = summarize_costs({"sft": a, "grpo": b})
    assert total["stages"] == 2 and total["tokens"] == 400 and total["wall_s"] == 40.0
    assert total["dollars"] == pytest.approx(0.4)
    assert total["mfu"] == pytest.approx(4e12 / (40.0 * 1e12))
    assert total["device"] == "cpu" and total["dtype"] == "mixed"
    assert "400 tokens" in format_cost(total)
    empty = summarize_costs([])
    assert empty["tokens"] == 0 and empty["mfu"] == 0.0 and not math.isnan(empty["tokens_per_s"])


def test_cpu_peak_probe_counts_cpu_time_not_wall_time_on_a_busy_machine(monkeypatch):
    """A probe whose threads got a tenth of a core must not read a tenth of the peak (it made a run
    report MFU 158%): on a CPU a round's time is min(wall, CPU time per thread)."""
    import torch

    from r1kit.train import cost

    class Clock:
        wall = cpu = 0.0

        def perf_counter(self):  # each call: 0.05 s of wall time ...
            self.wall += 0.05
            return self.wall

        def process_time(self):  # ... of which the process got 0.005 s per thread
            self.cpu += 0.005 * torch.get_num_threads()
            return self.cpu

    monkeypatch.setattr(cost, "time", Clock())
    busy = cost.measure_matmul_flops("cpu", "fp32", size=64, min_time_s=0.1, rounds=1)

    class Idle(Clock):
        def process_time(self):  # every thread had its core
            self.cpu += 0.05 * torch.get_num_threads()
            return self.cpu

    monkeypatch.setattr(cost, "time", Idle())
    idle = cost.measure_matmul_flops("cpu", "fp32", size=64, min_time_s=0.1, rounds=1)
    assert busy == pytest.approx(10 * idle, rel=0.35)


def test_matmul_probe_shrinks_for_an_emulated_dtype(monkeypatch):
    """A dtype the CPU emulates (bf16 on AVX2: minutes per 2048^2 matmul) is probed at a size whose one
    matmul fits in max_matmul_s, predicted from a timed 256^2 one; a fast dtype keeps the full size."""
    import torch

    sizes, real_mm = [], torch.mm

    def recording_mm(a, b):
        sizes.append(a.shape[0])
        return real_mm(a, b)

    class Clock:  # every perf_counter call advances `step` seconds: each timed matmul "takes" `step`
        def __init__(self, step):
            self.step, self.wall, self.cpu = step, 0.0, 0.0

        def perf_counter(self):
            self.wall += self.step
            return self.wall

        def process_time(self):
            self.cpu += self.step * torch.get_num_threads()
            return self.cpu

    monkeypatch.setattr(torch, "mm", recording_mm)
    monkeypatch.setattr(cost, "time", Clock(0.5))  # 0.5 s at 256^2 predicts 4 s at 512^2 > 2 s
    slow = cost.measure_matmul_flops("cpu", "fp32", size=2048, min_time_s=0.1, rounds=1, max_matmul_s=2.0)
    assert sizes[:2] == [256, 256] and set(sizes[2:]) == {256}
    assert slow == pytest.approx(2 * 256**3 / 0.5)
    sizes.clear()
    monkeypatch.setattr(cost, "time", Clock(0.001))  # 0.001 s at 256^2 predicts 0.064 s at 1024^2
    cost.measure_matmul_flops("cpu", "fp32", size=1024, min_time_s=0.1, rounds=1, max_matmul_s=2.0)
    assert sizes[:2] == [256, 256] and set(sizes[2:]) == {1024}


def test_cpu_flags_reads_the_matmul_flags_in_order():
    from r1kit.train.cost import cpu_description, cpu_flags

    info = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse avx512f amx_bf16 avx2 fma\n\nprocessor\t: 1\n"
    assert cpu_flags(info) == ["avx2", "fma", "avx512f", "amx_bf16"]
    assert cpu_flags("no flags line here") == [] and cpu_flags(info, ("sse", "avx512_bf16")) == ["sse"]
    assert "CPUs, load average" in cpu_description()
