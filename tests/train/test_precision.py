"""The precision policy (`r1kit.precision`): "auto" by measured bf16 speed-up, the same in every stage."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from r1kit import precision
from r1kit.model import attention
from r1kit.train import loop
from r1kit.train.cost import CostMeter, format_cost


@pytest.fixture
def measured(monkeypatch):
    """Let "auto" measure (the suite pins it to fp32) and fake the probe's answer."""
    monkeypatch.delenv(precision.AUTO_ENV, raising=False)

    def fake(speedup):
        monkeypatch.setattr(precision, "bf16_speedup", lambda device="cpu", width=None: speedup)

    return fake


def test_auto_follows_the_measured_speedup_not_the_device_name(measured):
    measured(6.0)  # an AMX CPU
    assert precision.resolve_precision("auto", "cpu") == "bfloat16"
    assert loop.autocast_for(torch.device("cpu"), "auto") is not contextlib.nullcontext
    measured(0.7)  # an AVX2 CPU emulating bf16
    assert precision.resolve_precision("auto", "cpu") == "float32"
    assert loop.autocast_for(torch.device("cpu"), "auto") is contextlib.nullcontext
    measured(precision.BF16_MIN_SPEEDUP - 0.01)
    assert precision.resolve_precision("auto", "cpu") == "float32"


def test_auto_measures_at_the_model_width(monkeypatch):
    monkeypatch.delenv(precision.AUTO_ENV, raising=False)
    seen = []
    # an AMX CPU: bf16 gains nothing at width 128, ~7x at 512
    monkeypatch.setattr(
        precision, "_probe", lambda dev, threads, size: seen.append(size) or (0.95 if size <= 128 else 7.0)
    )
    assert precision.resolve_precision("auto", "cpu", width=128) == "float32"
    assert precision.resolve_precision("auto", "cpu", width=896) == "bfloat16"
    assert precision.resolve_precision("auto", "cpu") == "bfloat16"
    assert seen == [128, 896, 512]
    assert precision.probe_size("cpu", 100) == 128 and precision.probe_size("cpu", 10_000) == 2048


def test_explicit_choices_and_the_environment_pin(measured, monkeypatch):
    measured(10.0)
    assert precision.resolve_precision("fp32", "cpu") == "float32"
    assert precision.resolve_precision("bf16", "cpu") == "bfloat16"
    monkeypatch.setenv(precision.AUTO_ENV, "fp32")
    assert precision.resolve_precision("auto", "cpu") == "float32"


def test_probe_measures_once_per_process():
    precision._probe.cache_clear()
    first = precision.bf16_speedup("cpu")
    assert first > 0
    assert precision.bf16_speedup("cpu") == first
    assert precision._probe.cache_info().hits >= 1


def test_bf16_autocast_gives_bf16_matmuls_and_fp32_cpu_attention(measured):
    measured(6.0)
    q, k, v = (torch.randn(2, 4, 6, 8).to(torch.bfloat16) for _ in range(3))
    with loop.autocast_for(torch.device("cpu"), "auto")():
        assert (torch.randn(3, 4) @ torch.randn(4, 5)).dtype == torch.bfloat16
        got = attention._sdpa(q, k, v, None, None)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_cost_peak_follows_the_precision(measured, tmp_path):
    measured(6.0)

    class Stage(loop.Stage):
        name = "t"

    model = torch.nn.Linear(4, 4)
    for name, want in (("auto", "bf16"), ("float32", "fp32")):
        train = loop.TrainConfig(steps=1, batch_size=1, precision=name, device="cpu")
        trainer = loop.Trainer(
            model,
            Stage(),
            train,
            loop.RunConfig(dir=str(tmp_path / name)),
            dist=loop.DistInfo(),
            device=torch.device("cpu"),
        )
        assert trainer.meter.dtype == want
    meter = CostMeter("cpu", dtype="bf16", peak_flops=2e12)
    assert "of the bf16 peak (2TFLOP/s)" in format_cost(meter.summary())
