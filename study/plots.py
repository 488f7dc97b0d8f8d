"""The study's figures, one per PNG: curves per unit, the LR sweep, Sophia's diagnostics, the fit.

Figures are built with matplotlib's object API on the Agg backend (no pyplot state, no display).
Each optimizer keeps one colour in every figure. A figure that would only repeat another (tokens
when every run has the same tokens per step) or carry nothing (an lr sweep of one lr per
optimizer) is not drawn; the report's tables hold those settings as text.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator  # noqa: E402

from optim.registry import (
    color,  # noqa: E402
    display_name,  # noqa: E402
)
from study.comparison import StudyAnalysis  # noqa: E402
from study.diagnostics import (  # noqa: E402
    HESSIAN_WARMED_KEY,
    WIN_RATE_BAND,
    WIN_RATE_KEYS,
    WIN_RATE_SOURCE,
    LossUnit,
    loss_unit,
)
from study.fits import PowerLaw  # noqa: E402
from study.report import fit_warnings  # noqa: E402
from study.runs import UNITS, Curve  # noqa: E402
from study.settings import SettingResult  # noqa: E402

AXIS_LABELS = {
    "steps": "optimizer steps",
    "tokens": "training tokens",
    "flops": "training FLOPs (Hessian estimation included)",
    "seconds": "training wall-clock (s, eval and compile excluded)",
}
GROUP_STYLES = {"matrices": "--", "embeddings": ":", "vectors": "-."}
# Loss curves show the part of training after this share of the horizon: the first steps fall
# from ~ln(vocab) and would squeeze the final gaps, the part that matters, into a few pixels.
ZOOM_FROM = 0.2


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def _unit(analysis: StudyAnalysis) -> LossUnit:
    return loss_unit({run.tokenizer for result in analysis.settings for run in result.runs})


def seed_band(curves: Sequence[Curve], unit: str) -> tuple[np.ndarray, ...]:
    """x, mean, min, max over seeds at the eval steps every seed logged (x: mean over seeds)."""
    common = curves[0].steps
    for curve in curves[1:]:
        common = np.intersect1d(common, curve.steps)
    xs, ys = [], []
    for curve in curves:
        index = np.searchsorted(curve.steps, common)
        xs.append(curve.at(unit)[index])
        ys.append(curve.value[index])
    ys = np.array(ys)
    return np.mean(xs, axis=0), ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def _best_by_cell(analysis: StudyAnalysis) -> dict[tuple[str, int], list[SettingResult]]:
    cells: dict[tuple[str, int], list[SettingResult]] = defaultdict(list)
    for (model, _, horizon), result in sorted(analysis.best.items()):
        cells[(model, horizon)].append(result)
    return cells


def repeats_steps(results: Sequence[SettingResult], unit: str, tolerance: float = 1e-9) -> bool:
    """True when `unit` is steps times one common factor for every run of the cell: its figure
    would be the steps figure with relabelled ticks (tokens at equal tokens per step)."""
    factors = []
    for result in results:
        for run in result.runs:
            curve = run.val_loss
            moved = curve.steps > 0
            factors += list(curve.at(unit)[moved] / curve.steps[moved])
    return bool(factors) and np.ptp(factors) <= tolerance * max(abs(f) for f in factors)


def zoomed_limits(bands: Sequence[tuple[np.ndarray, ...]], horizon: int) -> tuple[float, float]:
    """y limits from the lowest point of any band to the highest mean after ZOOM_FROM of the
    horizon, with a margin: the late part of every curve is in view, the early drop is cut."""
    late_means, lows = [], []
    for steps, _, mean, low, _ in bands:
        late = steps >= ZOOM_FROM * horizon
        late_means.append(mean[late] if late.any() else mean[-1:])
        lows.append(low)
    top, bottom = float(np.max(np.concatenate(late_means))), float(np.min(np.concatenate(lows)))
    margin = 0.05 * max(top - bottom, 1e-3)
    return bottom - margin, top + margin


def plot_curves(analysis: StudyAnalysis, out_dir: Path) -> list[Path]:
    """Val loss against steps, tokens, FLOPs and seconds; each optimizer's best setting per
    horizon, mean over seeds with a min-max band, a marker at every evaluation. A unit that is
    steps times one factor for every run (tokens, usually) is left out: it repeats steps."""
    unit = _unit(analysis)
    paths = []
    for (model, horizon), results in _best_by_cell(analysis).items():
        for x_unit in UNITS:
            if x_unit != "steps" and repeats_steps(results, x_unit):
                continue
            figure = Figure(figsize=(6, 4))
            ax = figure.subplots()
            bands = []
            for result in results:
                name = result.setting.optimizer
                curves = [run.val_loss for run in result.runs]
                x, mean, low, high = seed_band(curves, x_unit)
                steps = seed_band(curves, "steps")[0]
                mean, low, high = (unit.scale * values for values in (mean, low, high))
                bands.append((steps, x, mean, low, high))
                label = f"{display_name(name)} lr={result.setting.lr:g} (n={result.n})"
                ax.plot(x, mean, color=color(name), marker="o", markersize=3, label=label)
                ax.fill_between(x, low, high, color=color(name), alpha=0.2, linewidth=0)
            ax.set_ylim(*zoomed_limits(bands, horizon))
            ax.set_xlabel(AXIS_LABELS[x_unit])
            ax.set_ylabel(f"validation loss ({unit.name})")
            ax.set_title(
                f"{model}, {horizon}-step schedules\n(band: min-max over seeds; markers: evals;"
                f" y zoomed past {100 * ZOOM_FROM:.0f}% of training)",
                fontsize="medium",
            )
            ax.legend(fontsize="small")
            name = f"val_loss_vs_{x_unit}_{_slug(model)}_{horizon}steps.png"
            paths.append(_save(figure, out_dir / name))
    return paths


def plot_lr_sweep(analysis: StudyAnalysis, out_dir: Path) -> list[Path]:
    """Final val loss against lr (log x) per optimizer and horizon; at each lr the best of the
    other knobs, with the seed std as error bar. Diverged settings are left off; a horizon where
    every optimizer ran one lr is not drawn (the report's lr table lists the settings)."""
    unit = _unit(analysis)
    cells: dict[tuple[str, int], dict[str, dict[float, SettingResult]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for result in analysis.settings:
        s = result.setting
        at_lr = cells[(s.model, s.max_steps)][s.optimizer]
        if s.lr not in at_lr or result.mean_loss < at_lr[s.lr].mean_loss:
            at_lr[s.lr] = result
    paths = []
    for (model, horizon), by_optimizer in sorted(cells.items()):
        if all(len(at_lr) < 2 for at_lr in by_optimizer.values()):
            continue
        figure = Figure(figsize=(6, 4))
        ax = figure.subplots()
        for optimizer, at_lr in sorted(by_optimizer.items()):
            points = [(lr, r) for lr, r in sorted(at_lr.items()) if np.isfinite(r.mean_loss)]
            if not points:
                continue
            lrs = [lr for lr, _ in points]
            losses = [unit.scale * r.mean_loss for _, r in points]
            errors = [unit.scale * (r.std_loss or 0.0) for _, r in points]
            ax.errorbar(
                lrs, losses, yerr=errors, marker="o", capsize=3, color=color(optimizer),
                label=display_name(optimizer),
            )  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel(f"final validation loss ({unit.name})")
        ax.set_title(f"LR sweep: {model}, {horizon} steps (bars: seed std)")
        ax.legend(fontsize="small")
        paths.append(_save(figure, out_dir / f"lr_sweep_{_slug(model)}_{horizon}steps.png"))
    return paths


def _has(result: SettingResult, key: str) -> bool:
    return all(key in run.diagnostics for run in result.runs)


def plot_win_rate(analysis: StudyAnalysis, out_dir: Path) -> list[Path]:
    """Sophia's win rate (share of unclipped coordinates) over training, best settings: overall
    (solid) and per parameter group (dashed) against the authors' band; below it, the warmed
    share of h when logged."""
    paths = []
    for (model, horizon), results in _best_by_cell(analysis).items():
        logged = [r for r in results if _has(r, "optim/win_rate")]
        if not logged:
            continue
        warmed = [r for r in logged if _has(r, HESSIAN_WARMED_KEY)]
        figure = Figure(figsize=(6, 6 if warmed else 4))
        axes = figure.subplots(2, 1, sharex=True, height_ratios=[2, 1]) if warmed else None
        ax = axes[0] if warmed else figure.subplots()
        low, high = WIN_RATE_BAND
        ax.axhspan(low, high, color="0.9", label=f"authors' band {low}-{high} ({WIN_RATE_SOURCE})")
        for result in logged:
            name = result.setting.optimizer
            for key, group in WIN_RATE_KEYS.items():
                if not _has(result, key):
                    continue
                x, mean, band_low, band_high = seed_band(
                    [run.diagnostics[key] for run in result.runs], "steps"
                )
                label = display_name(name) + ("" if group == "all" else f" ({group})")
                style, width = GROUP_STYLES.get(group, "-"), 1.5 if group == "all" else 1.0
                ax.plot(x, mean, color=color(name), ls=style, lw=width, label=label)
                if group == "all":
                    ax.fill_between(x, band_low, band_high, color=color(name), alpha=0.2, lw=0)
        ax.set_ylim(0, 1)
        ax.set_ylabel("win rate (unclipped share)")
        ax.set_title(f"Win rate: {model}, {horizon} steps")
        ax.legend(fontsize="x-small")
        if warmed:
            for result in warmed:
                x, mean, _, _ = seed_band(
                    [run.diagnostics[HESSIAN_WARMED_KEY] for run in result.runs], "steps"
                )
                name = result.setting.optimizer
                axes[1].plot(x, mean, color=color(name), label=display_name(name))
            axes[1].set_ylim(0, 1.05)
            axes[1].set_ylabel("h warmed\n(1 - β2^refreshes)")
            ax = axes[1]
        ax.set_xlabel(AXIS_LABELS["steps"])
        paths.append(_save(figure, out_dir / f"win_rate_{_slug(model)}_{horizon}steps.png"))
    return paths


def plot_baseline_fit(analysis: StudyAnalysis, out_dir: Path) -> list[Path]:
    """The baseline's final loss vs horizon with its curve, and every optimizer's best points;
    ticks at the measured horizons, the asymptote in the legend, a warning when the fit has no
    spare points."""
    unit = _unit(analysis)
    paths = []
    for model, fit in sorted(analysis.baselines.items()):
        figure = Figure(figsize=(6, 4.5))
        ax = figure.subplots()
        horizons = np.array(fit.horizons)
        baseline_color = color(analysis.baseline_name)
        if isinstance(fit.curve, PowerLaw):
            grid = np.geomspace(horizons.min() / 2, horizons.max() * 4, 200)
            law = fit.curve
            label = (
                f"fit: {unit.scale * law.alpha:.3g}·D^-{law.beta:.3g} + "
                f"{unit.scale * law.gamma:.3g}"
            )
            asymptote = f"asymptote {unit.scale * law.gamma:.3g}"
            # Drawn only where it is near the data; far below it would flatten the plot.
            if law.gamma > 0.5 * min(fit.losses):
                ax.axhline(
                    unit.scale * law.gamma, color=baseline_color, ls=":", lw=0.8, label=asymptote
                )
            else:
                ax.plot([], [], ls=":", color=baseline_color, label=asymptote + " (off the plot)")
        else:
            grid = np.geomspace(horizons.min(), horizons.max(), 200)
            label = "interpolation (fewer than 3 horizons)"
        ax.plot(grid, unit.scale * fit.curve.loss(grid), color=baseline_color, label=label)
        for (m, optimizer, _), result in sorted(analysis.best.items()):
            if m != model or not np.isfinite(result.mean_loss):
                continue
            is_baseline = optimizer == analysis.baseline_name
            ax.errorbar(
                np.mean(result.finals(fit.unit)), unit.scale * result.mean_loss,
                yerr=unit.scale * (result.std_loss or 0.0),
                marker="o" if is_baseline else "s", mfc=None if is_baseline else "none",
                capsize=3, color=color(optimizer), label=display_name(optimizer),
                zorder=3 if is_baseline else 2,
            )  # fmt: skip
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))  # one legend entry per optimizer
        ax.legend(unique.values(), unique.keys(), fontsize="small")
        ax.set_xscale("log")
        # Ticks at the measured horizons, in plain numbers: log-axis minor labels overlap.
        ax.xaxis.set_major_locator(FixedLocator(horizons))
        ax.xaxis.set_major_formatter(_plain_number)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(f"training length ({AXIS_LABELS[fit.unit]})")
        ax.set_ylabel(f"final validation loss ({unit.name})")
        title = f"{display_name(analysis.baseline_name)} loss vs horizon: {model}"
        warnings = _fit_warning_titles(fit)
        if warnings:
            title += "\nwarning: " + "; ".join(warnings)
        ax.set_title(title, fontsize="medium", color="darkred" if warnings else "black")
        paths.append(_save(figure, out_dir / f"baseline_fit_{_slug(model)}.png"))
    return paths


def _fit_warning_titles(fit) -> list[str]:
    """Short forms of the report's fit warnings (study.report.fit_warnings), for a title."""
    if not isinstance(fit.curve, PowerLaw):
        return []
    points = len(set(fit.horizons))
    titles = [f"{points} points for a 3-parameter fit"] if points <= 3 else []
    if len(fit_warnings(fit)) > len(titles):
        titles.append("asymptote at its bound 0")
    return titles


def _plain_number(value: float, _position: int) -> str:
    """Tick labels: 60, 1,200, 4.92e+05; no scientific notation below a million."""
    return f"{value:,.0f}" if 1 <= value < 1e6 else f"{value:.3g}"


def write_all_plots(analysis: StudyAnalysis, out_dir: Path) -> list[Path]:
    """Every figure of the study, written under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        *plot_curves(analysis, out_dir),
        *plot_lr_sweep(analysis, out_dir),
        *plot_win_rate(analysis, out_dir),
        *plot_baseline_fit(analysis, out_dir),
    ]
