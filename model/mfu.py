"""Model FLOPs utilisation: achieved training FLOP/s over the device's dense bf16 peak."""

from __future__ import annotations

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
# Measured on this project's 2-core CI machines: a 2048^2 bf16 matmul (docs/results/performance.md).
CPU_BF16_PEAK_FLOPS = 910e9


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of one device, or None when the GPU is not in the table."""
    if device.type == "cpu":
        return CPU_BF16_PEAK_FLOPS
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
