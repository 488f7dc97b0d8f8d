"""One Hessian estimate: the pass over the estimation batch's micro-batches and ranks.

The estimator (optim/hessian.py) holds the math; this pass owns what spans micro-batches and
ranks. Gauss-Newton-Bartlett squares the gradient of the whole global batch, so its micro-batches
backpropagate into p.grad through the training model (DDP averages across ranks once, on the last
micro-batch, as in the training step); Hutchinson's estimate is linear, so each micro-batch's is
averaged into a flat buffer that is all-reduced once. Either way every rank commits the same
estimate, or skips the same non-finite one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from optim.hessian import draw_generator, optimizer_params
from training.build import Run
from training.distributed import Distributed


@dataclass
class EstimationBatch:
    """This rank's share of one estimation batch, and how to run the model on it."""

    model: nn.Module  # what the loop calls forward on: DDP-wrapped and/or compiled
    raw_model: nn.Module  # the plain module, for double backward (DDP and compile have none)
    micro_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    num_micro_batches: int
    autocast: Callable[[], AbstractContextManager]
    world: Distributed
    seed: int
    step: int  # the optimizer step; with seed, fixes label samples and probes
    tokens: int  # tokens in the global estimation batch


def refresh_hessian(run: Run, step: int) -> dict[str, float]:
    """Estimate on the fresh batch of optimizer step `step` and hand it to the optimizer."""
    world, shape = run.world, run.hess_batch

    def micro_batches():
        for micro_step in range(shape.accumulation):
            x, y = run.streams.hessian.micro_batch(
                step, shape.sequences, shape.micro, micro_step, world.rank, world.world_size
            )
            yield x.to(run.device), y.to(run.device)

    batch = EstimationBatch(
        model=run.model, raw_model=run.raw_model, micro_batches=micro_batches,
        num_micro_batches=shape.accumulation, autocast=run.autocast, world=world,
        seed=run.cfg.seed, step=step, tokens=shape.sequences * run.cfg.block_size,
    )  # fmt: skip
    stats = run_estimate(run.optimizer.estimator, batch, run.optimizer.optimizer)
    run.optimizer.hessian_refreshes += not stats["skipped"]
    return stats


def run_estimate(estimator, batch: EstimationBatch, optimizer: torch.optim.Optimizer) -> dict:
    """Run `estimator` over `batch` into `optimizer`. Returns its statistics plus flops (global,
    all ranks), seconds and loss (the batch's mean loss: on sampled labels for GNB)."""
    start = time.perf_counter()
    if estimator.reduces == "gradients":
        loss_sum, seq_len, stats = _gradient_pass(estimator, optimizer, batch)
    else:
        loss_sum, seq_len, stats = _estimate_pass(estimator, optimizer, batch)
    step_flops = batch.raw_model.flops_per_token(seq_len) * batch.tokens
    return {
        **stats,
        "flops": float(step_flops * estimator.step_equivalents),
        "seconds": time.perf_counter() - start,
        "loss": batch.world.all_reduce_mean(loss_sum).item(),
    }


def _generator(batch: EstimationBatch, micro_step: int, device: torch.device):
    world = batch.world
    return draw_generator(batch.seed, batch.step, micro_step, world.rank, world.world_size, device)


def _gradient_pass(estimator, optimizer, batch: EstimationBatch):
    """GNB: the sampled-label gradient of the global batch into p.grad, then the commit."""
    optimizer.zero_grad(set_to_none=True)  # ĝ must not mix with a training gradient
    loss_sum, seq_len = torch.zeros(1, device=batch.world.device), 0
    can_skip_sync = batch.world.enabled and hasattr(batch.model, "no_sync")
    for micro_step, (x, _) in enumerate(batch.micro_batches()):
        seq_len = x.size(1)
        last = micro_step == batch.num_micro_batches - 1
        with batch.model.no_sync() if can_skip_sync and not last else nullcontext():
            generator = _generator(batch, micro_step, x.device)
            loss = estimator.loss(batch.model, x, generator, batch.autocast)
            loss = loss / batch.num_micro_batches
            loss.backward()
        loss_sum += loss.detach()
    return loss_sum, seq_len, estimator.commit(optimizer)


def _estimate_pass(estimator, optimizer, batch: EstimationBatch):
    """Hutchinson: each micro-batch's estimate averaged into one flat buffer, then over ranks."""
    params = optimizer_params(optimizer)
    flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device)
    views, offset = [], 0
    for p in params:
        views.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    loss_sum, seq_len = torch.zeros(1, device=batch.world.device), 0
    optimizer.zero_grad(set_to_none=True)
    for micro_step, (x, y) in enumerate(batch.micro_batches()):
        seq_len = x.size(1)
        generator = _generator(batch, micro_step, x.device)
        # The plain module: DDP and compiled modules have no double backward.
        loss, estimates = estimator.estimate(
            batch.raw_model, x, y, params, generator, batch.autocast
        )
        for view, micro_estimate in zip(views, estimates, strict=True):
            view.add_(micro_estimate, alpha=1.0 / batch.num_micro_batches)
        loss_sum += loss / batch.num_micro_batches
        del estimates
    batch.world.all_reduce_mean(flat)
    return loss_sum, seq_len, estimator.commit(optimizer, flat, views)
