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
# The CPU peak's matmul: grown from 128 up to this size while one product takes under
# CPU_PEAK_STEP_S, so it reaches the cores' throughput in float32 (1024: ~13 ms on 2 cores) yet
# stays under a second where bf16 is emulated (~1 GFLOP/s on an AVX2 EPYC: 256, ~35 ms).
CPU_PEAK_MATMUL_SIZE = 1024
CPU_PEAK_STEP_S = 0.02
# (dtype, threads) -> (FLOP/s, matmul size), measured once per process
_measured_cpu_peaks: dict[tuple[torch.dtype, int], tuple[float, int]] = {}


def _time_matmul(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    torch.mm(a, b)
    return time.perf_counter() - start


def measured_cpu_matmul_flops(
    dtype: torch.dtype, max_size: int = CPU_PEAK_MATMUL_SIZE, repeats: int = 5
) -> tuple[float, int]:
    """(FLOP/s, size) of a square CPU matmul in `dtype`: the size grows by doubling up to
    `max_size` while one product takes under CPU_PEAK_STEP_S, then the best of `repeats`."""
    generator = torch.Generator().manual_seed(0)
    size = 128
    while True:
        a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in "ab")
        if size >= max_size or _time_matmul(a, b) > CPU_PEAK_STEP_S:
            break
        size *= 2
    _time_matmul(a, b)  # untimed: caches and thread pools warm
    best = min(_time_matmul(a, b) for _ in range(repeats))
    return 2 * size**3 / best, size


def peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Dense peak FLOP/s of one device: the measured `dtype` matmul on a CPU (once per process
    and thread count), the bf16 datasheet figure on a known GPU, else None."""
    if device.type == "cpu":
        key = (dtype, torch.get_num_threads())
        if key not in _measured_cpu_peaks:
            _measured_cpu_peaks[key] = measured_cpu_matmul_flops(dtype)
        return _measured_cpu_peaks[key][0]
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


def peak_source(device: torch.device, dtype: torch.dtype) -> str:
    """Where `peak_flops(device, dtype)` comes from, for reports."""
    if device.type == "cpu":
        threads = torch.get_num_threads()
        flops_and_size = _measured_cpu_peaks.get((dtype, threads))
        size = flops_and_size[1] if flops_and_size else CPU_PEAK_MATMUL_SIZE
        return f"measured: a {size}x{size} {dtype_name(dtype)} matmul on {threads} threads"
    return "datasheet: dense bf16"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
