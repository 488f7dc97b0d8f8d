"""The schema of a study yaml (configs/study/*.yaml): a typo fails at load with the valid keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError


class StudyConfigError(ValueError):
    """A study yaml that cannot run; the message names the key and the fix."""


@dataclass
class TuneConfig:
    """Where each optimizer's setting is chosen.

    per_horizon: true tunes at every horizon on `seed` (a setting is never reused from a shorter
    horizon: the best lr shrinks as the horizon grows); false tunes once at `horizon`.
    """

    seed: int = 0
    per_horizon: bool = True
    horizon: int | None = None  # with per_horizon: false
    # Grow a grid whose best value sits on its edge by this many steps per side (same ratio).
    max_extensions: int = 2
    # Sophia's rho is chosen among settings whose mean post-warmup win rate lies in this band
    # (the authors' advice); if none does, the best setting is taken and the report flags it.
    win_rate_band: list[float] = field(default_factory=lambda: [0.1, 0.5])


@dataclass
class StudyConfig:
    name: str
    data: str  # the `data=` choice prepared before the runs
    common: list[str] = field(default_factory=list)  # overrides shared by every run
    horizons: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    # Per optimizer: {lr: [...], <override key>: value or [values], horizons: [...] (its own),
    # fixed: ["key=value", ...] (overrides of its every run, left out of run directory names)};
    # yaml order is run order.
    optimizers: dict[str, Any] = field(default_factory=dict)
    tune: TuneConfig | None = None  # None: the whole grid at every horizon and seed
    warmup_fraction: float | None = None  # optim.warmup_steps = round(fraction x horizon)
    min_lr_ratio: float | None = None  # optim.min_lr = ratio x the run's lr (one decay shape)
    order: str = "optimizer"  # optimizer: each optimizer's horizons in turn | horizon
    # "optimizer@horizon" stages to run first, in this order (the rest follow `order`)
    schedule: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.horizons or any(h <= 0 for h in self.horizons):
            raise StudyConfigError(f"horizons must be positive step counts, got {self.horizons}")
        if not self.seeds:
            raise StudyConfigError("seeds must list at least one seed, e.g. seeds: [0, 1, 2]")
        if not self.optimizers:
            raise StudyConfigError("optimizers must name at least one optimizer with an lr grid")
        for name, grid in self.optimizers.items():
            if not isinstance(grid, dict) or not grid.get("lr"):
                raise StudyConfigError(f"optimizers.{name} needs an lr grid, e.g. lr: [1e-3, 3e-3]")
            if any(h <= 0 for h in grid.get("horizons") or []):
                raise StudyConfigError(f"optimizers.{name}.horizons must be positive step counts")
            fixed = grid.get("fixed", [])
            if not isinstance(fixed, list) or not all(
                isinstance(o, str) and "=" in o for o in fixed
            ):
                raise StudyConfigError(
                    f"optimizers.{name}.fixed must list key=value overrides, e.g. "
                    f"[optim.hess_source=fresh], got {fixed!r}"
                )
        for entry in self.schedule:
            name, _, horizon = entry.partition("@")
            own = (self.optimizers.get(name) or {}).get("horizons") or self.horizons
            if name not in self.optimizers or not horizon.isdigit() or int(horizon) not in own:
                raise StudyConfigError(
                    f"schedule entry {entry!r} is not optimizer@horizon of this study "
                    f"(optimizers {', '.join(self.optimizers)}; horizons {self.horizons})"
                )
        if self.warmup_fraction is not None and not 0 <= self.warmup_fraction < 1:
            raise StudyConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.min_lr_ratio is not None and not 0 <= self.min_lr_ratio <= 1:
            raise StudyConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.order not in ("optimizer", "horizon"):
            raise StudyConfigError(f"order must be optimizer or horizon, got {self.order!r}")
        tune = self.tune
        if tune is not None:
            if not tune.per_horizon and tune.horizon not in self.horizons:
                raise StudyConfigError(
                    f"tune.horizon={tune.horizon} is not one of the horizons {self.horizons}"
                )
            low, high = tune.win_rate_band
            if not 0 <= low < high <= 1:
                raise StudyConfigError(
                    f"tune.win_rate_band must be [low, high] within [0, 1], got {[low, high]}"
                )


def load_study_config(path: Path) -> StudyConfig:
    """Read and validate a study yaml."""
    raw = OmegaConf.load(path)
    schema = OmegaConf.structured(StudyConfig)
    try:
        merged = OmegaConf.merge(schema, raw)
        return OmegaConf.to_object(merged)
    except (ConfigKeyError, ValidationError) as err:
        key = getattr(err, "full_key", None) or "?"
        parent = key.rpartition(".")[0]
        node = TuneConfig if parent == "tune" else StudyConfig
        valid = ", ".join(f.name for f in dataclasses.fields(node))
        raise StudyConfigError(
            f"{path}: bad key {key} ({str(err).splitlines()[0]}); valid keys: {valid}"
        ) from None
