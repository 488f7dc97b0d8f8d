"""Model FLOPs utilisation: achieved training FLOP/s over the device's dense peak.

On a GPU the peak is the datasheet's bf16 tensor-core figure (nanoGPT's convention, whatever the
autocast dtype). On a CPU no datasheet applies: bf16 is native on some (AVX512-BF16, AMX) and
emulated ~20x slower on others, and the threads vary, so the peak is measured once per process
as a square matmul in the run's dtype on the run's threads.
"""

from __future__ import annotations

import time

import torch

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, in FLOP/s.
# Matched as substrings of torch.cuda.get_device_name(), most specific first.
GPU_BF16_PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("A6000", 155e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("V100", 125e12),  # fp16; V100 has no bf16 units
    ("4090", 165e12),
    ("3090", 71e12),
)
# The CPU peak's matmul: large enough to reach the cores' throughput, small enough to take well
# under a second even where bf16 is emulated.
CPU_PEAK_MATMUL_SIZE = 1024
_measured_cpu_peaks: dict[tuple[torch.dtype, int], float] = {}


def measured_matmul_flops(
    device: torch.device, dtype: torch.dtype, size: int = CPU_PEAK_MATMUL_SIZE, repeats: int = 3
) -> float:
    """FLOP/s of a size x size matmul in `dtype` on `device`: the best of `repeats` timings
    after one untimed call."""
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator, device=device).to(dtype) for _ in "ab")
    best = float("inf")
    for attempt in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if attempt:
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Dense peak FLOP/s of one device: the measured `dtype` matmul on a CPU (once per process
    and thread count), the bf16 datasheet figure on a known GPU, else None."""
    if device.type == "cpu":
        key = (dtype, torch.get_num_threads())
        if key not in _measured_cpu_peaks:
            _measured_cpu_peaks[key] = measured_matmul_flops(device, dtype)
        return _measured_cpu_peaks[key]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_BF16_PEAK_FLOPS:
            if key in name:
                return flops
    return None


def mfu(flops_per_token: float, tokens_per_second: float, n_devices: int, peak: float | None):
    """Share of the peak reached; None when the peak is unknown."""
    if peak is None:
        return None
    return flops_per_token * tokens_per_second / (n_devices * peak)


def peak_source(device: torch.device) -> str:
    """Where `peak_flops(device, ...)` comes from, for reports."""
    if device.type == "cpu":
        size = CPU_PEAK_MATMUL_SIZE
        return f"measured: {size}x{size} matmul on {torch.get_num_threads()} threads"
    return "datasheet: dense bf16"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
