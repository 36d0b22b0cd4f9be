"""Cost accounting the way DeepSeek reported DeepSeek-V3's: tokens, FLOPs, device-hours, dollars, MFU.

DeepSeek-V3 (arXiv 2412.19437) quoted 2.788M H800 GPU-hours, i.e. $5.576M at an assumed rental
price of $2 per GPU-hour, for the final training run only. r1kit reports every stage the same way:

- device-hours = wall-clock hours x number of devices (world size), idle time included;
- dollars = device-hours x a price per device-hour (``DEFAULT_GPU_DOLLARS_PER_HOUR`` or, on a
  CPU, ``CPU_DOLLARS_PER_CORE_HOUR`` x threads);
- MFU = achieved model FLOP/s / (peak FLOP/s per device x devices), where the model FLOPs are the
  ones the caller counts (~6 x active parameters per trained token, plus attention; see
  ``r1kit.model.counting.flops_per_token``) and the peak is the dense datasheet number for GPUs
  or a measured matmul throughput for CPUs.

Typical use in a training loop::

    meter = CostMeter(device, dtype=torch.bfloat16, world_size=world_size)
    with meter:
        for batch in batches:
            ...
            step = meter.add(tokens=n_tokens, flops=n_tokens * flops_per_token)
            bar.update(loss=loss, tokens_per_s=step["tokens_per_s"], mfu=step["mfu"])
    result_cost = meter.summary()

``tokens`` and ``flops`` passed to :meth:`CostMeter.add` are totals over all devices.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Dense (no 2:4 sparsity) peak FLOP/s per device, from the vendors' datasheets and architecture
# whitepapers: NVIDIA H100/H200/H800/H20/A100/L4/L40S/L40/A10 datasheets, the Ampere GA102 and
# Ada AD102 whitepapers for GeForce cards (bf16 with fp32 accumulate, the training setting), AMD
# Instinct MI300X/MI250X datasheets. "bf16" = tensor/matrix-core bf16, "tf32" = tensor-core tf32,
# "fp32" = non-tensor fp32 (AMD: fp32 matrix). Datasheets quote sparse numbers first: halve them.
DEVICE_PEAKS: dict[str, dict[str, float]] = {
    "B200": {"bf16": 2250e12, "tf32": 1100e12},
    "H200 NVL": {"bf16": 835e12, "tf32": 418e12, "fp32": 60e12},
    "H200": {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12},
    "H100 NVL": {"bf16": 835e12, "tf32": 418e12, "fp32": 60e12},
    "H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12},
    "H100 SXM": {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12},  # also GH200
    "H800 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12},
    "H800": {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12},  # SXM; DeepSeek-V3's GPU
    "H20": {"bf16": 148e12, "tf32": 74e12, "fp32": 44e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},  # SXM and PCIe alike
    "A800": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
    "L40": {"bf16": 181e12, "tf32": 90.5e12, "fp32": 90.5e12},
    "L4": {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "A10G": {"bf16": 70e12, "tf32": 35e12, "fp32": 31.2e12},  # AWS-only part; no public datasheet
    "A10": {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    "RTX 6000 Ada": {"bf16": 364e12, "tf32": 182e12, "fp32": 91.1e12},
    "RTX A6000": {"bf16": 155e12, "tf32": 77.4e12, "fp32": 38.7e12},
    "RTX 5090": {"bf16": 209.5e12, "fp32": 104.8e12},
    "RTX 4090": {"bf16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},
    "RTX 3090": {"bf16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},  # no bf16 tensor cores
    "T4": {"fp16": 65e12, "fp32": 8.1e12},  # no bf16 tensor cores
    "MI325X": {"bf16": 1307e12, "fp32": 163.4e12},
    "MI300X": {"bf16": 1307e12, "fp32": 163.4e12},
    "MI250X": {"bf16": 383e12, "fp32": 95.7e12},
}

# torch.cuda.get_device_name() spellings -> DEVICE_PEAKS key; first match wins, so the more
# specific patterns come first ("H100 PCIe" before "H100", "L40S" before "L40" before "L4").
_NAME_PATTERNS: list[tuple[str, str]] = [
    (r"\bB200\b", "B200"),
    (r"\bH200\b.*\bNVL\b", "H200 NVL"),
    (r"\bH200\b", "H200"),
    (r"\bH100\b.*\bNVL\b", "H100 NVL"),
    (r"\bH100\b.*\bPCIE\b", "H100 PCIe"),
    (r"\bGH200\b|\bH100\b", "H100 SXM"),
    (r"\bH800\b.*\bPCIE\b", "H800 PCIe"),
    (r"\bH800\b", "H800"),
    (r"\bH20\b", "H20"),
    (r"\bA100\b", "A100"),
    (r"\bA800\b", "A800"),
    (r"\bL40S\b", "L40S"),
    (r"\bL40\b", "L40"),
    (r"\bL4\b", "L4"),
    (r"\bA10G\b", "A10G"),
    (r"\bA10\b", "A10"),
    (r"\bRTX 6000 ADA\b", "RTX 6000 Ada"),
    (r"\bRTX A6000\b", "RTX A6000"),
    (r"\bRTX 5090\b", "RTX 5090"),
    (r"\bRTX 4090\b", "RTX 4090"),
    (r"\bRTX 3090\b", "RTX 3090"),
    (r"\bV100\b", "V100"),
    (r"\bT4\b", "T4"),
    (r"\bMI325X\b", "MI325X"),
    (r"\bMI300X\b", "MI300X"),
    (r"\bMI250X?\b", "MI250X"),
]

# DeepSeek-V3's assumed H800 rental price (arXiv 2412.19437, section 1).
DEFAULT_GPU_DOLLARS_PER_HOUR = 2.0
# $0.05 per hour for a 2-core machine: roughly the on-demand price of a small 2-vCPU cloud VM.
CPU_DOLLARS_PER_CORE_HOUR = 0.025


@dataclass(frozen=True)
class DevicePeak:
    """Peak FLOP/s of one device for one dtype.

    Attributes:
        name: human-readable device name, e.g. "NVIDIA H100 80GB HBM3" or "AMD EPYC 7B13 (2 threads)".
        flops: peak FLOP/s of one device.
        source: "datasheet" (DEVICE_PEAKS entry, named in ``key``), "measured matmul" (a probe),
            or "given" (passed by the caller).
        key: the DEVICE_PEAKS entry used, or "".
    """

    name: str
    flops: float
    source: str
    key: str = ""


def dtype_key(dtype: Any) -> str:
    """Normalise a torch dtype or a string ("bf16", "bfloat16", "float32", ...) to bf16/fp16/fp32."""
    text = str(dtype).removeprefix("torch.").lower()
    aliases = {
        "bfloat16": "bf16",
        "bf16": "bf16",
        "float16": "fp16",
        "half": "fp16",
        "fp16": "fp16",
        "float32": "fp32",
        "float": "fp32",
        "fp32": "fp32",
        "tf32": "tf32",
    }
    if text not in aliases:
        raise ValueError(f"unsupported dtype for peak FLOPs: {dtype!r}; use bf16, fp16, fp32 or tf32")
    return aliases[text]


def match_device_name(name: str) -> str | None:
    """The DEVICE_PEAKS key for a device name as CUDA/ROCm report it, or None if unknown."""
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return key
    return None


def datasheet_peak(name: str, dtype: Any) -> float | None:
    """Dense datasheet peak FLOP/s for a device name and dtype, or None when not in the table.

    fp16 falls back to the bf16 figure (equal on every listed bf16-capable part); fp32 on a GPU
    uses the tf32 figure when ``tf32`` is passed explicitly, otherwise plain fp32.
    """
    key = match_device_name(name)
    if key is None:
        return None
    peaks = DEVICE_PEAKS[key]
    want = dtype_key(dtype)
    order = {"bf16": ["bf16"], "fp16": ["fp16", "bf16"], "fp32": ["fp32"], "tf32": ["tf32"]}[want]
    for k in order:
        if k in peaks:
            return peaks[k]
    return None


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux, else platform), without thread count."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


# The CPU flags that decide matmul speed (AVX2 / AVX-512 fp32, native bf16, AMX tiles): every CPU figure
# is recorded with them (`cpu_description`).
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_flags(cpuinfo: str | None = None, wanted: tuple[str, ...] = MATMUL_FLAGS) -> list[str]:
    """The flags among `wanted` (in that order) of the first CPU in `cpuinfo` (/proc/cpuinfo's text;
    None reads it; [] when it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
    line = next((ln for ln in cpuinfo.splitlines() if ln.split(":", 1)[0].strip() == "flags"), "")
    have = set(line.split(":", 1)[1].split()) if ":" in line else set()
    return [f for f in wanted if f in have]


def cpu_description() -> str:
    """One line for the record of a CPU figure: model, matmul flags, CPU count and load average."""
    import os

    flags = " ".join(cpu_flags()) or "no AVX2/AVX-512/AMX flags read"
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return f"{cpu_name()} ({flags}), {os.cpu_count()} CPUs, load average {load}"


def measure_matmul_flops(
    device: Any = "cpu",
    dtype: Any = "fp32",
    size: int = 2048,
    min_time_s: float = 0.1,
    rounds: int = 3,
    max_matmul_s: float = 2.0,
) -> float:
    """Best-of-``rounds`` FLOP/s of ``size``-square matmuls on ``device`` (each round >= min_time_s).

    The achievable-peak probe for devices without a datasheet entry (CPUs, unknown GPUs). With the
    defaults it takes ~0.5 s on 2 CPU cores (fp32 2048^2: 110-150 GFLOP/s; 1024^2 reads ~30% lower,
    which would flatter MFU). Returns FLOP/s (2 * size^3 per matmul).

    On a CPU a round's time is the smaller of its wall time and the process's CPU time per torch thread:
    on a busy machine the probe's threads get a fraction of a core, its wall time grows and a wall-time
    peak reads low (a SmolLM2 run probed under load reported MFU 158%); the CPU time per thread is what
    the matmuls cost on a core of their own. On an idle machine the two agree.

    A dtype the device emulates (bf16 on a CPU without AVX-512-BF16 or AMX: one 2048^2 matmul took over
    two minutes on an AVX2 EPYC) is probed at a smaller size: the size halves (down to 256) until one
    matmul is predicted, from a timed 256^2 one, to take at most ``max_matmul_s``.
    """
    import torch

    torch_dtype = {
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "fp32": torch.float32,
        "tf32": torch.float32,
    }[dtype_key(dtype)]
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)  # leave the global RNG untouched
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=torch_dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=torch_dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        small = min(size, 256)
        a_small, b_small = a[:small, :small].contiguous(), b[:small, :small].contiguous()
        for _ in range(2):  # the second call is timed: the first selects kernels
            start = time.perf_counter()
            torch.mm(a_small, b_small)
            sync()
            one = time.perf_counter() - start
        while size > small and one * (size / small) ** 3 > max_matmul_s:
            size //= 2
        a, b = a[:size, :size].contiguous(), b[:size, :size].contiguous()
        torch.mm(a, b)  # warm-up: allocations, kernel selection
        sync()
        best = 0.0
        threads = torch.get_num_threads() if device.type == "cpu" else 0
        for _ in range(rounds):
            n, start, cpu_start = 0, time.perf_counter(), time.process_time()
            while True:
                torch.mm(a, b)
                n += 1
                sync()
                elapsed = time.perf_counter() - start
                if elapsed >= min_time_s:
                    break
            if threads:
                elapsed = min(elapsed, (time.process_time() - cpu_start) / threads)
            best = max(best, n * 2 * size**3 / elapsed)
    return best


@functools.lru_cache(maxsize=8)
def _cpu_probe(dtype: str, num_threads: int) -> float:
    """Cached CPU matmul probe; the key includes the thread count because the peak scales with it."""
    return measure_matmul_flops("cpu", dtype)


def lookup_device_peak(device: Any = "cpu", dtype: Any = "fp32") -> DevicePeak:
    """Peak FLOP/s of one ``device`` (str or torch.device) computing in ``dtype``.

    CUDA/ROCm devices are looked up by ``torch.cuda.get_device_name`` in :data:`DEVICE_PEAKS`
    (dense datasheet numbers); an unknown GPU, a CPU or any other device is measured with a short
    matmul probe (cached per dtype and thread count for CPUs).
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = datasheet_peak(name, dtype)
        if peak is not None:
            return DevicePeak(name, peak, "datasheet", match_device_name(name) or "")
        return DevicePeak(name, measure_matmul_flops(device, dtype, size=4096), "measured matmul")
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return DevicePeak(
            f"{cpu_name()} ({threads} threads)", _cpu_probe(dtype_key(dtype), threads), "measured matmul"
        )
    return DevicePeak(str(device), measure_matmul_flops(device, dtype), "measured matmul")


def device_peak_flops(device: Any = "cpu", dtype: Any = "fp32") -> float:
    """Peak FLOP/s of one device for ``dtype``; see :func:`lookup_device_peak`."""
    return lookup_device_peak(device, dtype).flops


def default_dollars_per_device_hour(device: Any = "cpu") -> float:
    """$2/GPU-hour for accelerators (DeepSeek's H800 figure); for a CPU, $0.025 per core-hour x threads."""
    import torch

    if torch.device(device).type == "cpu":
        return CPU_DOLLARS_PER_CORE_HOUR * torch.get_num_threads()
    return DEFAULT_GPU_DOLLARS_PER_HOUR


class CostMeter:
    """Counts tokens, FLOPs and wall-clock time of one stage and turns them into cost and MFU.

    Args:
        device: the device one rank trains on ("cpu", "cuda", "cuda:1", torch.device).
        dtype: compute dtype of the matmuls (sets the peak); default fp32 on CPU, bf16 elsewhere.
        world_size: number of devices working together; device-hours = wall-clock x world_size.
        dollars_per_device_hour: price; default from :func:`default_dollars_per_device_hour`.
        peak_flops: peak FLOP/s of one device, to skip the lookup/probe (tests, known hardware).
        device_name: name to report; default from the lookup.
        flops_per_token: used by :meth:`add` when it is called without ``flops``.

    ``start``/``stop`` may be called repeatedly (time accumulates); ``state_dict``/``load_state_dict``
    carry the totals across a checkpoint resume.
    """

    def __init__(
        self,
        device: Any = "cpu",
        dtype: Any = None,
        *,
        world_size: int = 1,
        dollars_per_device_hour: float | None = None,
        peak_flops: float | None = None,
        device_name: str | None = None,
        flops_per_token: float | None = None,
    ) -> None:
        device_type = str(device).split(":")[0]
        self.device = str(device)
        self.dtype = dtype_key(dtype if dtype is not None else ("fp32" if device_type == "cpu" else "bf16"))
        self.world_size = int(world_size)
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if peak_flops is None:
            peak = lookup_device_peak(device, self.dtype)
            self.peak_flops, self.peak_source = peak.flops, peak.source
            self.device_name = device_name or peak.name
        else:
            self.peak_flops, self.peak_source = float(peak_flops), "given"
            self.device_name = device_name or self.device
        if dollars_per_device_hour is None:
            dollars_per_device_hour = default_dollars_per_device_hour(device)
        self.dollars_per_device_hour = float(dollars_per_device_hour)
        self.flops_per_token = flops_per_token
        self.tokens = 0
        self.flops = 0.0
        self.steps = 0
        self._wall_s = 0.0
        self._started_at: float | None = None
        self._last_step_at: float | None = None

    # -- timing ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._started_at is not None

    @property
    def wall_s(self) -> float:
        """Accumulated wall-clock seconds, including the current running segment."""
        now = time.perf_counter()
        return self._wall_s + (now - self._started_at if self._started_at is not None else 0.0)

    def start(self) -> CostMeter:
        """Start (or resume) the clock; a no-op if it is already running. Returns self."""
        if self._started_at is None:
            self._started_at = self._last_step_at = time.perf_counter()
        return self

    def stop(self) -> CostMeter:
        """Stop the clock, adding the running segment to the total. Returns self."""
        if self._started_at is not None:
            self._wall_s += time.perf_counter() - self._started_at
            self._started_at = self._last_step_at = None
        return self

    def __enter__(self) -> CostMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- counting ----------------------------------------------------------------------------
    def add(self, tokens: int, flops: float | None = None) -> dict[str, float]:
        """Record one step: ``tokens`` processed and ``flops`` spent (totals over all devices).

        Starts the clock if needed. Returns the step's own numbers for a progress bar:
        ``step_s`` (since the previous ``add`` or ``start``), ``tokens_per_s``, ``flops_per_s``, ``mfu``.
        """
        if flops is None:
            if self.flops_per_token is None:
                raise ValueError("CostMeter.add needs flops= or a meter built with flops_per_token")
            flops = tokens * self.flops_per_token
        now = time.perf_counter()
        if self._started_at is None:
            self.start()
            step_s = 0.0
        else:
            step_s = now - (self._last_step_at or now)
        self._last_step_at = now
        self.tokens += int(tokens)
        self.flops += float(flops)
        self.steps += 1
        flops_per_s = flops / step_s if step_s > 0 else 0.0
        return {
            "step_s": step_s,
            "tokens_per_s": tokens / step_s if step_s > 0 else 0.0,
            "flops_per_s": flops_per_s,
            "mfu": flops_per_s / (self.peak_flops * self.world_size) if self.peak_flops > 0 else 0.0,
        }

    # -- reporting ---------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Totals so far as a JSON-ready dict.

        Keys: device, device_name, dtype, world_size, peak_flops (per device), peak_source, steps,
        tokens, flops, wall_s, device_hours, dollars_per_device_hour, dollars, tokens_per_s,
        flops_per_s, mfu (a fraction, 0.12 = 12%).
        """
        wall_s = self.wall_s
        device_hours = wall_s / 3600.0 * self.world_size
        flops_per_s = self.flops / wall_s if wall_s > 0 else 0.0
        peak_total = self.peak_flops * self.world_size
        return {
            "device": self.device,
            "device_name": self.device_name,
            "dtype": self.dtype,
            "world_size": self.world_size,
            "peak_flops": self.peak_flops,
            "peak_source": self.peak_source,
            "steps": self.steps,
            "tokens": self.tokens,
            "flops": self.flops,
            "wall_s": wall_s,
            "device_hours": device_hours,
            "dollars_per_device_hour": self.dollars_per_device_hour,
            "dollars": device_hours * self.dollars_per_device_hour,
            "tokens_per_s": self.tokens / wall_s if wall_s > 0 else 0.0,
            "flops_per_s": flops_per_s,
            "mfu": flops_per_s / peak_total if peak_total > 0 else 0.0,
        }

    def format_summary(self) -> str:
        """One-line human summary: "X tokens, Y PFLOPs, Z device-hours, $W, MFU M%" (see :func:`format_cost`)."""
        return format_cost(self.summary())

    def state_dict(self) -> dict[str, Any]:
        """Totals to store in a checkpoint so a resumed run keeps counting from them."""
        return {"tokens": self.tokens, "flops": self.flops, "steps": self.steps, "wall_s": self.wall_s}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore totals saved by :meth:`state_dict` (the clock keeps its running state)."""
        self.tokens = int(state["tokens"])
        self.flops = float(state["flops"])
        self.steps = int(state["steps"])
        self._wall_s = float(state["wall_s"])
        if self._started_at is not None:
            self._started_at = self._last_step_at = time.perf_counter()


# ----------------------------------------------------------------------------------------------
# formatting and totals


def format_count(x: float, digits: int = 3) -> str:
    """A number with an SI suffix: 1234 -> "1.23k", 2.5e9 -> "2.5G", 12 -> "12"."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.{digits}g}{suffix}"
    return f"{x:.{digits}g}"


def format_duration(seconds: float) -> str:
    """Seconds as "42.0 s", "12m05s" or "3h07m"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _fmt_small(x: float) -> str:
    """3 significant digits in fixed notation for the ranges costs live in (0.0042, 1.23, 5,576)."""
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.3g}"
    if abs(x) >= 1e-5:
        decimals = 2 - math.floor(math.log10(abs(x)))
        return f"{x:.{decimals}f}".rstrip("0").rstrip(".")
    return f"{x:.2e}"


def format_cost(summary: Mapping[str, Any]) -> str:
    """Render a cost summary (from :meth:`CostMeter.summary` or :func:`summarize_costs`) as one line.

    Example: "1.23M tokens, 0.0042 PFLOPs, 0.0031 device-hours (2 x NVIDIA H100), $0.0062, MFU 12.3%
    of the bf16 peak (989TFLOP/s), 25.1k tokens/s over 42.0 s".
    """
    world = summary.get("world_size") or 1
    name = summary.get("device_name") or summary.get("device") or "device"
    devices = f"{world} x {name}" if world != 1 else name
    text = (
        f"{format_count(summary.get('tokens', 0))} tokens, {_fmt_small(summary.get('flops', 0.0) / 1e15)} PFLOPs, "
        f"{_fmt_small(summary.get('device_hours', 0.0))} device-hours ({devices}), "
        f"${_fmt_small(summary.get('dollars', 0.0))}, MFU {100 * summary.get('mfu', 0.0):.1f}%"
    )
    peak, dtype = summary.get("peak_flops"), summary.get("dtype")
    if peak and isinstance(dtype, str) and dtype != "mixed":
        # the peak follows the precision that ran (r1kit.precision): bf16 and fp32 peaks differ ~2-15x
        text += f" of the {dtype} peak ({format_count(float(peak))}FLOP/s)"
    if summary.get("wall_s"):
        text += f", {format_count(summary.get('tokens_per_s', 0.0))} tokens/s over {format_duration(summary['wall_s'])}"
    return text


def summarize_costs(
    summaries: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Total several stages' cost summaries (a list, or a dict stage name -> summary).

    Tokens, FLOPs, steps, wall-clock, device-hours and dollars add up; MFU is the FLOP-weighted
    total (all FLOPs / all device-seconds x peak); device/peak fields are kept when every stage
    agrees, else "mixed"/None. ``stages`` counts the inputs.
    """
    items = list(summaries.values()) if isinstance(summaries, Mapping) else list(summaries)
    total: dict[str, Any] = {"stages": len(items)}
    for key in ("steps", "tokens", "flops", "wall_s", "device_hours", "dollars"):
        total[key] = sum(s.get(key, 0) or 0 for s in items)
    capacity = sum(
        (s.get("wall_s", 0.0) or 0.0) * (s.get("world_size", 1) or 1) * (s.get("peak_flops", 0.0) or 0.0)
        for s in items
    )
    for key in ("device", "device_name", "dtype", "world_size", "peak_flops", "peak_source"):
        values = {s.get(key) for s in items}
        if len(values) == 1:
            total[key] = values.pop()
        else:  # stages disagree (or there are none)
            total[key] = "mixed" if values and all(isinstance(v, str) for v in values) else None
    total["tokens_per_s"] = total["tokens"] / total["wall_s"] if total["wall_s"] > 0 else 0.0
    total["flops_per_s"] = total["flops"] / total["wall_s"] if total["wall_s"] > 0 else 0.0
    total["mfu"] = total["flops"] / capacity if capacity > 0 else 0.0
    total["dollars_per_device_hour"] = (
        total["dollars"] / total["device_hours"] if total["device_hours"] > 0 else 0.0
    )
    return total
