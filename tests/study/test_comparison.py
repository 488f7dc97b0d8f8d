import math

import numpy as np
import pytest

from study.bootstrap import percentile_interval
from study.comparison import analyze
from study.fits import FitError, LogInterpolation, PowerLaw, fit_power_law
from study.runs import Run, run_from_records
from study.settings import best_settings, group_settings

# AdamW's synthetic law in steps; an optimizer "twice as fast" ends at ADAMW(2 * D) after D steps.
ADAMW = PowerLaw(alpha=40.0, beta=0.5, gamma=3.0)
HORIZONS = (500, 1000, 2000, 4000)
SEED_OFFSETS = (-0.01, 0.0, 0.01)  # mean zero, so each setting's mean is exactly the law's


def make_run(
    optimizer: str,
    lr: float,
    max_steps: int,
    seed: int,
    final_loss: float,
    *,
    flops_per_step: float = 1e9,
    seconds_per_step: float = 0.1,
    hess_flops_per_step: float = 0.0,
) -> Run:
    """A finished run whose val loss falls linearly to `final_loss` over 10 evals."""
    records = []
    for i in range(1, 11):
        step = max_steps * i // 10
        cost = {
            "step": step,
            "tokens": step * 1024,
            "flops": step * flops_per_step,
            "time_s": step * seconds_per_step,
        }
        records.append(
            {"event": "train", **cost, "train/loss": 9.0, "hess/flops": step * hess_flops_per_step}
        )
        records.append(
            {"event": "eval", **cost, "val/loss": final_loss + 0.5 * (1 - step / max_steps)}
        )
    config = {
        "optim": {"name": optimizer, "lr": lr, "warmup_steps": 10},
        "max_steps": max_steps,
        "seed": seed,
        "model": {"name": "tiny"},
    }
    return run_from_records(f"{optimizer}_lr{lr}_steps{max_steps}_seed{seed}", config, {}, records)


def sweep(optimizer: str, law, horizons=HORIZONS, offsets=SEED_OFFSETS, **kwargs) -> list[Run]:
    """Seeds of one setting per horizon, ending at law(horizon) + offset."""
    return [
        make_run(optimizer, 1e-3, horizon, seed, float(law(horizon)) + offset, **kwargs)
        for horizon in horizons
        for seed, offset in enumerate(offsets)
    ]


def twice_as_fast(horizon):
    return ADAMW.loss(2 * horizon)


def row(analysis, optimizer: str, horizon: int):
    (match,) = [
        c
        for c in analysis.comparisons
        if c.result.setting.optimizer == optimizer and c.result.setting.max_steps == horizon
    ]
    return match


def test_fit_power_law_recovers_known_parameters():
    horizons = [250, 500, 1000, 2000, 4000]
    fit = fit_power_law(horizons, [ADAMW.loss(h) for h in horizons])
    assert fit.alpha == pytest.approx(ADAMW.alpha, rel=1e-4)
    assert fit.beta == pytest.approx(ADAMW.beta, rel=1e-4)
    assert fit.gamma == pytest.approx(ADAMW.gamma, abs=1e-5)


def test_fit_power_law_works_at_flops_scale():
    law = PowerLaw(alpha=900.0, beta=0.3, gamma=2.1)
    horizons = [1e12, 3e12, 1e13, 3e13]
    fit = fit_power_law(horizons, [law.loss(h) for h in horizons])
    assert fit.beta == pytest.approx(0.3, rel=1e-4)
    assert fit.gamma == pytest.approx(2.1, abs=1e-5)


def test_fit_needs_three_horizons():
    with pytest.raises(FitError, match=">= 3 distinct horizons"):
        fit_power_law([100, 200, 200], [4.0, 3.5, 3.5])


def test_fit_rejects_loss_that_rises_with_length():
    with pytest.raises(FitError, match="does not fall"):
        fit_power_law([100, 200, 400], [3.0, 3.2, 3.5])


def test_inversion_round_trips():
    for horizon in (10.0, 777.0, 1e6):
        assert ADAMW.horizon_for_loss(ADAMW.loss(horizon)) == pytest.approx(horizon, rel=1e-9)


def test_loss_at_or_below_gamma_is_never_reached():
    assert ADAMW.horizon_for_loss(3.0) == math.inf
    assert ADAMW.horizon_for_loss(2.5) == math.inf


def test_interpolation_stays_within_measured_horizons():
    curve = LogInterpolation(horizons=(100.0, 400.0), losses=(4.0, 3.0))
    assert curve.horizon_for_loss(3.5) == pytest.approx(200.0)  # the middle in log D
    assert math.isnan(curve.horizon_for_loss(2.9))
    assert math.isnan(curve.horizon_for_loss(4.1))


def test_best_setting_is_lowest_mean_loss_over_seeds():
    runs = [
        make_run("lion", lr, 1000, seed, loss + offset)
        for lr, loss in [(1e-4, 3.6), (3e-4, 3.4), (1e-3, 3.5)]
        for seed, offset in enumerate(SEED_OFFSETS)
    ]
    runs.append(make_run("lion", 3e-3, 1000, 0, 3.0))  # better once, but diverged on seed 1
    runs.append(make_run("lion", 3e-3, 1000, 1, float("nan")))
    best = best_settings(group_settings(runs))
    assert best[("tiny", "lion", 1000)].setting.lr == 3e-4
    assert best[("tiny", "lion", 1000)].n == 3


def test_a_lucky_single_tuning_seed_does_not_outrank_the_tuned_setting():
    # tune on seed 0 over three lrs, then run the chosen lr on three seeds (scripts/run_study.py)
    runs = [make_run("adamw", 1e-3, 1000, 0, 3.30), make_run("adamw", 1e-2, 1000, 0, 3.60)]
    runs += [
        make_run("adamw", 3e-3, 1000, seed, 3.35 + off)
        for seed, off in enumerate((-0.1, 0.05, 0.05))
    ]
    best = best_settings(group_settings(runs))
    assert best[("tiny", "adamw", 1000)].setting.lr == 3e-3
    assert best[("tiny", "adamw", 1000)].n == 3


def test_speedup_is_two_when_reaching_at_d_what_adamw_reaches_at_2d():
    runs = sweep("adamw", ADAMW.loss) + sweep("sophia", twice_as_fast)
    analysis = analyze(runs, n_resamples=0)
    comparison = row(analysis, "sophia", 1000)
    for unit in ("steps", "tokens", "flops", "seconds"):
        assert comparison.speedups[unit].value == pytest.approx(2.0, rel=1e-6), unit
    assert row(analysis, "adamw", 1000).speedups["steps"].value == pytest.approx(1.0, rel=1e-6)


def test_speedup_is_the_same_when_fitted_in_tokens():
    runs = sweep("adamw", ADAMW.loss) + sweep("sophia", twice_as_fast)
    analysis = analyze(runs, unit="tokens", n_resamples=0)
    assert row(analysis, "sophia", 2000).speedups["steps"].value == pytest.approx(2.0, rel=1e-6)


def test_flops_and_seconds_speedups_charge_the_hessian_cost():
    # Sophia spends 25% more FLOPs and wall-clock per step (its Hessian estimates)
    sophia = sweep(
        "sophia",
        twice_as_fast,
        flops_per_step=1.25e9,
        seconds_per_step=0.125,
        hess_flops_per_step=0.25e9,
    )
    analysis = analyze(sweep("adamw", ADAMW.loss) + sophia, n_resamples=0)
    comparison = row(analysis, "sophia", 1000)
    assert comparison.speedups["steps"].value == pytest.approx(2.0, rel=1e-6)
    assert comparison.speedups["flops"].value == pytest.approx(1.6, rel=1e-6)
    assert comparison.speedups["seconds"].value == pytest.approx(1.6, rel=1e-6)
    assert comparison.hess_flops_share == pytest.approx(0.2)


def test_bootstrap_interval_contains_true_speedup():
    runs = sweep("adamw", ADAMW.loss) + sweep("sophia", twice_as_fast)
    speedup = row(analyze(runs, n_resamples=300), "sophia", 1000).speedups["steps"]
    assert speedup.low < 2.0 < speedup.high
    assert speedup.verdict_vs_one() == "faster"


def test_bootstrap_is_deterministic():
    runs = sweep("adamw", ADAMW.loss) + sweep("sophia", twice_as_fast)
    first = row(analyze(runs, n_resamples=200), "sophia", 2000).speedups["flops"]
    second = row(analyze(runs, n_resamples=200), "sophia", 2000).speedups["flops"]
    assert (first.low, first.high) == (second.low, second.high)


def test_single_seed_gives_no_interval():
    runs = sweep("adamw", ADAMW.loss) + sweep("sophia", twice_as_fast, offsets=(0.0,))
    speedup = row(analyze(runs, n_resamples=100), "sophia", 1000).speedups["steps"]
    assert speedup.value == pytest.approx(2.0, rel=1e-6)
    assert not speedup.has_interval
    assert speedup.verdict_vs_one() == "no CI"


def test_a_single_seed_baseline_horizon_waits_for_its_seeds_instead_of_stripping_intervals():
    seeded = sweep("adamw", ADAMW.loss)
    anchor = sweep("adamw", ADAMW.loss, horizons=(8000,), offsets=(0.02,))  # one seed, off-law
    analysis = analyze(seeded + anchor + sweep("sophia", twice_as_fast), n_resamples=200)
    speedup = row(analysis, "sophia", 1000).speedups["steps"]
    assert speedup.has_interval and speedup.low < 2.0 < speedup.high
    assert any("adamw at 8,000 steps has a single seed" in note for note in analysis.notes)
    assert max(analysis.baselines["tiny"].horizons) == 4000  # fitted without the anchor


def test_two_horizons_fall_back_to_interpolation_and_say_so():
    runs = sweep("adamw", ADAMW.loss, horizons=(1000, 4000)) + sweep(
        "sophia", twice_as_fast, horizons=(1000, 2000)
    )
    analysis = analyze(runs, n_resamples=0)
    assert analysis.baselines["tiny"].method == "interpolation"
    assert any("interpolating within the measured horizons" in note for note in analysis.notes)
    # inside AdamW's measured range: interpolation in log D gives a finite answer
    assert 1.0 < row(analysis, "sophia", 1000).speedups["steps"].value < 4.0


def test_interpolation_gives_no_speedup_beyond_measured_horizons():
    runs = sweep("adamw", ADAMW.loss, horizons=(1000, 4000))
    runs += sweep("lion", lambda h: ADAMW.loss(8 * h), horizons=(1000,))  # AdamW would need 8000
    speedup = row(analyze(runs, n_resamples=0), "lion", 1000).speedups["steps"]
    assert math.isnan(speedup.value)


def test_loss_below_adamw_asymptote_means_adamw_never_reaches_it():
    runs = sweep("adamw", ADAMW.loss) + sweep("lion", lambda h: 2.9, horizons=(1000,))
    comparison = row(analyze(runs, n_resamples=0), "lion", 1000)
    assert comparison.speedups["steps"].value == math.inf
    assert comparison.extrapolated


def test_steps_to_target_finds_first_eval_at_or_below():
    runs = sweep("adamw", ADAMW.loss) + sweep("sophia", twice_as_fast, offsets=(0.0,))
    comparison = row(analyze(runs, n_resamples=0), "sophia", 1000)
    # Sophia's curve: final + 0.5 * (1 - t/T); AdamW's final at 1000 is 0.36 above Sophia's
    target = comparison.steps_to_target
    assert target.target == pytest.approx(ADAMW.loss(1000))
    gap = ADAMW.loss(1000) - twice_as_fast(1000)
    expected = min(s for s in range(100, 1001, 100) if 0.5 * (1 - s / 1000) <= gap)
    assert target.steps == (expected,)


def test_noise_threshold_is_adamw_seed_std_at_same_horizon():
    runs = sweep("adamw", ADAMW.loss) + sweep("lion", lambda h: ADAMW.loss(h) - 0.005)
    comparison = row(analyze(runs, n_resamples=0), "lion", 1000)
    assert comparison.noise_std == pytest.approx(0.01)
    assert comparison.loss_gap == pytest.approx(-0.005)
    assert comparison.exceeds_noise is False


def test_no_baseline_runs_is_an_error():
    with pytest.raises(ValueError, match="no baseline runs"):
        analyze(sweep("sophia", twice_as_fast), n_resamples=0)


def test_percentile_interval_keeps_infinite_samples():
    low, high = percentile_interval([1.0] * 90 + [math.inf] * 10 + [math.nan] * 5)
    assert low == 1.0
    assert high == math.inf
    assert np.isfinite(percentile_interval([1.0, 2.0, 3.0])[1])


def test_resamples_outside_an_interpolated_range_are_counted():
    runs = sweep("adamw", ADAMW.loss, horizons=(1000, 4000))
    runs += sweep("lion", lambda h: ADAMW.loss(4 * h), horizons=(1000,))  # at AdamW's edge
    comparison = row(analyze(runs, n_resamples=100), "lion", 1000)
    assert 0 < comparison.undefined_resamples < 100
