"""What a run prints: nanoGPT-style console lines, and the one-time warnings about its config.

train.py logs these lines through `logging`; Hydra's job logging (configs/hydra/job_logging/
run_log.yaml) sends them to the console as they are and to the run dir's train.log with a
timestamp, so the console output of every run is kept beside its metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

# Optimizer diagnostics shown on the train line when the optimizer reports them (metrics keys).
CONSOLE_DIAGNOSTICS = {"optim/win_rate": "win", "optim/hessian_warmed": "h warm"}


def train_line(step: int, max_steps: int, record: Mapping[str, float], eta_s: float) -> str:
    """'step     10/200 | loss 9.1234 | lr 6.00e-05 | grad 1.234 | 5,000 tok/s | ... | eta 1.2 min'
    from a train metrics record; Sophia's win rate and warmed share of h when present."""
    parts = [
        f"step {step:>6}/{max_steps}",
        f"loss {record['train/loss']:.4f}",
        f"lr {record['lr']:.2e}",
        f"grad {record['grad_norm']:.3f}",
        f"{record['tokens_per_s']:,.0f} tok/s",
    ]
    if record.get("mfu") is not None:
        parts.append(f"mfu {100 * record['mfu']:.1f}%")
    for key, label in CONSOLE_DIAGNOSTICS.items():
        if record.get(key) is not None:
            parts.append(f"{label} {record[key]:.2f}")
    parts.append(f"eta {eta_s / 60:.1f} min")
    return " | ".join(parts)


def eval_line(step: int, max_steps: int, losses: Mapping[str, float]) -> str:
    """'step     50/200 | eval: train loss 5.1234, val loss 5.2345' (nanoGPT's eval line)."""
    return (
        f"step {step:>6}/{max_steps} | eval: train loss {losses['train/loss']:.4f}, "
        f"val loss {losses['val/loss']:.4f}"
    )


def warmup_warning(warmup_steps: int, max_steps: int, lr: float) -> str | None:
    """A warning when the linear warmup does not end before the run does, else None.

    With warmup_steps >= max_steps the lr is still climbing at the last step: it never reaches
    optim.lr and never decays, which silently changes what the run's lr means.
    """
    if warmup_steps < max_steps:
        return None
    reached = max_steps / warmup_steps
    suggestion = max(1, max_steps // 10)
    return (
        f"warning: optim.warmup_steps={warmup_steps} >= max_steps={max_steps}: the lr climbs "
        f"to at most {100 * reached:.0f}% of optim.lr={lr:g} and never decays; set "
        f"optim.warmup_steps below max_steps (e.g. optim.warmup_steps={suggestion})"
    )


def write_to_log_files(message: str, level: int = logging.ERROR) -> None:
    """Append `message` to the run's log files (Hydra's train.log) and to nothing else.

    Errors are printed on stderr as one line (the console contract); this keeps them in
    train.log as well, so a run dir tells why the run stopped.
    """
    record = logging.LogRecord("train", level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
