"""The training loop: steps, logs, evaluations and checkpoints until max_steps or a stop signal."""

from __future__ import annotations

import logging
import signal
from dataclasses import asdict

import torch
from omegaconf import OmegaConf

from model.mfu import mfu
from training import console
from training.build import Run
from training.checkpoint import CheckpointWriteError
from training.distributed import Distributed
from training.errors import RunError
from training.evaluate import evaluate
from training.metrics import MetricsLogger
from training.state import TrainState
from training.step import StepClocks, StepResult, diverged_advice, train_step

log = logging.getLogger("train")  # console and the run dir's train.log (training/console.py)


class StopRequest:
    """Turns SIGTERM/SIGUSR1 (Slurm preemption, time limit) into a flag checked between steps."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def agreed(self, world: Distributed) -> bool:
        """True on every rank when any rank was signalled, so all stop at the same step."""
        flag = torch.tensor([1.0 if self.signal_name else 0.0], device=world.device)
        if world.enabled:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def train_loop(run: Run, state: TrainState, logger: MetricsLogger) -> None:
    """Train from `state.step` to max_steps; a stop signal checkpoints and exits cleanly."""
    cfg, world = run.cfg, run.world
    stop, clocks = StopRequest(), StepClocks()
    start_step = state.step
    if state.step == 0:
        evaluate_and_log(run, state, logger)
    while state.step < cfg.max_steps:
        result = train_step(run, state, clocks)
        step = state.step
        if not result.finite and world.is_main:
            log.warning(
                f"step {step}: non-finite loss or gradient, update skipped "
                f"({state.bad_steps_in_a_row} in a row, {state.skipped_steps} in all)"
            )
        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            log_step(run, state, result, logger, clocks, start_step)
        if not result.finite and state.bad_steps_in_a_row >= cfg.max_bad_steps:
            raise RunError(
                f"{state.bad_steps_in_a_row} steps in a row had a non-finite loss or gradient "
                f"(last at step {step}); {diverged_advice(run)}"
            )
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            evaluate_and_log(run, state, logger)
        stopping = stop.agreed(world)
        if step % cfg.ckpt_interval == 0 or step == cfg.max_steps or stopping:
            save_checkpoint(run, state, logger)
        if stopping:
            if world.is_main:
                log.info(
                    f"{stop.signal_name or 'signal'} received: checkpoint at step {step} written,"
                    f" exiting; resume=auto continues"
                )
            logger.close()
            raise SystemExit(0)
    logger.close()


def log_step(
    run: Run,
    state: TrainState,
    result: StepResult,
    logger: MetricsLogger,
    clocks: StepClocks,
    start_step: int,
) -> None:
    """A train line in metrics.jsonl and on the console."""
    cfg, world = run.cfg, run.world
    train_loss = world.all_reduce_mean(result.loss_sum / run.batch.accumulation).item()
    tokens_per_s = run.tokens_per_step / (result.seconds or clocks.step.last_seconds)
    record = {
        **state.contract_fields(),
        "skipped_steps": state.skipped_steps,
        "train/loss": train_loss,
        "lr": result.lr,
        "grad_norm": result.grad_norm,
        "grad_clipped": int(result.clipped),
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(run.flops_per_token, tokens_per_s, world.world_size, run.peak_flops),
        **{f"optim/{k}": v for k, v in run.optimizer.diagnostics().items()},
        **{f"hess/refresh_{k}": v for k, v in result.hess_stats.items()},
    }
    logger.log("train", state.step, record)
    if world.is_main:
        done = state.step - start_step
        eta = (cfg.max_steps - state.step) * state.time_s / done if done > 0 else 0
        log.info(console.train_line(state.step, cfg.max_steps, record, eta))


def evaluate_and_log(run: Run, state: TrainState, logger: MetricsLogger) -> None:
    cfg = run.cfg
    losses = evaluate(
        run.model, run.streams.evaluation, cfg.batch_size, cfg.eval_iters, run.batch.micro,
        run.batch.accumulation, run.world, run.autocast,
    )  # fmt: skip
    logger.log("eval", state.step, {**state.contract_fields(), **losses})
    if run.world.is_main:
        log.info(console.eval_line(state.step, cfg.max_steps, losses))


def save_checkpoint(run: Run, state: TrainState, logger: MetricsLogger) -> None:
    cfg = run.cfg
    meta = {
        "counters": state.state_dict(),
        "model_config": asdict(cfg.model),
        "optimizer": cfg.optim.name,
        "config": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True),
        "wandb_run_id": logger.wandb_run_id or run.wandb_run_id,
    }
    try:
        run.checkpointer.save(state.step, run.raw_model, run.optimizer.state_dict(), meta)
    except CheckpointWriteError as err:  # it says whether an earlier checkpoint is intact
        raise RunError(f"could not write a checkpoint in {run.checkpointer.root}: {err}") from None
