"""One optimizer step: forward/backward over the micro-batches, clip, update, Hessian refresh.

A step whose loss or gradient is not finite is skipped (nothing is touched, the step is counted);
a step whose update leaves a parameter non-finite stops the run before anything is saved, so the
last checkpoint stays the last good one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from optim.schedule import warmup_cosine_lr
from training.build import Run
from training.checkpoint import previous_wording
from training.errors import RunError
from training.hessian_pass import forward_backward_estimating, refresh_hessian
from training.state import TrainState
from training.timing import StepClock


@dataclass
class StepClocks:
    """Seconds of the training step and of its Hessian refresh, each without compilation."""

    step: StepClock = field(default_factory=StepClock)
    hessian: StepClock = field(default_factory=StepClock)


@dataclass
class StepResult:
    loss_sum: torch.Tensor  # this rank's sum of micro-batch losses (mean over ranks when logged)
    lr: float
    grad_norm: float  # before clipping
    finite: bool  # the loss and gradient were finite and the update was applied
    clipped: bool
    seconds: float  # charged to this step (0 while a compiling step waits to be settled)
    hess_stats: dict[str, float]


def train_step(run: Run, state: TrainState, clocks: StepClocks) -> StepResult:
    """Take optimizer step `state.step` and advance `state` past it."""
    cfg, plan, step = run.cfg, run.optimizer, state.step
    clocks.step.start()
    lr = warmup_cosine_lr(
        step,
        lr=cfg.optim.lr,
        min_lr=cfg.optim.min_lr,
        warmup_steps=cfg.optim.warmup_steps,
        decay_steps=run.decay_steps,
        from_zero=cfg.optim.warmup_from_zero,
    )
    plan.set_lr(lr)
    hess_stats = {}
    if plan.refreshes_hessian_before(step):  # AdaHessian: from its first step on
        hess_stats = timed_refresh(run, state, step, clocks)

    if plan.estimates_on_training_batch(step):  # optim.hess_source=train
        loss_sum, hess_stats = forward_backward_estimating(
            run, step, lambda: hessian_clock(state, clocks)
        )
        state.charge_refresh(0.0, 0.0, hess_stats["flops"])
    else:
        loss_sum = forward_backward(run, step)
    # Clip, then step unless the loss or gradient is not finite (skip: nothing is touched).
    run.scaler.unscale_(plan.optimizer)
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), max_norm).item()
    finite = math.isfinite(grad_norm) and math.isfinite(loss_sum.item())
    if finite:
        if run.scaler.is_enabled():
            run.scaler.step(plan.optimizer, **plan.step_kwargs)
        else:
            plan.step()
        check_update_finite(run, step)
        state.bad_steps_in_a_row = 0
    else:
        state.skipped_steps += 1
        state.bad_steps_in_a_row += 1
    run.scaler.update()
    plan.zero_grad()
    clipped = cfg.grad_clip > 0 and grad_norm > cfg.grad_clip
    state.clipped_steps += int(clipped)

    if finite and plan.refreshes_hessian(step):
        hess_stats = timed_refresh(run, state, step, clocks)

    seconds, compile_s = clocks.step.stop()
    state.step = step + 1
    state.tokens += run.tokens_per_step
    state.time_s += seconds
    state.compile_s += compile_s
    state.flops = state.flops + run.flops_per_token * run.tokens_per_step + plan.step_flops * finite
    return StepResult(loss_sum, lr, grad_norm, finite, clipped, seconds, hess_stats)


def forward_backward(run: Run, step: int) -> torch.Tensor:
    """The gradient of the global batch in p.grad; DDP syncs on the last micro-batch only."""
    world, shape = run.world, run.batch
    loss_sum = torch.zeros(1, device=run.device)
    for micro_step in range(shape.accumulation):
        x, y = run.micro_batch(run.streams.train, shape, step, micro_step)
        sync = micro_step == shape.accumulation - 1 or not world.enabled
        with nullcontext() if sync else run.model.no_sync(), run.autocast():
            _, loss = run.model(x, y)
        run.scaler.scale(loss / shape.accumulation).backward()
        loss_sum += loss.detach()
    return loss_sum


def check_update_finite(run: Run, step: int) -> None:
    """An update from a finite gradient can still overflow the weights or the optimizer's state
    (optim.lr=1e39, a squared gradient past float32's range): stop before such a state is
    evaluated on or saved. Fused norms, each tensor read once."""
    weights = [p.detach() for p in run.raw_model.parameters()]
    states = run.optimizer.state_tensors()
    norms = torch._foreach_norm(weights) + (torch._foreach_norm(states) if states else [])
    finite = torch.isfinite(torch.stack([norm.float() for norm in norms]))
    if bool(finite.all()):  # the step's one host sync
        return
    what = "parameters" if not bool(finite[: len(weights)].all()) else "the optimizer's state"
    raise RunError(
        f"the update of step {step + 1} made {what} non-finite (from a finite gradient: "
        f"the step size is too large); nothing of it was saved and {diverged_advice(run)}"
    )


def diverged_advice(run: Run) -> str:
    """How a run that diverged goes on: from its last checkpoint if it has one."""
    previous = run.checkpointer.previous()
    again = "resume" if previous else "start again"
    return f"{previous_wording(previous)}: lower optim.lr or raise optim.warmup_steps, then {again}"


def timed_refresh(run: Run, state: TrainState, step: int, clocks: StepClocks) -> dict:
    """A Hessian refresh on its own clock, paused out of the step's, charged to `state`."""
    with hessian_clock(state, clocks):
        stats = refresh_hessian(run, step)
    state.charge_refresh(0.0, 0.0, stats.get("flops", 0.0))
    return stats


@contextmanager
def hessian_clock(state: TrainState, clocks: StepClocks) -> Iterator[None]:
    """Time the block on the Hessian's clock, paused out of the step's, charged to `state`."""
    clocks.step.pause()
    clocks.hessian.start()
    try:
        yield
    finally:
        seconds, compile_s = clocks.hessian.stop()
        clocks.step.resume()
        state.charge_refresh(seconds, compile_s, 0.0)
