"""The comparison: each optimizer's best setting per horizon against the baseline's loss law.

The headline number follows Wen et al. 2025 (arXiv 2509.02046): every optimizer gets one fully
decayed schedule per horizon D and is tuned on its own; AdamW's final losses over >= 3 horizons
are fitted with L(D) = alpha * D^-beta + gamma; an optimizer that ends at loss L_x after D_x has
speedup D_adamw(L_x) / D_x, where D_adamw inverts the fit. A speedup read off the middle of one
schedule ("steps to target") is reported too, but flagged: a schedule that has not decayed yet is
not a finished run, and that reading is what inflated the paper's 2x.

Units: the fit is made in one unit (steps by default) and converted to the others with AdamW's
own mean rate (tokens, FLOPs, seconds per step over its runs). For tokens and FLOPs this is exact
(AdamW's rates are constant); for seconds it uses AdamW's mean throughput instead of fitting the
loss against noisy wall-clock directly. The optimizer's side always uses its own measured
tokens, FLOPs (Hessian estimation included, from the cumulative `flops`) and seconds.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from study.bootstrap import Interval, bootstrap_speedups, resample_baselines
from study.fits import MIN_HORIZONS_FOR_FIT, Baseline, fit_baseline, speedup
from study.runs import UNITS, Run
from study.settings import SettingResult, best_settings, group_settings


@dataclass(frozen=True)
class StepsToTarget:
    """First eval step at which each seed's val loss is <= target (None: never).

    Read off the middle of a schedule whose learning rate has not decayed yet, so it flatters
    whichever optimizer drops faster early; the horizon-sweep speedup is the one to trust.
    """

    target: float
    steps: tuple[int | None, ...]
    max_steps: int

    @property
    def reached(self) -> int:
        return sum(step is not None for step in self.steps)

    @property
    def mean_fraction(self) -> float | None:
        """Mean over the seeds that got there of step / max_steps."""
        reached = [step for step in self.steps if step is not None]
        return float(np.mean(reached)) / self.max_steps if reached else None


def first_step_at_or_below(run: Run, target: float) -> int | None:
    """The first eval step whose val loss is <= target, or None."""
    hits = np.nonzero(run.val_loss.value <= target)[0]
    return int(run.val_loss.steps[hits[0]]) if len(hits) else None


def steps_to_target(result: SettingResult, target: float) -> StepsToTarget:
    """Steps each seed of `result` needs to reach `target` inside its own schedule."""
    steps = tuple(first_step_at_or_below(run, target) for run in result.runs)
    return StepsToTarget(target, steps, result.setting.max_steps)


@dataclass(eq=False)
class Comparison:
    """One optimizer's best setting at one horizon, measured against the baseline."""

    result: SettingResult
    speedups: dict[str, Interval]
    baseline_length: float  # baseline's training length to reach this loss, in the fit unit
    extrapolated: bool  # the baseline's answer lies outside its measured horizons
    baseline_loss: float | None  # baseline's mean final loss at the same horizon
    noise_std: float | None  # baseline's seed std at the same horizon
    steps_to_target: StepsToTarget | None
    hess_flops_share: float
    hess_seconds_share: float
    undefined_resamples: int = 0  # bootstrap draws with no answer (outside interpolation)

    @property
    def loss_gap(self) -> float | None:
        """Mean final loss minus the baseline's at the same horizon (negative: better)."""
        return None if self.baseline_loss is None else self.result.mean_loss - self.baseline_loss

    @property
    def exceeds_noise(self) -> bool | None:
        """Whether |loss_gap| exceeds the baseline's seed std (None when either is unknown)."""
        if self.loss_gap is None or self.noise_std is None:
            return None
        return abs(self.loss_gap) > self.noise_std


@dataclass(eq=False)
class StudyAnalysis:
    """Everything the report and the plots need."""

    baseline_name: str
    unit: str
    settings: list[SettingResult]
    best: dict[tuple[str, str, int], SettingResult]
    baselines: dict[str, Baseline]  # per model
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)


def _share(part: float, total: float) -> float:
    return part / total if total > 0 else math.nan


def _shares(result: SettingResult) -> tuple[float, float]:
    """Mean share of FLOPs and of seconds spent estimating the Hessian."""
    flops = np.mean([_share(run.hess_flops, run.final("flops")) for run in result.runs])
    seconds = np.mean([_share(run.hess_seconds, run.final("seconds")) for run in result.runs])
    return float(flops), float(seconds)


def compare(
    result: SettingResult,
    baseline: Baseline,
    baseline_same_horizon: SettingResult | None,
    resampled: Sequence[Baseline | None] | None,
    rng: np.random.Generator,
) -> Comparison:
    """Speedups (with intervals when `resampled` is given) and the side measures of one row."""
    loss = result.mean_loss
    intervals = {}
    bounds, undefined = bootstrap_speedups(result, resampled, rng) if resampled else ({}, 0)
    for unit in UNITS:
        value = speedup(baseline, loss, float(np.mean(result.finals(unit))), unit)
        interval = bounds.get(unit)
        intervals[unit] = Interval(value, *interval) if interval else Interval(value)
    hess_flops, hess_seconds = _shares(result)
    target = baseline_same_horizon.mean_loss if baseline_same_horizon else None
    return Comparison(
        result=result,
        speedups=intervals,
        baseline_length=baseline.horizon_for_loss(loss),
        extrapolated=baseline.extrapolates(loss),
        baseline_loss=target,
        noise_std=baseline_same_horizon.std_loss if baseline_same_horizon else None,
        steps_to_target=steps_to_target(result, target) if target is not None else None,
        hess_flops_share=hess_flops,
        hess_seconds_share=hess_seconds,
        undefined_resamples=undefined,
    )


def seeded_baseline_points(
    points: list[SettingResult], n_resamples: int
) -> tuple[list[SettingResult], list[SettingResult]]:
    """(points to fit, points left out). The bootstrap resamples every horizon's seeds; one
    single-seed horizon among seeded ones would leave no interval anywhere, so while at least
    MIN_HORIZONS_FOR_FIT horizons have several seeds, the single-seed ones wait for theirs."""
    seeded = [point for point in points if point.n >= 2]
    if n_resamples == 0 or len(seeded) < MIN_HORIZONS_FOR_FIT or len(seeded) == len(points):
        return points, []
    return seeded, [point for point in points if point.n < 2]


def analyze(
    runs: Sequence[Run],
    baseline_name: str = "adamw",
    unit: str = "steps",
    n_resamples: int = 1000,
    seed: int = 0,
) -> StudyAnalysis:
    """Tune each optimizer per (model, horizon), fit the baseline per model, compare every row.

    Intervals need >= 2 seeds in the row and at every baseline horizon; otherwise a row gets a
    point estimate only. The RNG is seeded from `seed` and the row's name, so results repeat.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if not runs:
        raise ValueError("no finished runs to analyze")
    if not any(run.optimizer == baseline_name for run in runs):
        names = sorted({run.optimizer for run in runs})
        raise ValueError(f"no baseline runs: no run has optim.name={baseline_name!r} ({names})")
    settings = group_settings(runs)
    best = best_settings(settings)
    baselines, comparisons, notes = {}, [], []
    for model in sorted({run.model for run in runs}):
        points = [
            r for (m, opt, _), r in sorted(best.items()) if m == model and opt == baseline_name
        ]
        if not points:
            notes.append(f"model {model}: no {baseline_name} runs, left out of the comparison")
            continue
        points, left_out = seeded_baseline_points(points, n_resamples)
        if left_out:
            waiting = ", ".join(f"{point.setting.max_steps:,}" for point in left_out)
            notes.append(
                f"model {model}: {baseline_name} at {waiting} "
                f"steps has a single seed while its other horizons have several: left out of the "
                f"baseline fit until its seeds finish (a single seed would strip every interval)"
            )
        baseline = fit_baseline(points, unit)
        baselines[model] = baseline
        if baseline.note:
            notes.append(f"model {model}: {baseline.note}")
        seeded = n_resamples > 0 and all(point.n >= 2 for point in points)
        rng = np.random.default_rng([seed, zlib.crc32(model.encode())])
        resampled = resample_baselines(points, baseline, n_resamples, rng) if seeded else None
        for (m, optimizer, horizon), result in sorted(best.items()):
            if m != model:
                continue
            row_name = f"{m}/{optimizer}/{horizon}".encode()
            row_rng = np.random.default_rng([seed, zlib.crc32(row_name)])
            comparisons.append(
                compare(
                    result,
                    baseline,
                    best.get((model, baseline_name, horizon)),
                    resampled if result.n >= 2 else None,
                    row_rng,
                )
            )
    return StudyAnalysis(baseline_name, unit, settings, best, baselines, comparisons, notes)
