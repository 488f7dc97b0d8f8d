"""What the update rules share: hyperparameter checks and the grouping of tensors into lists."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_hyperparameters(lr: float, betas: Sequence[float], weight_decay: float) -> None:
    """torch.optim's checks, in its words: lr >= 0, each beta in [0, 1), weight_decay >= 0."""
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate lr: {lr} (must be >= 0)")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i} (betas[{i}]): {beta}")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay: {weight_decay} (must be >= 0)")


def estimates_by_group(
    param_groups: list[dict], estimates: Sequence[Tensor | None]
) -> list[list[Tensor | None]]:
    """Split a flat list of per-parameter estimates (all groups, in order) into one list per group.

    The estimators produce one tensor per parameter of `[p for g in opt.param_groups for p in
    g["params"]]`; each group is then handled on its own (the official AdaHessian indexed the flat
    list with a per-group index, wrong as soon as there is a second group).
    """
    sizes = [len(group["params"]) for group in param_groups]
    if len(estimates) != sum(sizes):
        raise ValueError(
            f"update_hessian got {len(estimates)} estimates for {sum(sizes)} parameters: pass one "
            "tensor (or None to skip) per parameter of every param group, in group order"
        )
    per_group, start = [], 0
    for group, size in zip(param_groups, sizes, strict=True):
        chunk = list(estimates[start : start + size])
        for p, estimate in zip(group["params"], chunk, strict=True):
            if estimate is not None and estimate.shape != p.shape:
                raise ValueError(
                    f"update_hessian: estimate of shape {tuple(estimate.shape)} for a parameter "
                    f"of shape {tuple(p.shape)}: the estimates are out of parameter order"
                )
        per_group.append(chunk)
        start += size
    return per_group


def group_by_device_and_dtype(tensors: list[Tensor]) -> dict[tuple, list[int]]:
    """Indices of `tensors` grouped by (device, dtype): one foreach kernel launch per group."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def group_by_device(tensors: list[Tensor]) -> dict[torch.device, list[int]]:
    """Indices of `tensors` grouped by device: one compiled graph per device (it mixes dtypes)."""
    groups: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.device, []).append(i)
    return groups
