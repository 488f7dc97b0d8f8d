"""The learning-rate schedule of the Sophia paper and nanoGPT: linear warmup, cosine to min_lr."""

from __future__ import annotations

import math


def warmup_cosine_lr(
    step: int,
    *,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    decay_steps: int,
    from_zero: bool = False,
) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Linear warmup over `warmup_steps`: lr * (step + 1) / warmup_steps, so the first step already
    moves; with `from_zero`, lr * step / warmup_steps as the official Sophia loop and nanoGPT
    (step 0 at lr 0, one step later than ours all through the warmup). Then
    half a cosine from lr down to min_lr, reached at `decay_steps` and held after it. One schedule
    per horizon: set decay_steps to the run's length so every run ends fully decayed.
    """
    if step < warmup_steps:
        return lr * (step + (0 if from_zero else 1)) / warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
