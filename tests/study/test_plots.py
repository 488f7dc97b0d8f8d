"""The figures' choices: what is drawn, what is left out, and how the axes are set."""

import numpy as np

from optim.registry import OPTIMIZERS, color, display_name
from study.comparison import analyze
from study.fits import Baseline, PowerLaw
from study.plots import (
    _fit_warning_titles,
    plot_lr_sweep,
    repeats_steps,
    zoomed_limits,
)
from study.runs import load_study
from study.settings import group_settings
from tests.study.test_report import write_run


def test_tokens_repeat_steps_at_equal_tokens_per_step_and_seconds_do_not(tmp_path):
    write_run(tmp_path, "adamw", 6e-4, 200, 0, 4.0)
    write_run(tmp_path, "sophia", 3e-4, 200, 0, 4.1, rho=0.04, seconds_per_step=0.02)
    runs, _ = load_study(tmp_path)
    results = group_settings(runs)
    assert repeats_steps(results, "tokens")
    assert not repeats_steps(results, "seconds")  # Sophia's steps take twice as long


def test_zoom_keeps_every_late_point_and_cuts_the_early_drop():
    steps = np.array([0, 20, 100, 150, 200])
    mean = np.array([10.8, 7.0, 5.5, 5.2, 5.0])
    band = (steps, steps, mean, mean - 0.05, mean + 0.05)
    bottom, top = zoomed_limits([band], horizon=200)
    assert bottom < 4.95 and 5.5 <= top < 7.0  # the step-20 point (7.0) and step 0 are cut


def test_lr_sweep_with_one_lr_per_optimizer_is_not_drawn(tmp_path):
    study = tmp_path / "study"
    write_run(study, "adamw", 6e-4, 200, 0, 4.0)
    write_run(study, "sophia", 3e-4, 200, 0, 4.1, rho=0.04)
    runs, _ = load_study(study)
    assert plot_lr_sweep(analyze(runs, n_resamples=0), tmp_path / "out") == []


def test_a_fit_through_as_many_points_as_parameters_is_flagged():
    law = PowerLaw(alpha=40.0, beta=0.5, gamma=3.0)
    horizons = (200.0, 400.0, 800.0)
    losses = tuple(float(law.loss(h)) for h in horizons)
    fit = Baseline("steps", law, horizons, losses, {"steps": 1.0})
    assert _fit_warning_titles(fit) == ["3 points for a 3-parameter fit"]
    four = Baseline("steps", law, (*horizons, 1600.0), (*losses, law.loss(1600.0)), {})
    assert _fit_warning_titles(four) == []
    at_bound = Baseline("steps", PowerLaw(9.0, 0.08, 0.0), four.horizons, four.losses, {})
    assert _fit_warning_titles(at_bound) == ["asymptote at its bound 0"]


def test_every_optimizer_has_a_name_and_a_colour_of_its_own():
    assert display_name("muon") == "Muon" and display_name("unknown") == "unknown"
    colours = [color(name) for name in OPTIMIZERS]
    assert len(set(colours)) == len(colours) and "tab:gray" not in colours
