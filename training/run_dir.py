"""The run directory: named by the run's identity, written by one process, its record kept.

- Name. By default a run lives in `runs/<optim>_<model>_<data>[_<overrides>]`, a function of
  what defines the run: the same command resumes it (nanoGPT's fixed out_dir), a command that
  changes the run gets another dir (configs/run_name.py). Keys that do not change what is trained
  (IDENTITY_EXEMPT: where and how fast it runs, how often it logs, W&B) stay out of the name.
- One writer. Rank 0 holds an exclusive flock on `<run_dir>/.lock` for the run's life: a second
  train.py into the same dir (a double launch, a Slurm requeue while the old job lives) is
  refused in one line naming the holder. The OS releases the lock when the process dies, so a
  kill -9 never leaves a stale one.
- One dir for all ranks. Each rank's Hydra resolves the dir itself (with `${now:...}` in it,
  ranks that start in different seconds disagree); rank 0's choice is broadcast and used.
- The record. Hydra writes nothing (`hydra.output_subdir: null`): `.hydra/config.yaml` and
  `.hydra/overrides.yaml` are written here, only once the run is accepted (lock taken, resume
  checks passed), so a refused command never touches a run's record. A resumed segment whose
  config differs in a key that may change (RESUMABLE) keeps its config beside the first
  (`.hydra/segments/step_<N>.yaml`); a change to any other key is refused.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from configs.run_name import IDENTITY_EXEMPT, matches
from training.distributed import Distributed
from training.errors import RunError

# Keys a resumed segment may change; max_steps extends (or shortens) a run, with a warning.
RESUMABLE = (*IDENTITY_EXEMPT, "max_steps")
LOCK_NAME = ".lock"


def check_run_dir_argument(args: Sequence[str]) -> None:
    """`hydra.run.dir=` given empty would put the run into the working directory itself."""
    for arg in args:
        key, _, value = arg.partition("=")
        if key != "hydra.run.dir":
            continue
        value = value.strip().strip("'\"")
        if not value:
            raise RunError("hydra.run.dir is empty: give a directory, e.g. hydra.run.dir=runs/x")
        if "${" not in value:
            check_run_dir_path(Path(value))


def check_run_dir_path(path: Path) -> None:
    """Hydra creates the run dir before train.py runs: a path that is a file, or under a
    directory this process cannot write, would end in its traceback."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        if existing == path:
            raise RunError(f"hydra.run.dir={path} is a file, not a directory: choose another path")
        raise RunError(f"hydra.run.dir={path}: {existing} is a file: choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(
            f"hydra.run.dir={path}: {existing} is not writable by this user: fix its "
            f"permissions or choose another hydra.run.dir"
        )


def agree_on_run_dir(run_dir: Path, world: Distributed) -> Path:
    """Rank 0's run dir, on every rank. A rank that resolved another one removes it if it
    left it empty (Hydra creates it before train.py starts)."""
    agreed = Path(world.broadcast_object(str(run_dir)))
    if agreed != run_dir and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
    return agreed


class RunDirLock:
    """An exclusive flock on <run_dir>/.lock, held by rank 0 until the process exits."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._file: TextIO | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")  # noqa: SIM115 (held for the run's life)
        except OSError as err:
            raise RunError(
                f"cannot use the run dir {self.path.parent} ({err.strerror or err}): fix its "
                f"permissions or choose another hydra.run.dir"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunError(
                f"{self.path.parent} is in use by {holder}: wait for it to finish (or stop it), "
                f"or choose another hydra.run.dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock; the file stays, naming the last holder
            self._file = None


def changed_keys(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs."""
    keys = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            keys.extend(changed_keys(a, b, f"{dotted}."))
        elif a != b:
            keys.append(dotted)
    return keys


def check_resume_changes(saved: dict[str, Any], current: dict[str, Any], where: Path) -> list[str]:
    """Refuse a resume that changes what is trained; return the allowed changes made."""
    changes = changed_keys(saved, current)
    refused = [k for k in changes if not matches(k, RESUMABLE)]
    if refused:
        shown = ", ".join(f"{k}={_lookup(saved, k)!r} -> {_lookup(current, k)!r}" for k in refused)
        raise RunError(
            f"{where} holds a run with other settings ({shown}): resume it with its own settings,"
            f" or start a new run in another hydra.run.dir"
        )
    return changes


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def write_record(
    run_dir: Path, config: dict[str, Any], overrides: Sequence[str], resumed_at: int | None
) -> None:
    """The accepted segment's resolved config: `.hydra/config.yaml` and `overrides.yaml` (the
    latest segment's, which study/ reads) and `.hydra/segments/step_<N>.yaml` (every one's)."""
    hydra_dir = run_dir / ".hydra"
    segment = hydra_dir / "segments" / f"step_{resumed_at or 0:08d}.yaml"
    segment.parent.mkdir(parents=True, exist_ok=True)
    record = {"overrides": list(overrides), "config": config}
    for path, content in (
        (segment, yaml.safe_dump(record, sort_keys=False)),
        (hydra_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False)),
        (hydra_dir / "overrides.yaml", yaml.safe_dump(list(overrides))),
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content)
        tmp.replace(path)
