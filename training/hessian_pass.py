"""One Hessian estimate: the pass over the estimation batch's micro-batches and ranks.

The estimator (optim/hessian.py) holds the math; this pass owns what spans micro-batches and
ranks. Gauss-Newton-Bartlett squares the gradient of the whole global batch, so its micro-batches
backpropagate into p.grad through the training model (DDP averages across ranks once, on the last
micro-batch, as in the training step); Hutchinson's estimate is linear, so each micro-batch's is
averaged into a flat buffer that is all-reduced once. Either way every rank commits the same
estimate, or skips the same non-finite one. With optim.hess_source=train, Hutchinson's estimate
comes instead from the training step's own forward/backward (`forward_backward_estimating`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from optim.hessian import draw_generator, hessian_ready_loss, optimizer_params
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
            yield run.micro_batch(run.streams.hessian, shape, step, micro_step)

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


def _flat_buffer(params: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A zeroed float32 buffer holding one entry per parameter entry, and its per-parameter
    views: reduced over ranks in one call."""
    flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device)
    views, offset = [], 0
    for p in params:
        views.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return flat, views


def _estimate_pass(estimator, optimizer, batch: EstimationBatch):
    """Hutchinson: each micro-batch's estimate averaged into one flat buffer, then over ranks."""
    params = optimizer_params(optimizer)
    flat, views = _flat_buffer(params)
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


def forward_backward_estimating(
    run: Run, step: int, hessian_time: Callable[[], AbstractContextManager]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Step `step`'s training gradient into p.grad, as training/step.py's forward_backward leaves
    it, and Hutchinson's estimate from the same gradient's graph on the estimation batch's share
    of the step's micro-batches (optim.hess_source=train), committed before the step.

    The estimating micro-batches run on the plain module, eager, with the math SDPA backend (DDP
    and compiled modules, flash kernels, have no double backward): their gradient keeps its
    graph, the probes differentiate it, and it then joins p.grad, averaged over ranks here as DDP
    would. So a probe costs its Hessian-vector product alone; the gradient is the step's own.
    `hessian_time` times the probes and the commit (the step's clock pauses meanwhile). Returns
    (this rank's sum of micro-batch losses, the estimate's statistics)."""
    world, shape, plan = run.world, run.batch, run.optimizer
    params = optimizer_params(plan.optimizer)
    flat, views = _flat_buffer(params)
    estimating = run.hess_batch.accumulation  # the first micro-batches: whole micro-batches
    loss_sum, estimate_loss = torch.zeros(1, device=run.device), torch.zeros(1, device=run.device)
    seconds, seq_len = 0.0, 0
    for micro_step in range(shape.accumulation):
        x, y = run.micro_batch(run.streams.train, shape, step, micro_step)
        if micro_step >= estimating:
            no_sync = run.model.no_sync() if world.enabled else nullcontext()
            with no_sync, run.autocast():
                _, loss = run.model(x, y)
            run.scaler.scale(loss / shape.accumulation).backward()
        else:
            generator = draw_generator(
                run.cfg.seed, step, micro_step, world.rank, world.world_size, x.device
            )
            loss, spent = _estimating_micro_batch(run, x, y, generator, params, views, hessian_time)
            seconds += spent
            estimate_loss += loss.detach() / estimating
            seq_len = x.size(1)
        loss_sum += loss.detach()
    _average_gradients(params, world)
    with hessian_time():
        start = time.perf_counter()
        world.all_reduce_mean(flat)
        stats = plan.estimator.commit(plan.optimizer, flat, views)
        seconds += time.perf_counter() - start
    plan.hessian_refreshes += not stats["skipped"]
    step_flops = run.raw_model.flops_per_token(seq_len) * run.hess_batch.sequences * seq_len
    return loss_sum, {
        **stats,
        "flops": float(step_flops * plan.estimator.probe_step_equivalents),
        "seconds": seconds,
        "loss": world.all_reduce_mean(estimate_loss).item(),
    }


def _estimating_micro_batch(
    run: Run,
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
    params: list[torch.Tensor],
    views: list[torch.Tensor],
    hessian_time: Callable[[], AbstractContextManager],
) -> tuple[torch.Tensor, float]:
    """One micro-batch's training gradient into p.grad and its estimate, weighted to the
    estimation batch's mean, into `views`. Returns (its loss, seconds on the Hessian's clock)."""
    shape, estimating = run.batch, run.hess_batch.accumulation
    # The gradient is of scale x loss / accumulation, and so is its Hessian (fp16 loss scaling).
    scale = float(run.scaler.get_scale()) if run.scaler.is_enabled() else 1.0
    with sdpa_kernel(SDPBackend.MATH):
        loss = hessian_ready_loss(run.raw_model, x, y, run.autocast)
        scaled = run.scaler.scale(loss / shape.accumulation)
        grads = torch.autograd.grad(scaled, params, create_graph=True)
        with hessian_time():
            start = time.perf_counter()
            estimates = run.optimizer.estimator.estimate_from_gradient(grads, params, generator)
            for view, estimate in zip(views, estimates, strict=True):
                view.add_(estimate, alpha=shape.accumulation / (scale * estimating))
            seconds = time.perf_counter() - start
    for p, grad in zip(params, grads, strict=True):
        p.grad = grad.detach() if p.grad is None else p.grad.add_(grad.detach())
    return loss, seconds


def _average_gradients(params: list[torch.Tensor], world: Distributed) -> None:
    """p.grad averaged over ranks in one all-reduce, for a step whose backward bypassed DDP."""
    if not world.enabled:
        return
    grads = [p.grad for p in params]
    flat, views = _flat_buffer(params)
    torch._foreach_copy_(views, grads)
    world.all_reduce_mean(flat)
    torch._foreach_copy_(grads, views)
