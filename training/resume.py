"""Where a run starts: a fresh start, or the checkpoint it continues from, checked first.

A checkpoint is resumed only by a run of the same model shape, update rule and settings (keys
that may change on resume: training/run_dir.py RESUMABLE); everything a step depends on comes
back (weights, optimizer state, step and counters, RNG), so the resumed run is the same run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import hydra
import torch

from model.hf import import_hf_weights
from training.build import Run
from training.checkpoint import (
    RESUME_FILES,
    Checkpoint,
    find_checkpoint,
    load_into,
    restore_rng,
)
from training.errors import RunError
from training.run_dir import check_resume_changes
from training.state import TrainState

log = logging.getLogger("train")

SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "vocab_size", "block_size", "bias")


def check_fresh_run_dir(run_dir: Path) -> None:
    """resume=never must not clobber a run that is already there."""
    if (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists():
        raise RunError(
            f"{run_dir} already holds a run and resume=never would overwrite it: "
            f"use resume=auto to continue it or choose another hydra.run.dir"
        )


def check_compatible(meta: dict, run: Run, path: Path) -> None:
    """A checkpoint must come from the same model shape and update rule as this run."""
    cfg = run.cfg
    theirs, ours = meta.get("model_config", {}), asdict(cfg.model)
    diff = [k for k in SHAPE_KEYS if theirs.get(k) != ours[k]]
    if diff:
        raise RunError(
            f"checkpoint {path} has a different model shape "
            f"({', '.join(f'{k}={theirs.get(k)}' for k in diff)}) than this run: "
            f"pick the matching model= or resume=never in a new run dir"
        )
    if meta.get("optimizer") != cfg.optim.name:
        raise RunError(
            f"checkpoint {path} was trained with optim={meta.get('optimizer')}, this run uses "
            f"optim={cfg.optim.name}: resume with the same optimizer or start a new run"
        )


def checkpoint_to_resume(run: Run) -> Checkpoint | None:
    """The checkpoint `resume=` names: auto (the run dir's latest), never (none; the run dir
    must be fresh) or a path."""
    resume = run.cfg.resume
    if resume == "auto":
        return run.checkpointer.latest()
    if resume == "never":
        check_fresh_run_dir(run.run_dir)
        return None
    return find_checkpoint(hydra.utils.to_absolute_path(resume), files=RESUME_FILES)


def resume(run: Run, config: dict) -> tuple[TrainState, Checkpoint | None]:
    """Load the checkpoint to resume from into the run, or prepare a fresh start.

    `config` is the run's resolved config, checked against the one the checkpoint saved."""
    checkpoint = checkpoint_to_resume(run)
    if checkpoint is None:
        if run.cfg.init_from:  # a fresh run only: a resumed one continues from its own weights
            try:
                import_hf_weights(run.raw_model, hydra.utils.to_absolute_path(run.cfg.init_from))
            except ValueError as err:  # model/hf.py says what does not fit
                raise RunError(f"init_from={run.cfg.init_from}: {err}") from None
        torch.manual_seed(run.cfg.seed + run.world.rank)  # dropout masks differ per rank
        return TrainState(), None
    check_compatible(checkpoint.meta, run, checkpoint.path)
    # Within its own run dir a checkpoint continues the same run; resume=<path> seeds a new one.
    if run.cfg.resume == "auto" and "config" in checkpoint.meta:
        changes = check_resume_changes(checkpoint.meta["config"], config, checkpoint.path)
        if "max_steps" in changes and run.cfg.optim.decay_steps is None and run.world.is_main:
            log.warning(
                f"max_steps changed to {run.cfg.max_steps} on resume: the cosine schedule now "
                f"decays to step {run.cfg.max_steps} "
                f"(it was {checkpoint.meta['config']['max_steps']})"
            )
    optimizer_state, rng = load_into(
        checkpoint, run.raw_model, run.world, need_rng=run.cfg.model.dropout > 0
    )
    run.optimizer.load_state_dict(optimizer_state)
    restore_rng(rng, run.world)
    run.wandb_run_id = checkpoint.meta.get("wandb_run_id")
    return TrainState.from_state_dict(checkpoint.meta["counters"]), checkpoint
