"""The study's report: a plain verdict, its caveats and the tables, in markdown.

Two readings of each row must agree before the verdict calls an optimizer faster or slower:
the fit-based speedup (the baseline's curve over horizons, inverted at the optimizer's loss)
and the loss gap to the baseline at the same horizon. When the baseline's own point lies off
its fitted curve, the two can disagree (a speedup above 1 with a higher loss); the verdict then
says so instead of picking the fit's side.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from optim.registry import display_name
from study.bootstrap import Interval
from study.comparison import Comparison, StudyAnalysis
from study.diagnostics import (
    HESSIAN_WARMED_KEY,
    WIN_RATE_BAND,
    WIN_RATE_KEYS,
    WIN_RATE_SOURCE,
    LossUnit,
    diagnostic_summary,
    loss_unit,
    win_rate_flag,
)
from study.fits import PowerLaw
from study.settings import SettingResult

UNIT_WORDS = {"steps": "steps", "tokens": "tokens", "flops": "FLOPs", "seconds": "wall-clock"}
# Knobs shown beside the lr wherever an optimizer has them (others only when the study varies
# them), with the short names the tables use.
SIGNATURE_KNOBS = {"rho": "rho", "hess_interval": "k"}
# AdamW against its own fit in seconds may differ from steps by this much before the report
# calls the seconds unreliable: beyond it, its runs trained at visibly different speeds.
THROUGHPUT_TOLERANCE = 0.15
POWER_LAW_PARAMETERS = 3


def format_speedup(interval: Interval, extrapolated: bool = False) -> str:
    """'1.05x [0.93, 1.18]'; infinity: the baseline never gets there; n/a: outside its range."""
    if math.isnan(interval.value):
        return "n/a"
    text = _times(interval.value)
    if interval.has_interval:
        text += f" [{_times(interval.low, suffix='')}, {_times(interval.high, suffix='')}]"
    return text + (" †" if extrapolated else "")


def _times(value: float, suffix: str = "x") -> str:
    return "∞" if math.isinf(value) else f"{value:.2f}{suffix}"


def format_loss(result: SettingResult, unit: LossUnit | None = None) -> str:
    """'3.412 ± 0.006 (n=3)' (± the seed std); diverged seeds are named instead of averaged."""
    scale = unit.scale if unit else 1.0
    diverged = sum(not math.isfinite(loss) for loss in result.losses)
    if diverged:
        return f"diverged ({diverged}/{result.n} seeds)"
    std = result.std_loss
    spread = f" ± {scale * std:.3f}" if std is not None else ""
    return f"{scale * result.mean_loss:.3f}{spread} (n={result.n})"


def _gap(comparison: Comparison, baseline_name: str, unit: LossUnit) -> str:
    gap = comparison.loss_gap
    is_baseline = comparison.result.setting.optimizer == baseline_name
    if is_baseline or gap is None or not math.isfinite(gap):
        return "–"
    if comparison.noise_std is None:
        return f"{unit.scale * gap:+.3f} (σ n/a)"
    sign = ">" if comparison.exceeds_noise else "≤"
    return f"{unit.scale * gap:+.3f} ({sign} σ {unit.scale * comparison.noise_std:.3f})"


def _steps_to_target(comparison: Comparison, baseline_name: str) -> str:
    target = comparison.steps_to_target
    if target is None or comparison.result.setting.optimizer == baseline_name:
        return "–"
    seeds = f"{target.reached}/{len(target.steps)}"
    if target.mean_fraction is None:
        return f"not reached ({seeds})"
    return f"{100 * target.mean_fraction:.0f}% ({seeds})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _value(value: object) -> str:
    return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _varying_knobs(analysis: StudyAnalysis) -> dict[tuple[str, str], set[str]]:
    """Per (model, optimizer), the knobs whose value differs between its settings; a min_lr that
    is one share of the lr everywhere (a study's min_lr fraction) is the lr's, not a knob."""
    values: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for result in analysis.settings:
        s = result.setting
        for key, value in s.knobs:
            if key == "min_lr" and isinstance(value, (int, float)):
                value = f"share {value / s.lr:.9g}"
            values[(s.model, s.optimizer, key)].add(repr(value))
    varying: dict[tuple[str, str], set[str]] = defaultdict(set)
    for (model, optimizer, key), seen in values.items():
        if len(seen) > 1:
            varying[(model, optimizer)].add(key)
    return varying


def setting_text(result: SettingResult, varying: set[str]) -> str:
    """'lr 0.001, rho 0.2, k 10': the lr, the optimizer's signature knobs and the tuned ones."""
    s = result.setting
    knobs = dict(s.knobs)
    parts = [f"lr {s.lr:g}"]
    for key, short in SIGNATURE_KNOBS.items():
        if knobs.get(key) is not None:
            parts.append(f"{short} {_value(knobs[key])}")
    parts += [f"{k} {_value(v)}" for k, v in s.knobs if k in varying and k not in SIGNATURE_KNOBS]
    return ", ".join(parts)


def _unit(analysis: StudyAnalysis) -> LossUnit:
    return loss_unit({run.tokenizer for result in analysis.settings for run in result.runs})


def _baseline_self(analysis: StudyAnalysis) -> dict[tuple[str, int], Comparison]:
    """The baseline's own row per (model, horizon): the baseline against its own fit."""
    return {
        (c.result.setting.model, c.result.setting.max_steps): c
        for c in analysis.comparisons
        if c.result.setting.optimizer == analysis.baseline_name
    }


def contradicts_loss_gap(comparison: Comparison) -> bool:
    """The speedup in steps points one way and the loss at the same horizon the other: above 1x
    with a higher final loss than the baseline's, below 1x with a lower one, or an interval that
    excludes 1x while the loss is level with the baseline's (within its seed noise)."""
    steps, gap = comparison.speedups["steps"].value, comparison.loss_gap
    if gap is None or not math.isfinite(gap) or not math.isfinite(steps) or gap == 0:
        return False
    decided = comparison.speedups["steps"].verdict_vs_one() in ("faster", "slower")
    level = comparison.exceeds_noise is False
    return (steps > 1 and gap > 0) or (steps < 1 and gap < 0) or (decided and level)


def speedup_table(analysis: StudyAnalysis) -> str:
    """The main table: one row per (model, optimizer, horizon), the optimizer's best setting."""
    unit = _unit(analysis)
    varying = _varying_knobs(analysis)
    baseline = display_name(analysis.baseline_name)
    header = [
        "model",
        "optimizer",
        "horizon (steps)",
        "setting",
        f"final val loss ({unit.name})",
        f"Δ vs {baseline}",
        "speedup in steps",
        "in FLOPs",
        "in seconds",
    ]
    rows = []
    for c in analysis.comparisons:
        s = c.result.setting
        mark = " ‡" if contradicts_loss_gap(c) and s.optimizer != analysis.baseline_name else ""
        rows.append(
            [
                s.model,
                display_name(s.optimizer),
                str(s.max_steps),
                setting_text(c.result, varying[(s.model, s.optimizer)]),
                format_loss(c.result, unit),
                _gap(c, analysis.baseline_name, unit),
                format_speedup(c.speedups["steps"], c.extrapolated) + mark,
                format_speedup(c.speedups["flops"], c.extrapolated),
                format_speedup(c.speedups["seconds"], c.extrapolated),
            ]
        )
    return _table(header, rows)


def _compile_text(result: SettingResult) -> str:
    seconds = [run.compile_seconds for run in result.runs if run.compile_seconds is not None]
    return f"{np.mean(seconds):.0f} s" if seconds else "–"


def side_table(analysis: StudyAnalysis) -> str:
    """The other measures of each row: tokens, steps to target, Hessian and compile cost."""
    header = [
        "model",
        "optimizer",
        "horizon (steps)",
        "speedup in tokens",
        "steps to target*",
        "Hessian share of FLOPs",
        "Hessian share of time",
        "compile time (apart)",
    ]
    rows = []
    for c in analysis.comparisons:
        s = c.result.setting
        rows.append(
            [
                s.model,
                display_name(s.optimizer),
                str(s.max_steps),
                format_speedup(c.speedups["tokens"], c.extrapolated),
                _steps_to_target(c, analysis.baseline_name),
                f"{100 * c.hess_flops_share:.1f}%",
                f"{100 * c.hess_seconds_share:.1f}%",
                _compile_text(c.result),
            ]
        )
    return _table(header, rows)


def diagnostics_table(analysis: StudyAnalysis) -> str | None:
    """Win rate (overall and per parameter group) and warmed share of h of the best settings
    that logged them; None when no optimizer did."""
    rows = []
    for (model, optimizer, horizon), result in sorted(analysis.best.items()):
        overall = diagnostic_summary(result, "optim/win_rate")
        if overall is None:
            continue
        groups = [diagnostic_summary(result, key) for key in list(WIN_RATE_KEYS)[1:]]
        warmed = diagnostic_summary(result, HESSIAN_WARMED_KEY, at_end=True)
        flag = win_rate_flag(overall)
        rows.append(
            [
                model,
                display_name(optimizer),
                str(horizon),
                f"{overall:.2f}",
                *("–" if g is None else f"{g:.2f}" for g in groups),
                "–" if warmed is None else f"{warmed:.2f}",
                f"**{flag} the band**" if flag else "inside",
            ]
        )
    if not rows:
        return None
    header = ["model", "optimizer", "horizon (steps)", "win rate", "matrices", "embeddings"]
    header += ["vectors", "h warmed (end)", f"vs {WIN_RATE_BAND[0]}-{WIN_RATE_BAND[1]}"]
    return _table(header, rows)


def lr_sweep_table(analysis: StudyAnalysis) -> str:
    """Every setting's final loss, the chosen one marked, so the tuning can be checked."""
    unit = _unit(analysis)
    varying = _varying_knobs(analysis)
    best_ids = {id(result) for result in analysis.best.values()}
    rows = []
    for result in analysis.settings:
        s = result.setting
        knobs = ", ".join(
            f"{k}={_value(v)}" for k, v in s.knobs if k in varying[(s.model, s.optimizer)]
        )
        rows.append(
            [
                s.model,
                str(s.max_steps),
                display_name(s.optimizer),
                f"{s.lr:g}",
                knobs or "–",
                format_loss(result, unit),
                "best" if id(result) in best_ids else "",
            ]
        )
    header = ["model", "horizon (steps)", "optimizer", "lr", "other knobs (varied)"]
    header += [f"final val loss ({unit.name})", "chosen"]
    return _table(header, rows)


def _steps_clause(comparison: Comparison, baseline: str) -> str:
    steps = comparison.speedups["steps"]
    verdict = {
        "faster": f"faster than {baseline} (the interval excludes 1x)",
        "slower": f"slower than {baseline} (the interval excludes 1x)",
        "indistinguishable": "not distinguishable from 1x",
        "no CI": "a single seed, so no confidence interval: indicative, not a finding",
    }[steps.verdict_vs_one()]
    return f"{format_speedup(steps)} in steps: {verdict}"


def _contradiction_clause(
    comparison: Comparison, baseline: str, own: Comparison | None, unit: LossUnit
) -> str:
    gap = comparison.loss_gap
    where = "above" if gap > 0 else "below"
    noise = ""
    if comparison.noise_std is not None:
        relation = "beyond" if comparison.exceeds_noise else "within"
        noise = (
            f", {relation} {baseline}'s seed noise (std {unit.scale * comparison.noise_std:.3f})"
        )
    text = (
        f"{format_speedup(comparison.speedups['steps'])} in steps by the fit, yet its final loss "
        f"is {unit.scale * abs(gap):.3f} {where} {baseline}'s at the same horizon{noise}: the two "
        "readings disagree, so it is neither faster nor slower here"
    )
    if own is not None and math.isfinite(own.speedups["steps"].value):
        self_speedup = own.speedups["steps"].value
        side = "below" if self_speedup > 1 else "above"
        text += (
            f" ({baseline}'s own point lies {side} its fitted curve: {baseline} against its own "
            f"fit is {self_speedup:.2f}x there)"
        )
    return text


def _win_rate_sentence(comparison: Comparison) -> str:
    result = comparison.result
    win_rate = diagnostic_summary(result, "optim/win_rate")
    if win_rate is None:
        return ""
    flag = win_rate_flag(win_rate)
    low, high = WIN_RATE_BAND
    if flag is None:
        return (
            f" Its win rate ({win_rate:.2f}, mean over the second half of training) is inside "
            f"the authors' {low}-{high} band."
        )
    remedy = (
        "nearly every coordinate is clipped, so it acts as sign momentum (Lion-like); a larger "
        "rho would clip less"
        if flag == "below"
        else "few coordinates are clipped, so it acts as an unclipped diagonal-Newton step; a "
        "smaller rho would clip more"
    )
    return (
        f" Its win rate ({win_rate:.2f}, share of unclipped coordinates over the second half of "
        f"training) is {flag} the {low}-{high} band the authors tune rho for ({WIN_RATE_SOURCE}): "
        f"{remedy}."
    )


def _sentence(
    comparison: Comparison, baseline: str, unit_word: str, own: Comparison | None, unit: LossUnit
) -> str:
    s = comparison.result.setting
    steps = comparison.speedups["steps"]
    name = display_name(s.optimizer)
    where = f"At this scale ({s.model}, {s.max_steps} steps)"
    if math.isnan(steps.value):
        return (
            f"{where}, {name}'s final loss lies outside {baseline}'s measured range, so no "
            "speedup can be read without extrapolating."
        )
    if math.isinf(steps.value):
        return (
            f"{where}, {name} ends below the asymptote of {baseline}'s fitted curve: per the "
            f"fit {baseline} never reaches that loss, an unbounded speedup that rests entirely "
            "on the extrapolated asymptote."
        )
    contradicted = contradicts_loss_gap(comparison)
    if contradicted:
        clause = _contradiction_clause(comparison, baseline, own, unit)
    else:
        clause = _steps_clause(comparison, baseline)
    text = f"{where}, {name}'s speedup over {baseline} is {clause}"
    if comparison.hess_flops_share > 0:
        text += "; counting its Hessian estimates it is "
    else:
        text += "; it is "
    text += (
        f"{format_speedup(comparison.speedups['flops'])} in FLOPs and "
        f"{format_speedup(comparison.speedups['seconds'])} in wall-clock"
        + (", read off the same fit." if contradicted else ".")
    )
    if comparison.extrapolated:
        text += f" ({baseline}'s curve is extrapolated beyond its measured {unit_word} here.)"
    gap = comparison.loss_gap
    if not contradicted and gap is not None and math.isfinite(gap) and comparison.noise_std:
        relation = "beyond" if comparison.exceeds_noise else "within"
        text += (
            f" Its final loss differs from {baseline}'s at the same horizon by "
            f"{unit.scale * gap:+.3f}, {relation} {baseline}'s seed noise "
            f"(std {unit.scale * comparison.noise_std:.3f})."
        )
    return text + _win_rate_sentence(comparison)


def verdict(analysis: StudyAnalysis) -> str:
    """One plain paragraph: each optimizer at its longest horizon, per model."""
    baseline = display_name(analysis.baseline_name)
    unit = _unit(analysis)
    own = _baseline_self(analysis)
    longest: dict[tuple[str, str], Comparison] = {}
    for c in analysis.comparisons:
        s = c.result.setting
        if s.optimizer == analysis.baseline_name:
            continue
        key = (s.model, s.optimizer)
        if key not in longest or s.max_steps > longest[key].result.setting.max_steps:
            longest[key] = c
    if not longest:
        return f"Only {baseline} runs were found: nothing to compare."
    sentences = [
        _sentence(c, baseline, analysis.unit, own.get((m, c.result.setting.max_steps)), unit)
        for (m, _), c in sorted(longest.items())
    ]
    if any("unreliable" in caveat for caveat in wall_clock_caveats(analysis)):
        sentences.append(
            f"The wall-clock numbers are unreliable in this study: {baseline}'s own runs "
            "trained at visibly different speeds (see the wall-clock caveats)."
        )
    sentences.append(
        "Speedups are horizon-sweep speedups (each run a fully decayed schedule, the baseline's "
        "final loss fitted over its horizons); steps-to-target numbers, read off the middle of "
        "a schedule, are shown only for comparison with the paper's plots."
    )
    return " ".join(sentences)


def wall_clock_caveats(analysis: StudyAnalysis) -> list[str]:
    """Why the seconds columns may not be trusted: the baseline's own runs trained at different
    speeds (machine load), or compile time inside the seconds."""
    caveats = []
    baseline = display_name(analysis.baseline_name)
    for model in sorted(analysis.baselines):
        own = [
            c
            for c in analysis.comparisons
            if c.result.setting.model == model
            and c.result.setting.optimizer == analysis.baseline_name
        ]
        ratios = [
            c.speedups["seconds"].value / c.speedups["steps"].value
            for c in own
            if c.speedups["steps"].value > 0 and math.isfinite(c.speedups["seconds"].value)
        ]
        spread = max((abs(r - 1) for r in ratios), default=0.0)
        if spread > THROUGHPUT_TOLERANCE:
            seconds = [c.speedups["seconds"].value for c in own]
            steps = [c.speedups["steps"].value for c in own]
            caveats.append(
                f"{model}: {baseline} against its own fit is {min(seconds):.2f}x-"
                f"{max(seconds):.2f}x in seconds but {min(steps):.2f}x-{max(steps):.2f}x in "
                f"steps, so its runs trained at speeds up to {100 * spread:.0f}% "
                "apart (machine load, or one-time compile inside the seconds): the seconds "
                "columns are unreliable here; read steps and FLOPs"
            )
    runs = [run for result in analysis.settings for run in result.runs]
    compiled = [run.compile_seconds for run in runs if run.compile_seconds is not None]
    if compiled:
        caveats.append(
            f"torch.compile took {np.mean(compiled):.0f} s per run on average "
            f"({min(compiled):.0f}-{max(compiled):.0f} s): reported apart in the second table, "
            "not in the seconds"
        )
    elif any(run.compiled for run in runs):
        caveats.append(
            "the runs were compiled but log no compile_s: their seconds include each process's "
            "one-time torch.compile"
        )
    return caveats


def _baseline_lines(analysis: StudyAnalysis, unit: LossUnit) -> list[str]:
    lines = []
    baseline = display_name(analysis.baseline_name)
    for model, fit in sorted(analysis.baselines.items()):
        pairs = zip(fit.horizons, fit.losses, strict=True)
        points = ", ".join(f"{h:g} → {unit.scale * loss:.3f}" for h, loss in pairs)
        if isinstance(fit.curve, PowerLaw):
            law = fit.curve
            lines.append(
                f"- {model}: {baseline} fit L(D) = {unit.scale * law.alpha:.4g}·D^-{law.beta:.4g}"
                f" + {unit.scale * law.gamma:.4g} ({unit.name}), D in {fit.unit}, over "
                f"{len(fit.horizons)} horizons ({points})."
            )
            lines += [f"- {model}: {warning}" for warning in fit_warnings(fit)]
        else:
            lines.append(f"- {model}: {fit.note} ({points}).")
    return lines


def fit_warnings(fit) -> list[str]:
    """What makes a power-law fit weak: no spare points, or the asymptote at its bound 0."""
    warnings = []
    if len(set(fit.horizons)) <= POWER_LAW_PARAMETERS:
        warnings.append(
            f"the fit has {POWER_LAW_PARAMETERS} parameters and {len(set(fit.horizons))} "
            "horizons: it passes through the points, so nothing checks the law itself; every "
            "speedup read off it is only as good as that assumption (add horizons)"
        )
    if isinstance(fit.curve, PowerLaw) and fit.curve.gamma < 1e-3 * min(fit.losses):
        warnings.append(
            "the asymptote sits at its bound (a loss of 0 after infinite training): the points "
            "do not pin it down, and extrapolated speedups depend on that bound"
        )
    return warnings


def _notes(analysis: StudyAnalysis) -> list[str]:
    notes = list(analysis.notes)
    for c in analysis.comparisons:
        if c.undefined_resamples:
            s = c.result.setting
            notes.append(
                f"{s.model} {display_name(s.optimizer)} {s.max_steps} steps: "
                f"{c.undefined_resamples} bootstrap resamples fell outside the baseline's "
                "measured range and were left out of the interval"
            )
    return notes


def render_report(analysis: StudyAnalysis, warnings: Sequence[str] = ()) -> str:
    """The whole report.md."""
    unit = _unit(analysis)
    baseline = display_name(analysis.baseline_name)
    parts = ["# Optimizer comparison", unit.note, "## Verdict", verdict(analysis)]
    caveats = wall_clock_caveats(analysis)
    if caveats:
        parts += ["## Wall-clock caveats", "\n".join(f"- {c}" for c in caveats)]
    parts += [
        "## Speedup over " + baseline,
        speedup_table(analysis),
        "Speedup = the baseline's training length to reach the optimizer's mean final loss "
        "(from its curve over horizons) / the optimizer's length, with 95% bootstrap intervals "
        "over seeds in brackets (none with one seed). FLOPs and seconds count the optimizer's "
        "Hessian estimation; the baseline's curve is converted from "
        f"{analysis.unit} with its own mean rate. Setting: the peak lr and the optimizer's "
        "knobs (rho: Sophia's clipping scale; k: Hessian refresh interval). ± is the standard "
        "deviation of the final loss over the n seeds. Δ: mean final loss minus the "
        "baseline's at the same horizon, against the baseline's seed std σ. † the baseline's "
        "answer lies outside its measured horizons (extrapolated). ∞: the baseline never "
        "reaches the loss per the fit. ‡ the speedup and Δ disagree (above 1x with a higher "
        "loss, or below with a lower one): the baseline's own point lies off its fitted curve "
        "at that horizon; read the row by its Δ.",
        "## Other measures",
        side_table(analysis),
        "\\* Steps to target: share of the schedule at which the seeds first reach the "
        "baseline's final loss at the same horizon; read off the middle of a schedule, it "
        "flatters fast starters; prefer the speedup columns. Hessian shares: of the run's "
        "FLOPs and training seconds. Compile time: torch.compile's one-time cost per run, "
        "kept out of the seconds (– when the runs did not log it).",
    ]
    diagnostics = diagnostics_table(analysis)
    if diagnostics:
        low, high = WIN_RATE_BAND
        parts += [
            "## Sophia's diagnostics",
            diagnostics,
            "Win rate: share of coordinates Sophia's clipping leaves alone (|m| < rho·bs·h), "
            "mean over the second half of training and over seeds, overall and per parameter "
            f"group; the authors tune rho to keep it in {low}-{high} ({WIN_RATE_SOURCE}). "
            "h warmed: share of the Hessian EMA built up at the end, 1 - beta2^refreshes.",
        ]
    parts += [
        "## Baseline curve",
        "\n".join(_baseline_lines(analysis, unit) + [f"- {note}" for note in _notes(analysis)]),
        "## Learning-rate sweep",
        lr_sweep_table(analysis),
    ]
    if warnings:
        parts += ["## Runs left out", "\n".join(f"- {w}" for w in warnings)]
    return "\n\n".join(parts) + "\n"
