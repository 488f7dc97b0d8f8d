"""Checks every config schema shares, called first in each schema's `__post_init__`.

Range checks written as `if x <= 0: raise` let NaN through (every comparison with NaN is false)
and `inf` passes any lower bound; a run with `optim.lr=inf` then trains to all-NaN weights and
exits 0. So every float key is checked for finiteness once, generically, before the range checks.
Finite means finite where the value is used, in float32 tensors (lr, eps, rho): a value beyond
float32's range (`optim.lr=1e39`) is refused too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# numpy's and torch's seeding range: a seed outside it fails late (numpy: "Seed must be between
# 0 and 2**32 - 1"; torch: "Overflow when unpacking long long"), after the run dir is written.
SEED_RANGE = (0, 2**32 - 1)
FLOAT32_MAX = 3.4028234663852886e38


def reject_non_finite(config: Any, prefix: str = "") -> None:
    """Raise ValueError naming the first float field (or float in a list field, such as
    `optim.betas`) of the dataclass `config` that is NaN or infinite; `prefix` is its group."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if _is_float(value):
            if not _finite(value):
                raise ValueError(
                    f"{prefix}{field.name} must be a finite number (|x| <= 3.4e38, float32's "
                    f"range), got {value}"
                )
        elif isinstance(value, (list, tuple)) and any(
            _is_float(item) and not _finite(item) for item in value
        ):
            raise ValueError(f"{prefix}{field.name} must be finite numbers, got {list(value)}")


def check_seed(seed: int) -> None:
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise ValueError(
            f"seed must be in [{low}, 2**32 - 1 = {high}] (numpy's and torch's seeding range), "
            f"got {seed}"
        )


def _finite(value: float) -> bool:
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


def _is_float(value: Any) -> bool:
    # bool is an int, not a float, so flags never reach math.isfinite.
    return isinstance(value, float)
