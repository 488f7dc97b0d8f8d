"""Crash-safe checkpoints: one directory per step, written aside and renamed into place.

    <run_dir>/checkpoints/step_00001000/
        model.safetensors   weights (tied embedding stored once), never pickled
        optimizer.pt        optimizer + Hessian-estimator state, loaded with weights_only=True
        rng_rank<r>.pt      each rank's torch RNG states (dropout), weights_only=True
        meta.json           step, counters, model shape, optimizer name, config, W&B run id

A checkpoint directory exists under its final name only once every file in it is on disk
(write into `.tmp_step_*`, fsync, rename), so a kill at any moment leaves the previous one intact.
Old checkpoints are renamed to `.trash_*` before deletion for the same reason. A state holding NaN
or inf is never saved (NonFiniteCheckpointError): "the last good checkpoint" stays good.

Reading: only directories named `step_<digits>` count; one that lacks a file the reader needs
(RESUME_FILES to resume, WEIGHT_FILES for weights only: sample, evaluate, export) or whose
meta.json is unreadable was cut short outside this writer (a copy, a full disk elsewhere) and is
skipped for the newest complete one, which the reader is told about in one line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from configs.messages import first_line
from training.distributed import Distributed

STEP_DIR_PREFIX = "step_"
STEP_DIR = re.compile(rf"{STEP_DIR_PREFIX}(\d+)")  # step_latest, step_4.bak: not checkpoints
WEIGHT_FILES = ("model.safetensors", "meta.json")
RESUME_FILES = ("model.safetensors", "optimizer.pt", "meta.json")
DROP_OLDER = "delete this checkpoint directory to resume from an older one, or start a new run"

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint cannot be used for this run; the message says why and what to do."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, no permission); nothing partial is left.

    `previous` is the newest complete checkpoint, intact, or None when there is none: only then
    may a message say "the previous checkpoint is intact"."""

    def __init__(self, message: str, *, previous: Path | None) -> None:
        super().__init__(message)
        self.previous = previous


class NonFiniteCheckpointError(ValueError):
    """The model or optimizer state holds NaN or inf: nothing was written. `previous` as above."""

    def __init__(self, message: str, *, previous: Path | None) -> None:
        super().__init__(message)
        self.previous = previous


def previous_wording(previous: Path | None) -> str:
    """The clause an error about a failed save ends with: true whichever case it is."""
    if previous is None:
        return "there is no earlier checkpoint"
    return f"the previous checkpoint is intact ({previous.name})"


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


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Directories named step_<digits> under `ckpt_root`, oldest first (complete or not)."""
    if not ckpt_root.is_dir():
        return []
    dirs = [p for p in ckpt_root.iterdir() if STEP_DIR.fullmatch(p.name) and p.is_dir()]
    return sorted(dirs, key=lambda p: int(p.name[len(STEP_DIR_PREFIX) :]))


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of a checkpoint dir, checked to be an object with an integer step."""
    if not (path / "meta.json").exists():
        raise CheckpointError(f"{path} is not a checkpoint directory (no meta.json)")
    meta, problem = _parse_meta(path / "meta.json")
    if meta is None:
        raise CheckpointError(f"{problem}: {DROP_OLDER}")
    return meta


def _parse_meta(meta_path: Path) -> tuple[dict[str, Any] | None, str]:
    """(meta, "") or (None, what is wrong with the file, naming it)."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except OSError as err:
        return None, f"cannot read {meta_path} ({err.strerror or err})"
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        return None, f"{meta_path} is corrupt ({first_line(err)})"
    if not isinstance(meta, dict):
        return None, f"{meta_path} is not a JSON object"
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return None, f"{meta_path} has no valid step (got {step!r})"
    return meta, ""


def incomplete_reason(path: Path, files: tuple[str, ...] = RESUME_FILES) -> str | None:
    """Why the checkpoint dir `path` cannot serve a reader that needs `files`, or None."""
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        return f"{path.name} lacks {', '.join(missing)}"
    meta, problem = _parse_meta(path / "meta.json")
    return None if meta is not None else f"{path.name}: {problem}"


def latest_complete(
    ckpt_root: Path, files: tuple[str, ...] = RESUME_FILES
) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint under `ckpt_root` that has `files` and a readable meta.json, and
    why each newer one was skipped. CheckpointError when there are step dirs but none complete:
    starting afresh over them would discard the run."""
    skipped: list[str] = []
    candidates = list_checkpoints(ckpt_root)
    for path in reversed(candidates):
        reason = incomplete_reason(path, files)
        if reason is None:
            return Checkpoint(path, read_meta(path)), skipped
        skipped.append(reason)
    if candidates:
        raise CheckpointError(
            f"no complete checkpoint in {ckpt_root} ({'; '.join(skipped)}): restore the missing "
            f"files, or start a new run in another run dir"
        )
    return None, skipped


def fallback_message(checkpoint: Checkpoint, skipped: list[str]) -> str:
    """One line telling a reader that newer, incomplete checkpoints were passed over."""
    return (
        f"skipped {len(skipped)} incomplete checkpoint(s) ({'; '.join(skipped)}): using "
        f"{checkpoint.path.name}, the newest complete one"
    )


def find_checkpoint(path: str | Path, files: tuple[str, ...] = WEIGHT_FILES) -> Checkpoint:
    """A checkpoint from a checkpoint dir, a run dir or a run's checkpoints/ dir (the newest with
    `files`: WEIGHT_FILES for weights only, RESUME_FILES to resume training)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"resume path {path} does not exist: give a run or checkpoint dir")
    if (path / "meta.json").exists():  # a checkpoint dir, named by the user: no fallback
        missing = [name for name in files if not (path / name).is_file()]
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: {DROP_OLDER}")
        return Checkpoint(path, read_meta(path))
    for root in (path / "checkpoints", path):
        checkpoint, skipped = latest_complete(root, files)
        if checkpoint is not None:
            if skipped:
                log.warning(fallback_message(checkpoint, skipped))
            return checkpoint
    raise CheckpointError(f"no checkpoint found in {path}")


class Checkpointer:
    """Writes and prunes checkpoints of one run; all ranks call save(), rank 0 commits."""

    def __init__(self, run_dir: str | Path, keep: int, world: Distributed) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep
        self.world = world
        self.skipped: list[str] = []  # what the last latest() passed over, newest first

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint to resume from (None: there is none). Incomplete newer
        ones are skipped with one warning line (rank 0), their reasons kept in `skipped`."""
        checkpoint, self.skipped = latest_complete(self.root, RESUME_FILES)
        if checkpoint is not None and self.skipped and self.world.is_main:
            log.warning(fallback_message(checkpoint, self.skipped))
        return checkpoint

    def previous(self) -> Path | None:
        """The newest complete checkpoint on disk, or None."""
        try:
            checkpoint, _ = latest_complete(self.root, RESUME_FILES)
        except CheckpointError:
            return None
        return checkpoint.path if checkpoint is not None else None

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer_state: dict[str, Any],
        meta: dict[str, Any],
    ) -> Path:
        # Every rank holds the same weights and optimizer state (DDP), so every rank refuses
        # alike, before the first barrier: none is left waiting for a save that never comes.
        if bad := first_non_finite(model, optimizer_state):
            previous = self.previous()
            raise NonFiniteCheckpointError(
                f"refusing to save the checkpoint of step {step}: {bad} holds NaN or inf, nothing"
                f" was written and {previous_wording(previous)}: lower optim.lr or raise "
                f"optim.warmup_steps, then resume",
                previous=previous,
            )
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
            reason = err.strerror if isinstance(err, OSError) and err.strerror else first_line(err)
            previous = self.previous()
            raise CheckpointWriteError(
                f"{reason} while writing {tmp.name} ({free_mb:,.0f} MiB free); "
                f"{previous_wording(previous)}",
                previous=previous,
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


def first_non_finite(model: torch.nn.Module, optimizer_state: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor of the model or optimizer state holding NaN
    or inf, or None when every one is finite."""
    for name, tensor in model.state_dict().items():
        if not _all_finite(tensor):
            return f"model tensor {name}"
    for name, tensor in _tensors(optimizer_state, "optimizer state"):
        if not _all_finite(tensor):
            return name
    return None


def _tensors(value: Any, name: str):
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{name}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{name}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        yield name, torch.tensor(value)


def _all_finite(tensor: torch.Tensor) -> bool:
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return True  # integer counters, RNG bytes: cannot hold NaN
    return bool(torch.isfinite(tensor).all())


def uses_dropout(model: torch.nn.Module) -> bool:
    """Whether training draws dropout masks: only then does resuming need each rank's RNG."""
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def load_into(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    world: Distributed,
    need_rng: bool | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load weights into `model`; return the optimizer state and this rank's RNG states.

    Nothing here unpickles arbitrary objects: safetensors for weights, weights_only for the rest.
    Every part is checked before it is used, so a checkpoint lacking a piece is one
    CheckpointError, never a KeyError mid-resume. `need_rng` (None: whether `model` uses dropout)
    says this rank's `rng_rank<r>.pt` must be there: without it the dropout masks, and so the
    resumed run, would silently differ. When not needed, a missing file gives None (a world size
    change, 2 ranks -> 1 or 1 -> 2, resumes).
    """
    if need_rng is None:
        need_rng = uses_dropout(model)
    meta_path = checkpoint.path / "meta.json"
    counters = checkpoint.meta.get("counters")
    if not isinstance(counters, dict) or counters.get("step") != checkpoint.step:
        raise CheckpointError(
            f"{meta_path} lacks the run's counters (step {checkpoint.step}): {DROP_OLDER}"
        )
    weights = checkpoint.path / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (OSError, RuntimeError, SafetensorError) as err:  # truncated, corrupt, wrong shape
        raise CheckpointError(
            f"cannot load {weights} ({first_line(err)}): delete this checkpoint directory to "
            f"resume from an older one, or start a new run"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not fit this model "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    optimizer_path = checkpoint.path / "optimizer.pt"
    optimizer_state = _load_tensors(optimizer_path, world.device)
    if not _is_optimizer_state(optimizer_state):
        keys = sorted(optimizer_state) if isinstance(optimizer_state, dict) else "not a dict"
        raise CheckpointError(
            f"{optimizer_path} holds no optimizer state (keys: {keys}): {DROP_OLDER}"
        )
    rng_path = checkpoint.path / f"rng_rank{world.rank}.pt"
    if not rng_path.exists():
        if need_rng:
            writers = len(list(checkpoint.path.glob("rng_rank*.pt")))
            raise CheckpointError(
                f"{rng_path} is missing and the model uses dropout, whose masks this rank's RNG "
                f"draws: the resumed run would differ. Resume on the {writers} rank(s) that wrote "
                f"this checkpoint, or start a new run"
            )
        return optimizer_state, None
    rng = _load_tensors(rng_path, torch.device("cpu"))
    if not isinstance(rng, dict) or not isinstance(rng.get("cpu"), torch.Tensor):
        raise CheckpointError(f"{rng_path} holds no RNG state (no 'cpu' tensor): {DROP_OLDER}")
    return optimizer_state, rng


def _is_optimizer_state(state: Any) -> bool:
    """OptimizerPlan.state_dict(): {"optimizer": a torch optimizer's state_dict,
    or one per half for Muon}; a torch state_dict has "state" and "param_groups"."""
    if not isinstance(state, dict) or not isinstance(state.get("optimizer"), dict):
        return False
    inner = state["optimizer"]

    def is_torch_state(d: Any) -> bool:
        return isinstance(d, dict) and {"state", "param_groups"} <= set(d)

    return is_torch_state(inner) or (bool(inner) and all(map(is_torch_state, inner.values())))


def _load_tensors(path: Path, device: torch.device) -> dict[str, Any]:
    """torch.load with weights_only=True: an unsafe or corrupt pickle is refused, never run."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {DROP_OLDER}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch's explanation spans many lines: keep its first
        raise CheckpointError(
            f"refusing {path}: not a plain tensor checkpoint ({first_line(err)}); delete this "
            f"checkpoint directory to resume from an older one, or start a new run"
        ) from None


def restore_rng(rng: dict[str, Any] | None, world: Distributed) -> None:
    if rng is None:
        return
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"], world.device)
