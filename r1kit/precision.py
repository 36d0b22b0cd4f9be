"""The precision policy of every stage: what ``"auto"`` means, decided by measuring the device.

``train.precision = "auto"`` (and ``dtype = "auto"`` wherever a stage loads weights) resolves to
bfloat16 where a bf16 matmul is much faster than an fp32 one on *this* device, and to float32
elsewhere. The device is not judged by its name: a one-time micro-benchmark (:func:`bf16_speedup`,
cached per process, device, thread count and size) times square matmuls in both dtypes at the
model's width (a width-128 model gains nothing from AMX, a width-512 one ~7x). GPUs with bf16
tensor cores and CPUs with AMX-BF16 (or AVX512-BF16) come out several times faster in bf16; an
AVX2-only CPU, which emulates bf16, comes out slower, and stays in fp32.

- :func:`resolve_precision`: ``"auto"`` / ``"bfloat16"`` / ``"float32"`` (any spelling of the dtype
  vocabulary, `r1kit.train.sections.normalize_dtype`) -> ``"bfloat16"`` or ``"float32"``.
- :func:`autocast_factory`: a factory of the autocast context for that precision (a no-op for fp32);
  weights and optimiser state stay fp32, the matmuls run in bf16. On a CPU, attention is kept in
  fp32 under autocast (`r1kit.model.attention`): its bf16 backward there is several times slower
  than the fp32 one.
- The cost module's peak FLOP/s follows the precision used (`r1kit.train.cost.CostMeter` gets
  ``"bf16"`` or ``"fp32"``), so MFU is measured against the peak of the dtype that ran.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

import torch

from r1kit.train.cost import measure_matmul_flops
from r1kit.train.sections import normalize_dtype

__all__ = [
    "AUTO_ENV",
    "BF16_MIN_SPEEDUP",
    "autocast_factory",
    "bf16_speedup",
    "probe_size",
    "resolve_precision",
]

# Names a dtype that "auto" resolves to without measuring (see resolve_precision).
AUTO_ENV = "R1KIT_AUTO_PRECISION"

# "Much faster": bf16 must beat fp32 by this factor on the probe for "auto" to pick it. bf16 costs
# some accuracy, so a marginal win does not justify it. AMX CPUs measure ~4-7x, GPUs ~10x+,
# AVX2-only CPUs < 1x.
BF16_MIN_SPEEDUP = 1.5


@functools.lru_cache(maxsize=32)
def _probe(device_str: str, threads: int, size: int) -> float:
    device = torch.device(device_str)
    min_time = 0.02 if device.type == "cuda" else 0.03  # ~0.1-0.2 s in all on 2 CPU threads
    try:
        fp32 = measure_matmul_flops(device, "fp32", size, min_time)
        bf16 = measure_matmul_flops(device, "bf16", size, min_time)
    except (RuntimeError, TypeError):  # no bf16 matmul on this device at all
        return 0.0
    return bf16 / fp32


def probe_size(device: Any, width: int | None = None) -> int:
    """The side of the probe's square matmuls: the model's width when known (a multiple of 64, within
    [64, 2048]: at width 128 an AMX CPU runs bf16 no faster than fp32, at 512 ~7x faster), else 512
    on a CPU and 2048 on an accelerator."""
    if width is None or width <= 0:
        return 512 if torch.device(device).type == "cpu" else 2048
    return int(min(max(64 * round(width / 64), 64), 2048))


def bf16_speedup(device: Any = "cpu", width: int | None = None) -> float:
    """How many times faster a bf16 matmul is than an fp32 one on ``device`` (fp32 s / bf16 s), at
    the model width ``width`` when given (:func:`probe_size`).

    Measured once per process, device, CPU thread count and size (~0.1 s), then cached. 0.0 when the
    device has no bf16 matmul.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _probe(str(device), torch.get_num_threads(), probe_size(device, width))


def resolve_precision(precision: str, device: Any = "cpu", width: int | None = None) -> str:
    """``"bfloat16"`` or ``"float32"``: an explicit choice as given, ``"auto"`` by :func:`bf16_speedup`
    (bf16 when it is at least :data:`BF16_MIN_SPEEDUP` times faster than fp32 on ``device``, at the
    model width ``width`` when given: a tiny model on an AMX CPU stays fp32).

    The environment variable ``R1KIT_AUTO_PRECISION`` (a dtype name) replaces the measurement, e.g.
    to pin "auto" to float32 for bit-reproducible runs on mixed machines (the test suite does).
    float16 is refused by the callers that train (it needs a loss scaler); here it passes through.
    """
    key = normalize_dtype(precision)
    if key != "auto":
        return key
    pinned = os.environ.get(AUTO_ENV, "").strip()
    if pinned:
        pinned = normalize_dtype(pinned)
        if pinned != "auto":
            return pinned
    return "bfloat16" if bf16_speedup(device, width) >= BF16_MIN_SPEEDUP else "float32"


def autocast_factory(
    device: Any, precision: str = "auto", width: int | None = None
) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context for ``precision`` on ``device`` and a model of width ``width``
    (resolved by :func:`resolve_precision`): bf16 autocast, or ``contextlib.nullcontext`` for fp32."""
    device = torch.device(device)
    if resolve_precision(precision, device, width) != "bfloat16":
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
