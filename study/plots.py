"""The study's figures, one per PNG: curves per unit, the LR sweep, Sophia's win rate, the fit.

Figures are built with matplotlib's object API on the Agg backend (no pyplot state, no display).
Each optimizer keeps one colour in every figure.
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
from matplotlib.ticker import NullFormatter  # noqa: E402

from study.report import display_name  # noqa: E402
from study.runs import UNITS, Curve  # noqa: E402
from study.speedup import PowerLaw, SettingResult, StudyAnalysis  # noqa: E402

COLORS = {
    "adamw": "tab:blue",
    "lion": "tab:green",
    "sophia": "tab:red",
    "sophiah": "tab:purple",
    "adahessian": "tab:orange",
}
AXIS_LABELS = {
    "steps": "optimizer steps",
    "tokens": "training tokens",
    "flops": "training FLOPs (Hessian estimation included)",
    "seconds": "training wall-clock (s, eval excluded)",
}
# The authors tune rho and lr to keep Sophia's win rate in this band (REFERENCE.md).
WIN_RATE_BAND = (0.1, 0.5)


def color(optimizer: str) -> str:
    return COLORS.get(optimizer, "tab:gray")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


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


def plot_curves(analysis: StudyAnalysis, out_dir: Path) -> list[Path]:
    """Val loss against steps, tokens, FLOPs and seconds; each optimizer's best setting per
    horizon, mean over seeds with a min-max band."""
    paths = []
    for (model, horizon), results in _best_by_cell(analysis).items():
        for unit in UNITS:
            figure = Figure(figsize=(6, 4))
            ax = figure.subplots()
            for result in results:
                name = result.setting.optimizer
                x, mean, low, high = seed_band([run.val_loss for run in result.runs], unit)
                label = f"{display_name(name)} lr={result.setting.lr:g} (n={result.n})"
                ax.plot(x, mean, color=color(name), label=label)
                ax.fill_between(x, low, high, color=color(name), alpha=0.2, linewidth=0)
            ax.set_xlabel(AXIS_LABELS[unit])
            ax.set_ylabel("validation loss")
            ax.set_title(f"{model}, {horizon}-step schedules (band: min-max over seeds)")
            ax.legend(fontsize="small")
            name = f"val_loss_vs_{unit}_{_slug(model)}_{horizon}steps.png"
            paths.append(_save(figure, out_dir / name))
    return paths


def plot_lr_sweep(analysis: StudyAnalysis, out_dir: Path) -> list[Path]:
    """Final val loss against lr (log x) per optimizer and horizon; at each lr the best of the
    other knobs, with the seed std as error bar. Diverged settings are left off."""
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
        figure = Figure(figsize=(6, 4))
        ax = figure.subplots()
        for optimizer, at_lr in sorted(by_optimizer.items()):
            points = [(lr, r) for lr, r in sorted(at_lr.items()) if np.isfinite(r.mean_loss)]
            if not points:
                continue
            lrs = [lr for lr, _ in points]
            losses = [r.mean_loss for _, r in points]
            errors = [r.std_loss or 0.0 for _, r in points]
            ax.errorbar(
                lrs, losses, yerr=errors, marker="o", capsize=3, color=color(optimizer),
                label=display_name(optimizer),
            )  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("final validation loss")
        ax.set_title(f"LR sweep: {model}, {horizon} steps")
        ax.legend(fontsize="small")
        paths.append(_save(figure, out_dir / f"lr_sweep_{_slug(model)}_{horizon}steps.png"))
    return paths


def plot_win_rate(analysis: StudyAnalysis, out_dir: Path) -> list[Path]:
    """Sophia's win rate (share of unclipped coordinates) over training, best settings."""
    paths = []
    for (model, horizon), results in _best_by_cell(analysis).items():
        logged = [r for r in results if all(run.win_rate is not None for run in r.runs)]
        if not logged:
            continue
        figure = Figure(figsize=(6, 4))
        ax = figure.subplots()
        ax.axhspan(*WIN_RATE_BAND, color="0.9", label="target band (authors)")
        for result in logged:
            name = result.setting.optimizer
            x, mean, low, high = seed_band([run.win_rate for run in result.runs], "steps")
            ax.plot(x, mean, color=color(name), label=display_name(name))
            ax.fill_between(x, low, high, color=color(name), alpha=0.2, linewidth=0)
        ax.set_ylim(0, 1)
        ax.set_xlabel(AXIS_LABELS["steps"])
        ax.set_ylabel("win rate (unclipped coordinates)")
        ax.set_title(f"Win rate: {model}, {horizon} steps")
        ax.legend(fontsize="small")
        paths.append(_save(figure, out_dir / f"win_rate_{_slug(model)}_{horizon}steps.png"))
    return paths


def plot_baseline_fit(analysis: StudyAnalysis, out_dir: Path) -> list[Path]:
    """The baseline's final loss vs horizon with its curve, and every optimizer's best points."""
    paths = []
    for model, fit in sorted(analysis.baselines.items()):
        figure = Figure(figsize=(6, 4))
        ax = figure.subplots()
        horizons = np.array(fit.horizons)
        if isinstance(fit.curve, PowerLaw):
            grid = np.geomspace(horizons.min() / 2, horizons.max() * 4, 200)
            label = f"fit: {fit.curve.alpha:.3g}·D^-{fit.curve.beta:.3g} + {fit.curve.gamma:.3g}"
            # The asymptote only where it is near the data; far below it would flatten the plot.
            if fit.curve.gamma > 0.5 * min(fit.losses):
                ax.axhline(fit.curve.gamma, color=color(analysis.baseline_name), ls=":", lw=0.8)
        else:
            grid = np.geomspace(horizons.min(), horizons.max(), 200)
            label = "interpolation (fewer than 3 horizons)"
        ax.plot(grid, fit.curve.loss(grid), color=color(analysis.baseline_name), label=label)
        for (m, optimizer, _), result in sorted(analysis.best.items()):
            if m != model or not np.isfinite(result.mean_loss):
                continue
            is_baseline = optimizer == analysis.baseline_name
            ax.errorbar(
                np.mean(result.finals(fit.unit)), result.mean_loss, yerr=result.std_loss or 0.0,
                marker="o" if is_baseline else "s", mfc=None if is_baseline else "none",
                capsize=3, color=color(optimizer), label=display_name(optimizer),
                zorder=3 if is_baseline else 2,
            )  # fmt: skip
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))  # one legend entry per optimizer
        ax.legend(unique.values(), unique.keys(), fontsize="small")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short ranges
        ax.set_xlabel(f"training length ({AXIS_LABELS[fit.unit]})")
        ax.set_ylabel("final validation loss")
        ax.set_title(f"{display_name(analysis.baseline_name)} loss vs horizon: {model}")
        paths.append(_save(figure, out_dir / f"baseline_fit_{_slug(model)}.png"))
    return paths


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
