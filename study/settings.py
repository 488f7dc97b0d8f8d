"""Settings (a run without its seed), their seeds' results, and each optimizer's best one."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from study.runs import Run


@dataclass(frozen=True)
class Setting:
    """Everything that defines a run except its seed; the unit that is tuned and compared."""

    model: str
    optimizer: str
    max_steps: int
    lr: float
    knobs: tuple[tuple[str, Any], ...]

    @property
    def rho(self) -> float | None:
        return dict(self.knobs).get("rho")


@dataclass(eq=False)
class SettingResult:
    """The seeds of one setting and their final validation losses."""

    setting: Setting
    runs: list[Run]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def losses(self) -> np.ndarray:
        return np.array([run.final_loss for run in self.runs])

    @property
    def mean_loss(self) -> float:
        return float(np.mean(self.losses))

    @property
    def std_loss(self) -> float | None:
        """Seed-to-seed standard deviation (ddof=1); None with one seed or a diverged seed."""
        losses = self.losses
        if len(losses) < 2 or not np.all(np.isfinite(losses)):
            return None
        return float(np.std(losses, ddof=1))

    def finals(self, unit: str) -> np.ndarray:
        """How long each seed trained, in `unit`."""
        return np.array([run.final(unit) for run in self.runs])


def group_settings(runs: Iterable[Run]) -> list[SettingResult]:
    """Group runs that differ only in their seed; sorted by model, optimizer, horizon, lr."""
    groups: dict[Setting, list[Run]] = defaultdict(list)
    for run in runs:
        setting = Setting(run.model, run.optimizer, run.max_steps, run.lr, run.knobs)
        groups[setting].append(run)
    return [
        SettingResult(setting, sorted(group, key=lambda r: r.seed))
        for setting, group in sorted(groups.items(), key=lambda item: _sort_key(item[0]))
    ]


def _sort_key(setting: Setting) -> tuple:
    # knobs may mix types (None, floats, tuples): compare their text so sorting never fails
    return (setting.model, setting.optimizer, setting.max_steps, setting.lr, repr(setting.knobs))


def best_settings(results: Iterable[SettingResult]) -> dict[tuple[str, str, int], SettingResult]:
    """Each optimizer's best setting per (model, horizon): the lowest mean final val loss among
    the settings run on the most seeds.

    A study that tunes on one seed and then runs the chosen setting on several leaves the other
    candidates with one seed at the tuning horizon; a lucky single seed must not outrank a
    3-seed mean, so only the best-covered settings compete (with a full grid, all of them do).
    """
    results = list(results)
    most_seeds: dict[tuple[str, str, int], int] = defaultdict(int)
    for result in results:
        s = result.setting
        key = (s.model, s.optimizer, s.max_steps)
        most_seeds[key] = max(most_seeds[key], result.n)
    best: dict[tuple[str, str, int], SettingResult] = {}
    for result in results:  # ties keep the first one, i.e. the lowest lr
        s = result.setting
        key = (s.model, s.optimizer, s.max_steps)
        if result.n < most_seeds[key]:
            continue
        if key not in best or result.mean_loss < best[key].mean_loss:
            best[key] = result
    return best
