"""Metrics: one JSON object per line in <run_dir>/metrics.jsonl, mirrored to W&B when it starts.

Only rank 0 logs. On resume, lines past the checkpoint's step (written by the interrupted process
after its last checkpoint) are dropped, so the file reads as one uninterrupted run. No torn line
survives: a write that fails part-way (disk full) is cut back to the last whole line before
MetricsWriteError is raised, and a line a kill cut short is dropped on resume; a fresh start
begins an empty file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any


class MetricsWriteError(OSError):
    """metrics.jsonl could not be written (disk full, read-only run dir); one line naming the
    file, the reason and the fix."""


def _write_error(path: Path, err: OSError) -> MetricsWriteError:
    text = str(err).strip()
    reason = err.strerror or (text.splitlines()[0] if text else type(err).__name__)
    return MetricsWriteError(
        f"could not write {path} ({reason}): free disk space or fix permissions, then resume"
    )


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: log them as strings rather than write an unreadable file."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def truncate_after(path: Path, step: int) -> None:
    """Keep only the lines of `path` whose step is <= `step` (atomic rewrite)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a kill mid-write
    tmp = path.with_suffix(".jsonl.tmp")
    try:
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, err) from None


class MetricsLogger:
    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool,
        wandb_settings: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
        resume_step: int | None = None,
        wandb_run_id: str | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb_run = None
        if not enabled:
            return
        try:
            if resume_step is not None:
                truncate_after(self.path, resume_step)
            elif self.path.exists():
                self.path.unlink()  # a fresh start in a checked-empty run dir
            # Unbuffered: each line is one write, so a kill loses at most the line being written.
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (closed in close())
        except MetricsWriteError:
            raise
        except OSError as err:
            raise _write_error(self.path, err) from None
        if wandb_settings and wandb_settings.get("mode") != "disabled":
            self.wandb_run = start_wandb(wandb_settings, run_dir, run_config, wandb_run_id)

    @property
    def wandb_run_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def log(self, event: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"event": event, "step": step, **{k: _clean(v) for k, v in values.items()}}
        line = (json.dumps(record) + "\n").encode()
        end = self._file.seek(0, os.SEEK_END)
        try:
            rest = memoryview(line)
            while rest:  # a short write (the disk filling mid-line) is retried to get its error
                written = self._file.write(rest)
                if not written:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                rest = rest[written:]
        except OSError as err:
            with contextlib.suppress(OSError):
                self._file.truncate(end)  # no torn line is left behind
            raise _write_error(self.path, err) from None
        if self.wandb_run is not None:
            try:
                numeric = {k: v for k, v in values.items() if isinstance(v, (int, float))}
                self.wandb_run.log(numeric, step=step)
            except Exception as err:  # W&B trouble never stops training
                warnings.warn(
                    f"W&B logging failed, continuing with local metrics: {err}", stacklevel=2
                )
                self.wandb_run = None

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.wandb_run is not None:
            try:
                self.wandb_run.finish()
            except Exception as err:
                warnings.warn(f"W&B finish failed: {err}", stacklevel=2)


def start_wandb(
    settings: dict[str, Any],
    run_dir: str | Path,
    run_config: dict[str, Any] | None,
    run_id: str | None,
):
    """Start (or, with run_id, continue) a W&B run; None with one warning if it cannot start."""
    try:
        import wandb

        return wandb.init(
            project=settings.get("project"),
            entity=settings.get("entity"),
            group=settings.get("group"),
            name=settings.get("name"),
            tags=list(settings.get("tags") or []),
            mode=settings.get("mode", "offline"),
            dir=str(run_dir),
            config=run_config,
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(init_timeout=float(settings.get("init_timeout", 60))),
        )
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""  # W&B's run long
        warnings.warn(
            f"W&B could not start ({type(err).__name__}: {reason}); training continues with "
            f"metrics.jsonl only",
            stacklevel=2,
        )
        return None
