"""The comparison's math: settings, each optimizer's best one, AdamW's loss law, speedups.

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
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from study.runs import UNITS, Run

# A first/second-order fit needs this many distinct AdamW horizons; fewer -> interpolation only.
MIN_HORIZONS_FOR_FIT = 3


class FitError(ValueError):
    """The power law cannot describe the points (the loss does not fall with training length)."""


# ---------------------------------------------------------------------------------------------
# Settings and seeds


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


# ---------------------------------------------------------------------------------------------
# AdamW's loss as a function of training length


@dataclass(frozen=True)
class PowerLaw:
    """L(D) = alpha * D^-beta + gamma (gamma: the loss no amount of training gets below)."""

    alpha: float
    beta: float
    gamma: float

    def loss(self, horizon: np.ndarray | float) -> np.ndarray | float:
        return self.alpha * np.power(horizon, -self.beta) + self.gamma

    def horizon_for_loss(self, loss: float) -> float:
        """D with L(D) = loss; infinity when loss <= gamma (never reached, per the fit)."""
        if loss <= self.gamma:
            return math.inf
        return (self.alpha / (loss - self.gamma)) ** (1.0 / self.beta)


def _profile_power_law(
    d: np.ndarray, losses: np.ndarray, betas: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each beta, the least-squares alpha, gamma (linear in x = d^-beta) and the residual."""
    x = np.power(d[None, :], -betas[:, None])
    x_centered = x - x.mean(axis=1, keepdims=True)
    loss_centered = losses - losses.mean()
    variance = np.sum(x_centered**2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = (x_centered @ loss_centered) / variance
    gamma = losses.mean() - alpha * x.mean(axis=1)
    sse = np.sum((losses[None, :] - alpha[:, None] * x - gamma[:, None]) ** 2, axis=1)
    # alpha must be > 0 (the loss falls with D); a flat x cannot identify alpha at all; and
    # gamma, the loss of infinite training, cannot be negative for a cross-entropy: without that
    # bound three early-training points fit a near-logarithm with a meaningless gamma << 0.
    bad = ~(alpha > 0) | ~(variance > 1e-300) | ~np.isfinite(sse) | ~(gamma >= 0)
    sse[bad] = np.inf
    return sse, alpha, gamma


def fit_power_law(
    horizons: Sequence[float],
    losses: Sequence[float],
    beta_range: tuple[float, float] = (1e-3, 5.0),
) -> PowerLaw:
    """Least-squares fit of L(D) = alpha * D^-beta + gamma to (horizon, loss) points.

    For a fixed beta the model is linear in (alpha, gamma), so beta is searched on a log grid
    (refined three times around the best point, to ~1e-7 relative) with alpha, gamma solved in
    closed form at each. D is divided by its geometric mean first so x = D^-beta stays O(1).
    """
    d = np.asarray(horizons, dtype=float)
    losses_array = np.asarray(losses, dtype=float)
    if len(np.unique(d)) < MIN_HORIZONS_FOR_FIT:
        raise FitError(f"need >= {MIN_HORIZONS_FOR_FIT} distinct horizons, got {sorted(set(d))}")
    if not (np.all(d > 0) and np.all(np.isfinite(losses_array))):
        raise FitError("horizons must be > 0 and losses finite (did a baseline run diverge?)")
    scale = float(np.exp(np.mean(np.log(d))))
    low, high = np.log(beta_range[0]), np.log(beta_range[1])
    for _ in range(4):
        log_betas = np.linspace(low, high, 201)
        sse, alpha, gamma = _profile_power_law(d / scale, losses_array, np.exp(log_betas))
        best = int(np.argmin(sse))
        if not np.isfinite(sse[best]):
            raise FitError("the loss does not fall with training length; no power law fits")
        spacing = log_betas[1] - log_betas[0]
        low, high = log_betas[best] - spacing, log_betas[best] + spacing
    beta = float(np.exp(log_betas[best]))
    return PowerLaw(alpha=float(alpha[best]) * scale**beta, beta=beta, gamma=float(gamma[best]))


@dataclass(frozen=True)
class LogInterpolation:
    """Piecewise-linear loss in log D through the measured points; no value outside them."""

    horizons: tuple[float, ...]
    losses: tuple[float, ...]

    def loss(self, horizon: np.ndarray | float) -> np.ndarray | float:
        """Interpolated loss; NaN outside the measured horizons (never extrapolate)."""
        log_h = np.log(np.asarray(horizon, dtype=float))
        log_points = np.log(self.horizons)
        inside = (log_h >= log_points[0]) & (log_h <= log_points[-1])
        return np.where(inside, np.interp(log_h, log_points, self.losses), np.nan)

    def horizon_for_loss(self, loss: float) -> float:
        """First D whose interpolated loss equals `loss`; NaN if outside the measured losses."""
        points = list(zip(self.horizons, self.losses, strict=True))
        if len(points) == 1:
            return points[0][0] if loss == points[0][1] else math.nan
        for (h0, l0), (h1, l1) in zip(points, points[1:], strict=False):
            if min(l0, l1) <= loss <= max(l0, l1):
                if l0 == l1:
                    return h0
                fraction = (l0 - loss) / (l0 - l1)
                return float(np.exp(np.log(h0) + fraction * (np.log(h1) - np.log(h0))))
        return math.nan


@dataclass(frozen=True)
class Baseline:
    """The baseline's final loss vs training length, and how to turn its length into each unit."""

    unit: str  # the unit the curve was fitted in
    curve: PowerLaw | LogInterpolation
    horizons: tuple[float, ...]  # measured points, in `unit` (mean over seeds)
    losses: tuple[float, ...]  # mean final loss over seeds at each
    rates: dict[str, float]  # each unit per fit unit (AdamW's tokens/step, FLOPs/step, ...)
    note: str = ""

    @property
    def method(self) -> str:
        return "power-law fit" if isinstance(self.curve, PowerLaw) else "interpolation"

    def horizon_for_loss(self, loss: float, unit: str | None = None) -> float:
        """How long the baseline needs to reach `loss`, in `unit` (inf: never; NaN: unknown)."""
        return self.curve.horizon_for_loss(loss) * self.rates[unit or self.unit]

    def extrapolates(self, loss: float, tolerance: float = 0.05) -> bool:
        """True when the answer lies outside the measured baseline horizons by more than
        `tolerance` (relative): the baseline's own end points miss by the fit's residual."""
        horizon = self.curve.horizon_for_loss(loss)
        low, high = min(self.horizons) * (1 - tolerance), max(self.horizons) * (1 + tolerance)
        return not low <= horizon <= high


def baseline_from_points(
    horizons: Sequence[float], losses: Sequence[float], unit: str, rates: dict[str, float]
) -> Baseline:
    """Fit the power law with >= 3 horizons; otherwise interpolate, and say so in `note`."""
    order = np.argsort(horizons)
    h = tuple(float(horizons[i]) for i in order)
    ls = tuple(float(losses[i]) for i in order)
    if len(set(h)) >= MIN_HORIZONS_FOR_FIT:
        try:
            return Baseline(unit, fit_power_law(h, ls), h, ls, rates)
        except FitError as error:
            note = f"power-law fit failed ({error}); interpolating within measured horizons only"
    else:
        note = (
            f"only {len(set(h))} baseline horizon(s) (< {MIN_HORIZONS_FOR_FIT}): interpolating "
            "within the measured horizons only, no extrapolation"
        )
    return Baseline(unit, LogInterpolation(h, ls), h, ls, rates, note)


def fit_baseline(points: Sequence[SettingResult], unit: str = "steps") -> Baseline:
    """The baseline's curve from its best setting at each horizon (means over seeds)."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    runs = [run for point in points for run in point.runs]
    rates = {u: float(np.mean([run.final(u) / run.final(unit) for run in runs])) for u in UNITS}
    horizons = [float(np.mean(point.finals(unit))) for point in points]
    losses = [point.mean_loss for point in points]
    return baseline_from_points(horizons, losses, unit, rates)


# ---------------------------------------------------------------------------------------------
# Speedups


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


def speedup(baseline: Baseline, loss: float, length: float, unit: str) -> float:
    """D_baseline(loss) / length: how many times longer the baseline needs for the same loss."""
    return baseline.horizon_for_loss(loss, unit) / length if length > 0 else math.nan


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
