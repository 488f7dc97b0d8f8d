"""95% bootstrap intervals of speedups: seeds resampled per horizon for the baseline's curve and
per row for the optimizer, so both sides' seed noise is in the interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from study.fits import Baseline, FitError, baseline_from_points, speedup
from study.runs import UNITS
from study.settings import SettingResult


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% bootstrap interval (None when there is no interval)."""

    value: float
    low: float | None = None
    high: float | None = None

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def verdict_vs_one(self) -> str:
        """'faster', 'slower' or 'indistinguishable' (from 1x), or 'no CI'."""
        if not self.has_interval:
            return "no CI"
        if self.low > 1.0:
            return "faster"
        if self.high < 1.0:
            return "slower"
        return "indistinguishable"


def percentile_interval(samples: Sequence[float]) -> tuple[float, float] | None:
    """2.5/97.5 percentiles; infinite samples (never reached) are kept, NaN ones dropped."""
    values = np.asarray(samples, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None
    # a large finite stand-in keeps np.percentile from computing inf - inf between two infinities
    capped = np.where(np.isinf(values), np.sign(values) * 1e300, values)
    low, high = np.percentile(capped, [2.5, 97.5])
    return tuple(math.inf if abs(v) >= 1e299 else float(v) for v in (low, high))


def resample_baselines(
    points: Sequence[SettingResult], baseline: Baseline, n_resamples: int, rng: np.random.Generator
) -> list[Baseline | None]:
    """Baseline curves refitted on seed resamples (per horizon, with replacement)."""
    curves: list[Baseline | None] = []
    losses = [point.losses for point in points]
    lengths = [point.finals(baseline.unit) for point in points]
    for _ in range(n_resamples):
        draws = [rng.integers(0, len(loss), len(loss)) for loss in losses]
        resampled_losses = [float(np.mean(loss[i])) for loss, i in zip(losses, draws, strict=True)]
        horizons = [float(np.mean(length[i])) for length, i in zip(lengths, draws, strict=True)]
        try:
            curves.append(
                baseline_from_points(horizons, resampled_losses, baseline.unit, baseline.rates)
            )
        except FitError:
            curves.append(None)
    return curves


def bootstrap_speedups(
    result: SettingResult, baselines: Sequence[Baseline | None], rng: np.random.Generator
) -> tuple[dict[str, tuple[float, float] | None], int]:
    """95% intervals of the speedup in each unit, and how many resamples had no answer (outside
    an interpolated baseline's range; dropped). The setting's seeds are resampled against each
    resampled baseline curve (one per entry of `baselines`)."""
    losses = result.losses
    lengths = {unit: result.finals(unit) for unit in UNITS}
    samples: dict[str, list[float]] = {unit: [] for unit in UNITS}
    for baseline in baselines:
        draw = rng.integers(0, result.n, result.n)
        loss = float(np.mean(losses[draw]))
        for unit in UNITS:
            length = float(np.mean(lengths[unit][draw]))
            value = math.nan if baseline is None else speedup(baseline, loss, length, unit)
            samples[unit].append(value)
    undefined = int(np.sum(np.isnan(samples["steps"])))
    return {unit: percentile_interval(samples[unit]) for unit in UNITS}, undefined
