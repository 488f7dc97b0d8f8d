"""The fixed-batch loss estimate train.py logs as `val/loss` and `train/loss`, reusable on its own.

train.py calls `evaluate` at every eval step; scripts/evaluate.py calls the same function on any
model and corpus, so its numbers equal the run's metrics.jsonl at the same weights and settings.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from data.batches import TokenWindows
from training.distributed import Distributed

# The evaluation batches do not depend on the run's seed: every run of a study (any optimizer,
# any seed) is scored on the same sequences, so seed-to-seed spread is training noise only.
EVAL_SEED = 0


def evaluation_windows(
    train_tokens: np.ndarray, val_tokens: np.ndarray, block_size: int
) -> dict[str, TokenWindows]:
    """The fixed windows of each split that `evaluate` reads, the same for every run."""
    # Both splits draw from the `val` stream, so the train estimate never repeats the windows
    # the run trains on at the same step numbers.
    return {
        "val": TokenWindows(val_tokens, block_size, EVAL_SEED, "val"),
        "train": TokenWindows(train_tokens, block_size, EVAL_SEED, "val"),
    }


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    windows: dict[str, TokenWindows],
    batch_size: int,
    eval_iters: int,
    micro: int,
    accum: int,
    world: Distributed,
    autocast: Callable,
    on_micro_batch: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Mean loss over the fixed batches 0..eval_iters-1 of each split (world-size independent).

    `model(x, y)` returns (logits, mean loss); `autocast()` is a context manager;
    `on_micro_batch` is called after every forward (a progress bar's update).
    """
    was_training = model.training
    model.eval()
    result = {}
    for split, source in windows.items():
        total = torch.zeros(1, device=world.device)
        for batch_index in range(eval_iters):
            for micro_step in range(accum):
                x, y = source.micro_batch(
                    batch_index, batch_size, micro, micro_step, world.rank, world.world_size
                )
                with autocast():
                    _, loss = model(x.to(world.device), y.to(world.device))
                total += loss.float()
                if on_micro_batch is not None:
                    on_micro_batch()
        world.all_reduce_mean(total)
        result[f"{split}/loss"] = total.item() / (eval_iters * accum)
    model.train(was_training)
    return result
