"""The study's report: a plain verdict, the speedup table and the LR-sweep table, in markdown."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from study.speedup import Comparison, Interval, PowerLaw, SettingResult, StudyAnalysis

DISPLAY_NAMES = {
    "adamw": "AdamW",
    "lion": "Lion",
    "sophia": "Sophia-G",
    "sophiah": "Sophia-H",
    "adahessian": "AdaHessian",
}
UNIT_WORDS = {"steps": "steps", "tokens": "tokens", "flops": "FLOPs", "seconds": "wall-clock"}


def display_name(optimizer: str) -> str:
    return DISPLAY_NAMES.get(optimizer, optimizer)


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


def format_loss(result: SettingResult) -> str:
    """'3.412 ± 0.006 (n=3)'; diverged seeds are named instead of averaged."""
    diverged = sum(not math.isfinite(loss) for loss in result.losses)
    if diverged:
        return f"diverged ({diverged}/{result.n} seeds)"
    std = result.std_loss
    spread = f" ± {std:.3f}" if std is not None else ""
    return f"{result.mean_loss:.3f}{spread} (n={result.n})"


def _gap(comparison: Comparison, baseline_name: str) -> str:
    gap = comparison.loss_gap
    is_baseline = comparison.result.setting.optimizer == baseline_name
    if is_baseline or gap is None or not math.isfinite(gap):
        return "–"
    if comparison.noise_std is None:
        return f"{gap:+.3f} (σ n/a)"
    sign = ">" if comparison.exceeds_noise else "≤"
    return f"{gap:+.3f} ({sign} σ {comparison.noise_std:.3f})"


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


def speedup_table(analysis: StudyAnalysis) -> str:
    """One row per (model, optimizer, horizon): the optimizer's best setting against AdamW."""
    header = [
        "model",
        "optimizer",
        "horizon (steps)",
        "best lr",
        "rho",
        "final val loss",
        f"Δ vs {display_name(analysis.baseline_name)}",
        "speedup steps",
        "speedup tokens",
        "speedup FLOPs",
        "speedup seconds",
        "steps to target*",
        "Hessian FLOPs",
        "Hessian time",
    ]
    rows = []
    for c in analysis.comparisons:
        s = c.result.setting
        rows.append(
            [
                s.model,
                display_name(s.optimizer),
                str(s.max_steps),
                f"{s.lr:g}",
                _value(s.rho),
                format_loss(c.result),
                _gap(c, analysis.baseline_name),
                *(format_speedup(c.speedups[u], c.extrapolated) for u in UNIT_WORDS),
                _steps_to_target(c, analysis.baseline_name),
                f"{100 * c.hess_flops_share:.1f}%",
                f"{100 * c.hess_seconds_share:.1f}%",
            ]
        )
    return _table(header, rows)


def lr_sweep_table(analysis: StudyAnalysis) -> str:
    """Every setting's final loss, the chosen one marked, so the tuning can be checked."""
    varying: dict[tuple[str, str], set[str]] = defaultdict(set)
    values: dict[tuple[str, str, str], set] = defaultdict(set)
    for result in analysis.settings:
        s = result.setting
        for key, value in s.knobs:
            values[(s.model, s.optimizer, key)].add(repr(value))
    for (model, optimizer, key), seen in values.items():
        if len(seen) > 1:
            varying[(model, optimizer)].add(key)
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
                format_loss(result),
                "best" if id(result) in best_ids else "",
            ]
        )
    header = ["model", "horizon (steps)", "optimizer", "lr", "other knobs", "final val loss", ""]
    return _table(header, rows)


def _sentence(comparison: Comparison, baseline: str, unit_word: str) -> str:
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
    verdict = {
        "faster": f"faster than {baseline} (the interval excludes 1x)",
        "slower": f"slower than {baseline} (the interval excludes 1x)",
        "indistinguishable": "not distinguishable from 1x",
        "no CI": "a single seed, so no confidence interval: indicative, not a finding",
    }[steps.verdict_vs_one()]
    text = (
        f"{where}, {name}'s speedup over {baseline} is {format_speedup(steps)} in steps: {verdict}"
    )
    if comparison.hess_flops_share > 0:
        text += "; counting its Hessian estimates it is "
    else:
        text += "; it is "
    text += (
        f"{format_speedup(comparison.speedups['flops'])} in FLOPs and "
        f"{format_speedup(comparison.speedups['seconds'])} in wall-clock."
    )
    if comparison.extrapolated:
        text += f" ({baseline}'s curve is extrapolated beyond its measured {unit_word} here.)"
    gap = comparison.loss_gap
    if gap is not None and math.isfinite(gap) and comparison.noise_std is not None:
        relation = "beyond" if comparison.exceeds_noise else "within"
        text += (
            f" Its final loss differs from {baseline}'s at the same horizon by {gap:+.3f}, "
            f"{relation} {baseline}'s seed noise (std {comparison.noise_std:.3f})."
        )
    return text


def verdict(analysis: StudyAnalysis) -> str:
    """One plain paragraph: each optimizer at its longest horizon, per model."""
    baseline = display_name(analysis.baseline_name)
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
    sentences = [_sentence(c, baseline, analysis.unit) for _, c in sorted(longest.items())]
    sentences.append(
        "Speedups are horizon-sweep speedups (each run a fully decayed schedule, the baseline's "
        "final loss fitted over its horizons); steps-to-target numbers, read off the middle of "
        "a schedule, are shown only for comparison with the paper's plots."
    )
    return " ".join(sentences)


def _baseline_lines(analysis: StudyAnalysis) -> list[str]:
    lines = []
    baseline = display_name(analysis.baseline_name)
    for model, fit in sorted(analysis.baselines.items()):
        pairs = zip(fit.horizons, fit.losses, strict=True)
        points = ", ".join(f"{h:g} → {loss:.3f}" for h, loss in pairs)
        if isinstance(fit.curve, PowerLaw):
            law = fit.curve
            lines.append(
                f"- {model}: {baseline} fit L(D) = {law.alpha:.4g}·D^-{law.beta:.4g} + "
                f"{law.gamma:.4g}, D in {fit.unit}, over {len(fit.horizons)} horizons ({points})."
            )
        else:
            lines.append(f"- {model}: {fit.note} ({points}).")
    return lines


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
    parts = [
        "# Optimizer comparison",
        "## Verdict",
        verdict(analysis),
        "## Speedup over " + display_name(analysis.baseline_name),
        speedup_table(analysis),
        "Speedup = the baseline's training length to reach the optimizer's mean final loss "
        "(from its curve over horizons) / the optimizer's length, with 95% bootstrap intervals "
        "over seeds in brackets (none with one seed). FLOPs and seconds count the optimizer's "
        "Hessian estimation; the baseline's curve is converted from "
        f"{analysis.unit} with its own mean rate. † the baseline's answer lies outside its "
        "measured horizons (extrapolated). ∞: the baseline never reaches the loss per the fit. "
        "Δ: difference to the baseline's final loss at the same horizon against its seed std σ. "
        "\\* Steps to target: share of the schedule at which the seeds first reach the "
        "baseline's final loss at the same horizon; read off the middle of a schedule, it "
        "flatters fast starters; prefer the speedup columns.",
        "## Baseline curve",
        "\n".join(_baseline_lines(analysis) + [f"- {note}" for note in _notes(analysis)]),
        "## Learning-rate sweep",
        lr_sweep_table(analysis),
    ]
    if warnings:
        parts += ["## Runs left out", "\n".join(f"- {w}" for w in warnings)]
    return "\n\n".join(parts) + "\n"
