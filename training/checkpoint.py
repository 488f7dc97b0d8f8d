"""Crash-safe checkpoints: one directory per step, written aside and renamed into place.

    <run_dir>/checkpoints/step_00001000/
        model.safetensors   weights (tied embedding stored once), never pickled
        optimizer.pt        optimizer + Hessian-estimator state, loaded with weights_only=True
        rng_rank<r>.pt      each rank's torch RNG states (dropout), weights_only=True
        meta.json           step, counters, model shape, optimizer name, config, W&B run id

A checkpoint directory exists under its final name only once every file in it is on disk
(write into `.tmp_step_*`, fsync, rename), so a kill at any moment leaves the previous one intact.
Old checkpoints are renamed to `.trash_*` before deletion for the same reason.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from training.distributed import Distributed

STEP_DIR_PREFIX = "step_"


class CheckpointError(ValueError):
    """A checkpoint cannot be used for this run; the message says why and what to do."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, no permission); earlier ones are intact."""


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint directories under `ckpt_root`, oldest first."""
    if not ckpt_root.is_dir():
        return []
    dirs = [p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith(STEP_DIR_PREFIX)]
    return sorted(dirs, key=lambda p: int(p.name[len(STEP_DIR_PREFIX) :]))


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint directory (no meta.json)")
    return json.loads(meta_path.read_text())


def find_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint from a checkpoint dir, a run dir or a run's checkpoints/ dir (latest one)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"resume path {path} does not exist: give a run or checkpoint dir")
    if (path / "meta.json").is_file():
        return Checkpoint(path, read_meta(path))
    for root in (path / "checkpoints", path):
        found = list_checkpoints(root)
        if found:
            return Checkpoint(found[-1], read_meta(found[-1]))
    raise CheckpointError(f"no checkpoint found in {path}")


class Checkpointer:
    """Writes and prunes checkpoints of one run; all ranks call save(), rank 0 commits."""

    def __init__(self, run_dir: str | Path, keep: int, world: Distributed) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep
        self.world = world

    def latest(self) -> Checkpoint | None:
        found = list_checkpoints(self.root)
        return Checkpoint(found[-1], read_meta(found[-1])) if found else None

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer_state: dict[str, Any],
        meta: dict[str, Any],
    ) -> Path:
        final = self.root / f"{STEP_DIR_PREFIX}{step:08d}"
        tmp = self.root / f".tmp_{final.name}"
        if self.world.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left by a run killed while saving
                shutil.rmtree(tmp)
            tmp.mkdir()
        self.world.barrier()
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state(self.world.device)
        rng_path = tmp / f"rng_rank{self.world.rank}.pt"
        self._write(tmp, lambda: torch.save(rng, rng_path))
        _fsync_file(rng_path)
        self.world.barrier()
        if self.world.is_main:

            def write_files() -> None:
                save_model(model, str(tmp / "model.safetensors"))
                torch.save(optimizer_state, tmp / "optimizer.pt")
                (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2))
                for name in ("model.safetensors", "optimizer.pt", "meta.json"):
                    _fsync_file(tmp / name)

            self._write(tmp, write_files)
            _fsync_dir(tmp)
            if final.exists():  # the same step saved twice (e.g. a signal at a ckpt step)
                self._discard(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._prune()
        self.world.barrier()
        return final

    def _write(self, tmp: Path, write) -> None:
        """Run `write`; on failure remove the partial `tmp` and raise one clear error.

        A full disk reaches us as OSError from Python, SafetensorError from safetensors, or a
        RuntimeError ("unexpected pos ...") from torch.save's zip writer: all mean the same here.
        """
        try:
            write()
        except (OSError, RuntimeError, SafetensorError) as err:
            shutil.rmtree(tmp, ignore_errors=True)  # give back the space the partial files took
            free_mb = shutil.disk_usage(self.root).free / 2**20
            reason = err.strerror if isinstance(err, OSError) and err.strerror else _first_line(err)
            raise CheckpointWriteError(
                f"{reason} while writing {tmp.name} ({free_mb:,.0f} MiB free)"
            ) from None

    def _discard(self, path: Path) -> None:
        trash = path.with_name(f".trash_{path.name}")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _prune(self) -> None:
        for old in list_checkpoints(self.root)[: -self.keep]:
            self._discard(old)
        for leftover in self.root.glob(".trash_*"):
            shutil.rmtree(leftover, ignore_errors=True)


def load_into(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    world: Distributed,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load weights into `model`; return the optimizer state and this rank's RNG states.

    Nothing here unpickles arbitrary objects: safetensors for weights, weights_only for the rest.
    """
    weights = checkpoint.path / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (OSError, RuntimeError, SafetensorError) as err:  # truncated, corrupt, wrong shape
        raise CheckpointError(
            f"cannot load {weights} ({_first_line(err)}): delete this checkpoint directory to "
            f"resume from an older one, or start a new run"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not fit this model "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    optimizer_state = _load_tensors(checkpoint.path / "optimizer.pt", world.device)
    rng_path = checkpoint.path / f"rng_rank{world.rank}.pt"
    rng = _load_tensors(rng_path, torch.device("cpu")) if rng_path.exists() else None
    return optimizer_state, rng


def _load_tensors(path: Path, device: torch.device) -> dict[str, Any]:
    """torch.load with weights_only=True: an unsafe or corrupt pickle is refused, never run."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch's explanation spans many lines: keep its first
        raise CheckpointError(
            f"refusing {path}: not a plain tensor checkpoint ({_first_line(err)}); delete this "
            f"checkpoint directory to resume from an older one, or start a new run"
        ) from None


def restore_rng(rng: dict[str, Any] | None, world: Distributed) -> None:
    if rng is None:
        return
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"], world.device)
