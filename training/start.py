"""What a run writes as it starts: its metrics log, its static facts and its first console line."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from omegaconf import OmegaConf

from training import console
from training.build import Run, native_bfloat16
from training.checkpoint import Checkpoint
from training.metrics import MetricsLogger
from training.state import TrainState

log = logging.getLogger("train")


def run_facts(run: Run) -> dict[str, Any]:
    """run.json: the static facts of the run (docs/CONTRACTS.md)."""
    cfg = run.cfg
    return {
        "params": run.raw_model.num_params(),
        "flops_per_token": run.flops_per_token,
        "tokens_per_step": run.tokens_per_step,
        "world_size": run.world.world_size,
        "micro_batch_size": run.batch.micro,
        "accumulation_steps": run.batch.accumulation,
        "optimizer": cfg.optim.name,
        "seed": cfg.seed,
        "device": str(run.device),
        "dtype": str(run.dtype).removeprefix("torch."),
    }


def open_metrics(
    run: Run, state: TrainState, checkpoint: Checkpoint | None, config: dict[str, Any]
) -> MetricsLogger:
    """metrics.jsonl (cut back to the checkpoint's step on resume) and W&B; run.json beside it."""
    facts = run_facts(run)
    logger = MetricsLogger(
        run.run_dir,
        enabled=run.world.is_main,
        wandb_settings={
            **OmegaConf.to_container(OmegaConf.structured(run.cfg.wandb)),
            "mode": run.cfg.wandb.mode.value,
        },
        # The run's static facts ride along under `run`, where study/runs.py reads them from W&B.
        run_config={**config, "run": facts},
        resume_step=state.step if checkpoint is not None else None,
        wandb_run_id=run.wandb_run_id,
    )
    if run.world.is_main:
        (run.run_dir / "run.json").write_text(json.dumps(facts, indent=2))
    return logger


def start_message(run: Run, state: TrainState, checkpoint: Checkpoint | None) -> None:
    if not run.world.is_main:
        return
    cfg = run.cfg
    where = f"resumed from {checkpoint.path} at step {state.step}" if checkpoint else "fresh start"
    log.info(
        f"{cfg.model.name}: {run.raw_model.num_params() / 1e6:.2f}M params, "
        f"optim={cfg.optim.name}, {run.world.world_size} x {run.device.type}, "
        f"accumulation {run.batch.accumulation}, {where}; run dir {run.run_dir}"
    )
    if warning := console.warmup_warning(cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.lr):
        log.warning(warning)
    if run.dtype == torch.bfloat16 and not native_bfloat16(run.device):
        fallback = "float16" if run.device.type == "cuda" else "float32"
        log.warning(
            f"warning: dtype=bfloat16 on a {run.device.type} without native bfloat16 is emulated "
            f"(on CPU about 20x slower than float32): dtype=auto picks {fallback} here"
        )
