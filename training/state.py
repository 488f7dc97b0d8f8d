"""The training state that is not tensors: where the run is and what it has spent so far.

Saved in every checkpoint's meta.json under "counters" (the key names below are that file's
contract, docs/CONTRACTS.md), restored on resume, and written on every metrics line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# (attribute, key in meta.json and metrics.jsonl)
_SAVED = (
    ("step", "step"),
    ("tokens", "tokens"),
    ("time_s", "time_s"),
    ("flops", "flops"),
    ("hess_time_s", "hess/time_s"),
    ("hess_flops", "hess/flops"),
    ("compile_s", "compile_s"),
    ("skipped_steps", "skipped_steps"),
    ("clipped_steps", "clipped_steps"),
)
# The cumulative fields every metrics line carries (docs/CONTRACTS.md).
_CONTRACT = ("tokens", "time_s", "flops", "hess/time_s", "hess/flops", "compile_s")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens consumed
    time_s: float = 0.0  # training seconds, Hessian refreshes included, compilation excluded
    flops: float = 0.0  # training FLOPs, Hessian estimation and Muon's Newton-Schulz included
    hess_time_s: float = 0.0
    hess_flops: float = 0.0
    compile_s: float = 0.0  # torch.compile's one-time compilation, kept out of time_s
    skipped_steps: int = 0  # steps whose loss or gradient was not finite (nothing was touched)
    clipped_steps: int = 0  # steps whose gradient norm was clipped
    bad_steps_in_a_row: int = 0  # not saved: a resumed run starts with a clean slate

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, attr) for attr, key in _SAVED}

    @classmethod
    def from_state_dict(cls, saved: dict[str, Any]) -> TrainState:
        """A state from a checkpoint's counters; keys a checkpoint predates start at zero."""
        return cls(**{attr: saved[key] for attr, key in _SAVED if key in saved})

    def contract_fields(self) -> dict[str, float]:
        saved = self.state_dict()
        return {key: saved[key] for key in _CONTRACT}

    def charge_refresh(self, seconds: float, compile_s: float, flops: float) -> None:
        """A Hessian refresh: its seconds and FLOPs count as training's too."""
        self.hess_time_s += seconds
        self.time_s += seconds
        self.compile_s += compile_s
        self.hess_flops += flops
        self.flops += flops
