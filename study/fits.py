"""The baseline's final loss as a function of training length: L(D) = alpha * D^-beta + gamma.

Fitted over >= 3 horizons (Wen et al. 2025, arXiv 2509.02046), else interpolated in log D within
the measured points and never extrapolated. `speedup` inverts the curve: how many times longer the
baseline needs to reach a loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from study.runs import UNITS
from study.settings import SettingResult

# A first/second-order fit needs this many distinct AdamW horizons; fewer -> interpolation only.
MIN_HORIZONS_FOR_FIT = 3


class FitError(ValueError):
    """The power law cannot describe the points (the loss does not fall with training length)."""


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


def speedup(baseline: Baseline, loss: float, length: float, unit: str) -> float:
    """D_baseline(loss) / length: how many times longer the baseline needs for the same loss."""
    return baseline.horizon_for_loss(loss, unit) / length if length > 0 else math.nan
