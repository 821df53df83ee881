"""How well a training step uses the machine: FLOPs counted exactly, model-FLOPs utilisation against the
device's stated dense peak, and the share of step time spent in kernels (benchmarks/train.py,
benchmarks/recon_train.py).

MFU = (FLOPs of one step, counted by ``torch.utils.flop_counter.FlopCounterMode`` on the eager model:
matrix products, convolutions, attention; elementwise work is not counted) / step seconds / peak. The
peaks are the vendors' dense (no 2:4 sparsity) tensor-core figures for the step's math dtype; fp32 on
CUDA runs at the TF32 rate when TF32 is allowed (the resident training loop allows it, ``tf32``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

# TFLOP/s, dense. Datasheets: NVIDIA H200 / H100 SXM (same tensor cores), H100 PCIe, A100 (SXM / PCIe),
# L40S. Longest name first, so "H100 PCIe" wins over "H100".
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6},
}


def math_dtype(device: torch.device, bf16: bool) -> str:
    """The dtype whose peak applies: bf16 under autocast, tf32 for fp32 on CUDA with TF32 on, else fp32."""
    if bf16:
        return "bf16"
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "fp32"


def device_peak(device: torch.device, dtype: str) -> float | None:
    """The device's stated dense peak in FLOP/s for ``dtype``, or None (a CPU, an unlisted GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key][dtype] * 1e12
    return None


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything ``fn`` runs (forward and backward), counted per operator."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def kernel_share(fn: Callable[[], object], device: torch.device, steps: int = 3) -> float:
    """Share of the wall time of ``steps`` calls of ``fn`` spent in device kernels (CUDA), or in operators
    (the CPU: the rest is Python and framework overhead between them)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
        wall_us = (time.perf_counter() - t0) * 1e6
    events = prof.key_averages()
    busy = sum(e.self_device_time_total if cuda else e.self_cpu_time_total for e in events)
    return busy / max(wall_us, 1e-9)


def efficiency(
    flops_per_step: int, step_s: float, device: torch.device, dtype: str, peak: float | None = None
) -> dict[str, object]:
    """JSON fields: TFLOP per step, achieved TFLOP/s, the peak used and MFU ("n/a" without a peak)."""
    peak = peak or device_peak(device, dtype)
    achieved = flops_per_step / step_s
    return {"tflop_per_step": round(flops_per_step / 1e12, 4), "achieved_tflops": round(achieved / 1e12, 3),
            "mfu_dtype": dtype, "peak_tflops": round(peak / 1e12, 1) if peak else None,
            "mfu": round(achieved / peak, 4) if peak else "n/a"}  # fmt: skip
